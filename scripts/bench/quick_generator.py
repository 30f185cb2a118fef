"""The cheapest generator that is not noise: train the synth stage's DDPM under several budgets, in one run.

    python scripts/bench/quick_generator.py --augmented runs/demo/augmented_160_labels0_seed1234 \\
        --data_dir runs/demo/data --configs "size=64,width=16,iters=300,lr=2e-4,ema=0.99,steps=20;size=32,iters=3000"

Each configuration trains the same denoiser, trainer, EMA and learning-rate schedule as the synth bundle
(``common.synth``; diffusers' UNet, DDPM noise-prediction loss, AdamW with warm-up and cosine decay, EMA with
warm-up) on the augmented views, samples ``--n`` images with DDIM, and measures the mean PSNR of each against
its nearest real training image (at the generator's size, 0-255 scale, as the synth bundle's
``quality.json``). It prints one line per configuration (training and sampling seconds, PSNR, MSE) and writes
``OUT/results_<augmented folder>.json`` and ``OUT/<config>/samples.png``. For reference it also prints how far
the training set's own affine views are from the nearest real image (a generator that learnt them exactly
would score about that). Target for the quick profile: >= 20 dB on the demo.

Configuration keys (defaults in brackets): size [64], width [16], iters [300], lr [2e-4], ema [0.99] (EMA
decay, with a linear warm-up from 0.9 over ``ema_warmup`` [100] iterations), steps [20] (DDIM), batch [16],
prediction [epsilon] (or v_prediction, sample).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

DEFAULTS = {"size": 64, "width": 16, "iters": 300, "lr": 2e-4, "ema": 0.99, "ema_warmup": 100, "steps": 20, "batch": 16,
            "prediction": "epsilon"}


def parse_config(text: str) -> dict:
    config = dict(DEFAULTS)
    for part in text.split(","):
        if not part.strip():
            continue
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in DEFAULTS:
            raise SystemExit(f"unknown configuration key '{key}' (use {', '.join(DEFAULTS)})")
        kind = type(DEFAULTS[key])
        config[key] = value.strip() if kind is str else kind(float(value))
    return config


def label(config: dict) -> str:
    return "_".join(f"{k}{config[k]}" if isinstance(config[k], str) else f"{k}{config[k]:g}" for k in DEFAULTS)


def train(config: dict, images: torch.Tensor, seed: int) -> tuple[torch.nn.Module, float]:
    """The synth bundle's training, in process: returns the EMA denoiser and the training seconds."""
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.optimizers import WarmupCosineSchedule
    from monai.utils import set_determinism

    from common.synth import DiffusionTrainer, build_denoiser, ema_handler

    set_determinism(seed)
    net = build_denoiser("unet", config["size"], images.shape[1], config["width"])
    loader = DataLoader([{"image": im} for im in images], batch_size=config["batch"], shuffle=True, drop_last=True)
    epochs = math.ceil(config["iters"] / len(loader))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=0.0)
    total = epochs * len(loader)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=min(250, total // 10), t_total=total)
    trainer = DiffusionTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                               optimizer=optimizer, loss_function=None, prediction_type=config["prediction"])
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: schedule.step())
    ema = ema_handler(net, config["ema"], int(config["ema_warmup"]))
    ema.attach(trainer)
    start = time.perf_counter()
    trainer.run()
    return ema.ema_model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--augmented", required=True, help="an augmented-views folder (datalist.json): the training set")
    parser.add_argument("--data_dir", required=True, help="the dataset folder (datalist.json): the real reference")
    parser.add_argument("--configs", required=True, help="';'-separated configurations of key=value pairs")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--n", type=int, default=64, help="images sampled per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_generator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from common.synth import image_transform, load_images, quality_report, sample

    results_file = os.path.join(args.out, f"results_{os.path.basename(os.path.normpath(args.augmented))}.json")
    results = json.load(open(results_file)) if os.path.isfile(results_file) else {}
    os.makedirs(args.out, exist_ok=True)
    loaded: dict[int, tuple] = {}
    for text in args.configs.split(";"):
        config = parse_config(text)
        name = label(config)
        if config["size"] not in loaded:  # the images and their own PSNR, once per size
            transform = image_transform(config["size"], args.channels)
            views = load_images(os.path.join(args.augmented, "datalist.json"), "training", transform)
            real = load_images(os.path.join(args.data_dir, "datalist.json"), "training", transform)
            ceiling = quality_report(views, real, os.path.join(args.out, f"views_{config['size']}"))
            affine = [p["psnr"] for p in ceiling["per_image"] if p["psnr"] <= ceiling["memorization_psnr"]]
            print(f"the training set's own affine views (originals left out) against the nearest real image: mean "
                  f"PSNR {sum(affine) / max(1, len(affine)):.2f} dB over {len(affine)} views", flush=True)
            loaded[config["size"]] = views, real, affine
        views, real, affine = loaded[config["size"]]
        if name in results:
            print(f"{name}: measured before, {results[name]['mean_psnr']:.2f} dB", flush=True)
            results[name]["views_mean_psnr"] = sum(affine) / max(1, len(affine))
            continue
        model, seconds = train(config, views, args.seed)
        start = time.perf_counter()
        synthetic = sample(model, args.n, config["size"], args.channels, "ddim", config["steps"], batch_size=32,
                           seed=args.seed, progress=False, prediction_type=config["prediction"])
        sampling = (time.perf_counter() - start) / args.n
        report = quality_report(synthetic, real, os.path.join(args.out, os.path.basename(os.path.normpath(args.augmented)),
                                                              name))
        results[name] = {**config, "train_seconds": round(seconds, 1), "sample_seconds_per_image": round(sampling, 4),
                         "mean_psnr": report["mean_psnr"], "mean_mse": report["mean_mse"],
                         "near_copies": len(report["near_copies"]), "threads": args.threads,
                         "augmented": os.path.abspath(args.augmented),
                         "views_mean_psnr": sum(affine) / max(1, len(affine))}
        print(f"{name}: train {seconds:.0f} s, sampling {sampling:.3f} s/image, mean PSNR {report['mean_psnr']:.2f} dB, "
              f"MSE {report['mean_mse']:.1f}, near-copies {len(report['near_copies'])}/{args.n}", flush=True)
        with open(results_file, "w") as f:
            json.dump(results, f, indent=1)
    with open(results_file, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{'configuration':<70}{'train s':>9}{'PSNR dB':>9}")
    for name, r in results.items():
        print(f"{name:<70}{r['train_seconds']:>9.0f}{r['mean_psnr']:>9.2f}")


if __name__ == "__main__":
    main()
