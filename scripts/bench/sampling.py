"""DDIM against DDPM on one trained generator: time per image and PSNR, measured in one run.

    python scripts/bench/sampling.py --checkpoint runs/demo/synth/models/model.pt --image_size 64 --width 16

Samples the same number of images with DDIM (``--ddim_steps``, 50) and DDPM (1,000 steps) from the same
weights, and prints the time-per-image ratio and the difference of their mean PSNR against the nearest
real training image. Target: DDIM >= 20x faster, within 1 dB.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a synth bundle's models/model.pt")
    parser.add_argument("--data_dir", default="data/demo", help="folder with datalist.json (the real images)")
    parser.add_argument("--denoiser", default="unet")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="images per sampler")
    parser.add_argument("--ddim_steps", type=int, default=50)
    parser.add_argument("--ddpm_steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from common.models import load_state_file
    from common.synth import build_denoiser, image_transform, load_images, quality_report, sample

    net = build_denoiser(args.denoiser, args.image_size, args.channels, args.width)
    net.load_state_dict(load_state_file(args.checkpoint, "generator checkpoint"))
    transform = image_transform(args.image_size, args.channels)
    real = load_images(os.path.join(args.data_dir, "datalist.json"), "training", transform)
    results = {}
    for sampler, steps in (("ddim", args.ddim_steps), ("ddpm", args.ddpm_steps)):
        start = time.perf_counter()
        images = sample(net, args.n, args.image_size, args.channels, sampler, steps, batch_size=args.n, seed=0,
                        device=args.device)
        seconds = (time.perf_counter() - start) / args.n
        report = quality_report(images, real, os.path.join("/tmp", f"bench_sampling_{sampler}"))
        results[sampler] = (seconds, report["mean_psnr"], report["mean_mse"])
    (ti, pi, mi), (tp, pp, mp) = results["ddim"], results["ddpm"]
    print(f"\nsampling {args.n} images of {args.image_size}², {args.device}, {args.threads} threads")
    print(f"{'sampler':<16}{'s/image':>10}{'PSNR dB':>10}{'MSE':>10}")
    print(f"{f'DDIM-{args.ddim_steps}':<16}{ti:>10.3f}{pi:>10.2f}{mi:>10.1f}")
    print(f"{f'DDPM-{args.ddpm_steps}':<16}{tp:>10.3f}{pp:>10.2f}{mp:>10.1f}")
    print(f"\nDDIM speed-up: {tp / ti:.1f}x (target >= 20x); PSNR difference (DDIM - DDPM): {pi - pp:+.2f} dB "
          "(target within 1 dB)")


if __name__ == "__main__":
    main()
