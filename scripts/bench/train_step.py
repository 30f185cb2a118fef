"""What makes a training step of the student cheaper on this machine, measured in one run.

    python scripts/bench/train_step.py --image_size 128 --batch_size 6 --threads 2

One optimiser step (forward, 0.2 CE + 0.8 Dice, backward, AdamW) of the student on random images, for each
variant below, each in its own process with the threads pinned; the median over ``--steps`` steps after
``--warmup`` steps. Prints milliseconds per step and per image, and each variant's ratio to the plain fp32
step of the same pyramid:
  - ``fp32``: the bundles' step today;
  - ``channels_last``: model and batch in NHWC memory format;
  - ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss;
  - ``compile``: ``torch.compile`` of the model (the compile time is reported apart, not in the median);
  - ``batch x2``: twice the batch (compare per image: more steps for the same time only if it is lower);
  - variants joined by ``+`` combine, e.g. ``bf16+channels_last`` or ``bf16+compile`` (bf16 is the students'
    default since 2026-12-03, so these are what the others would add on top of it).
Also the DynUNet reference's fp32 step, for scale. ``--networks`` may name ``teacher`` (the demo's LiteMedSAM
with LoRA rank 4, untrained weights: the cost is the architecture's, at the teacher bundle's batch of
``--teacher_batch``) and ``reference`` to measure their variants too. The teacher has variants of its own
(``--teacher_variants``): ``encoder batch``, its step with the image encoder run on the whole batch at once
instead of one image at a time (``SamTeacher.encoder_chunk``, the CPU default); ``cache``, the no-grad
forward of the teacher cache's pass (a batch of 8, one image at a time through the encoder) and ``cache encoder
batch`` (compared with ``cache``). Writes ``--out`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("fp32", "channels_last", "bf16", "compile", "batch x2")
TEACHER_VARIANTS = ("encoder batch", "cache", "cache encoder batch")


def _step_times(network: str, variant: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    import torch
    from monai.losses import DiceCELoss

    from common.models import build_dynunet, build_teacher, build_vit_fpn

    torch.manual_seed(0)
    if network == "reference":
        model = build_dynunet(size, 1, 3)
    elif network == "teacher":
        model = build_teacher(name="litemedsam", checkpoint="", image_size=size, num_classes=3, lora_rank=4)
    else:
        model = build_vit_fpn(image_size=size, in_channels=1, num_classes=3, fpn=network)
    model.train()
    parts = set(variant.split("+"))
    batch = batch * 2 if "batch x2" in parts else batch
    if variant.startswith("cache"):
        batch = 8  # TeacherCache's batch
    if "encoder batch" in variant:
        model.encoder_chunk = batch
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 3, (batch, 1, size, size)).float()
    if "channels_last" in parts:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8)
    if network == "reference":
        from common.losses import DeepSupervised

        loss_fn = DeepSupervised(loss_fn)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    forward = model

    def loss():
        """Forward and loss as the variant runs them: bf16 autocast around the forward, the loss in fp32."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in parts):
            out = forward(x)
        return loss_fn([o.float() for o in out] if isinstance(out, (list, tuple)) else out.float(), y)

    compile_seconds = None
    if "compile" in parts:
        start = time.perf_counter()
        forward = torch.compile(model)
        optimizer.zero_grad()
        loss().backward()  # the compilation happens here, under the steps' precision
        compile_seconds = time.perf_counter() - start

    def step():
        if variant.startswith("cache"):
            with torch.no_grad():
                model.eval().forward_all(x)
            return
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"network": network, "variant": variant, "batch": batch, "ms_per_step": 1000 * median,
            "ms_per_image": 1000 * median / batch, "compile_seconds": compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=6, help="the student bundle's batch (6)")
    parser.add_argument("--teacher_batch", type=int, default=4, help="the teacher bundle's batch (4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--networks", default="light,skip", help="student pyramids to measure")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--teacher_variants", default=",".join(TEACHER_VARIANTS),
                        help="the teacher's own variants, measured besides --variants when --networks has teacher")
    parser.add_argument("--out", default="")
    parser.add_argument("--_one", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        import torch

        torch.set_num_threads(args.threads)
        network, variant = args._one.split(":")
        print(json.dumps(_step_times(network, variant, args.image_size, args.batch_size, args.steps, args.warmup)))
        return
    jobs = [(n, v) for n in args.networks.split(",") for v in args.variants.split(",")]
    if "teacher" in args.networks.split(","):
        jobs += [("teacher", v) for v in args.teacher_variants.split(",") if v]
    if "reference" not in args.networks.split(","):
        jobs.append(("reference", "fp32"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    for network, variant in jobs:
        batch = args.teacher_batch if network == "teacher" else args.batch_size
        command = [sys.executable, __file__, "--_one", f"{network}:{variant}", "--image_size", str(args.image_size),
                   "--batch_size", str(batch), "--threads", str(args.threads), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            rows.append({"network": network, "variant": variant, "error": result.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\nOne training step at {args.image_size}², {args.threads} threads, median of {args.steps} steps:")
    print("| network | variant | batch | ms / step | ms / image | per image vs fp32 (vs cache) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['network']} | {row['variant']} | - | failed: {row['error'][:80]} | | |")
            continue
        base_variant = "cache" if row["variant"].startswith("cache") else "fp32"
        base = next((r for r in rows if r["network"] == row["network"] and r["variant"] == base_variant
                     and "error" not in r), None)
        ratio = row["ms_per_image"] / base["ms_per_image"] if base else float("nan")
        extra = f" (compile {row['compile_seconds']:.0f} s)" if row.get("compile_seconds") else ""
        print(f"| {row['network']} | {row['variant']}{extra} | {row['batch']} | {row['ms_per_step']:.0f} | "
              f"{row['ms_per_image']:.1f} | {ratio:.2f}x |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"image_size": args.image_size, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
