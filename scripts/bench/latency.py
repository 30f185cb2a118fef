"""How fast the deployed model runs on a CPU, against the foundation models it replaces, in one run.

    python scripts/bench/latency.py --sizes 256 512 --threads 2 --out runs/bench/latency.json

At each input size, batch 1, in this process with ``--threads`` threads:
  - the student (ViT-Tiny + FPN, ``--fpn``) in PyTorch eager, traced + frozen TorchScript, ONNX Runtime
    and ``torch.compile`` (inductor with frozen weights; ``--no-compile`` skips it),
  - SAM ViT-B (encoder + prompt-free decoder; random weights: timing does not depend on them),
  - LiteMedSAM (its shipped weights, LoRA merged),
  - the DynUNet reference (nnU-Net's 2D plan for the size; eager and TorchScript),
  - a square fp32 matmul, the machine's reference rate,
each timed as the median of repeated forwards after warm-up, with its FLOPs counted by
``torch.utils.flop_counter``. Prints a table, the ratios (SAM ViT-B / student, each runtime / eager) and
the student's achieved GFLOP/s as a fraction of the matmul rate, and writes them as JSON.
Targets: student >= 15x faster than SAM ViT-B at 512²; the best student runtime at >= 50 % of the
matmul rate; the student's GFLOP at most 1/5 of the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch


def _time(fn, min_seconds: float, min_reps: int = 3, warmup: int = 2) -> float:
    """Median seconds per call, after ``warmup`` calls, over at least ``min_reps`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(n: int, min_seconds: float) -> float:
    """GFLOP/s of an n x n fp32 matmul (2 n³ FLOP) with the current thread count."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    seconds = _time(lambda: torch.mm(a, b), min_seconds)
    return 2 * n**3 / seconds / 1e9


def bench_size(size: int, args) -> list[dict]:
    from common.models import (build_dynunet, build_litemedsam_teacher, build_vit_fpn, count_gflop, export_onnx,
                               merge_qv_lora, onnx_session, sam_architecture, trace_model)

    rows = []
    x = torch.rand(1, 1, size, size)

    def add(name: str, model, run, flops: float) -> None:
        seconds = _time(run, args.min_seconds)
        rows.append({"size": size, "model": name, "ms": seconds * 1e3, "gflop": flops, "gflops_per_s": flops / seconds})
        print(f"  {size}² {name:<28} {seconds * 1e3:9.1f} ms  {flops:7.2f} GFLOP  {flops / seconds:6.1f} GFLOP/s", flush=True)

    student = build_vit_fpn(image_size=size, in_channels=1, num_classes=args.num_classes, fpn=args.fpn).eval()
    flops = count_gflop(student, x)
    with torch.inference_mode():
        add(f"student ({args.fpn}) eager", student, lambda: student(x), flops)
    traced = trace_model(student, x)
    with torch.inference_mode():
        add(f"student ({args.fpn}) TorchScript", traced, lambda: traced(x), flops)
    try:
        import onnxruntime  # noqa: F401 (onnx_session needs it)
    except ImportError:
        print("  onnxruntime is not installed (pip install -r requirements.txt): no ONNX Runtime row", flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(student, x, os.path.join(tmp, "student.onnx"))
            session = onnx_session(path, args.threads)
            feed = {"image": x.numpy()}
            add(f"student ({args.fpn}) ONNX Runtime", session, lambda: session.run(None, feed), flops)

    if args.compile:
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights as constants: prepacked for the CPU's GEMM kernels
        compiled = torch.compile(student)
        with torch.inference_mode():
            compiled(x)  # compile outside the timing
            add(f"student ({args.fpn}) torch.compile", compiled, lambda: compiled(x), flops)

    reference = build_dynunet(size, 1, args.num_classes).eval()
    reference_flops = count_gflop(reference, x)
    with torch.inference_mode():
        add("DynUNet reference eager", reference, lambda: reference(x), reference_flops)
    traced_reference = trace_model(reference, x)
    with torch.inference_mode():
        add("DynUNet reference TorchScript", traced_reference, lambda: traced_reference(x), reference_flops)

    if not args.foundation:
        return rows
    sam = sam_architecture("vit_b", image_size=size, num_classes=args.num_classes).eval()
    with torch.inference_mode():
        add("SAM ViT-B (enc + dec)", sam, lambda: sam(x), count_gflop(sam, x))
    lite = build_litemedsam_teacher(image_size=size, num_classes=args.num_classes).eval()
    merge_qv_lora(lite.image_encoder)
    with torch.inference_mode():
        add("LiteMedSAM (enc + dec)", lite, lambda: lite(x), count_gflop(lite, x))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fpn", default="skip", help="the student's pyramid: skip (default), light or paper")
    parser.add_argument("--num_classes", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile (inductor, frozen weights; needs a C++ compiler)")
    parser.add_argument("--foundation", action=argparse.BooleanOptionalAction, default=True,
                        help="also time SAM ViT-B and LiteMedSAM (--no-foundation: the student and the reference only)")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the reference matmul")
    parser.add_argument("--min_seconds", type=float, default=3.0, help="time each model at least this long")
    parser.add_argument("--out", default="runs/bench/latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, batch 1, torch {torch.__version__}", flush=True)
    rate = matmul_rate(args.matmul, args.min_seconds)
    print(f"  matmul {args.matmul}² fp32: {rate:.1f} GFLOP/s (reference)", flush=True)
    rows = [r for size in args.sizes for r in bench_size(size, args)]

    summary = {}
    print("\nratios")
    for size in args.sizes:
        at = {r["model"]: r for r in rows if r["size"] == size}
        students = {k: v for k, v in at.items() if k.startswith("student")}
        best_name, best = min(students.items(), key=lambda kv: kv[1]["ms"])
        eager = students[f"student ({args.fpn}) eager"]
        reference = min((v for k, v in at.items() if k.startswith("DynUNet")), key=lambda r: r["ms"])
        s = {"best_student": best_name, "student_fraction_of_matmul": best["gflops_per_s"] / rate,
             "reference_over_student": reference["ms"] / best["ms"],
             "reference_gflop_over_student": reference["gflop"] / best["gflop"],
             "runtime_over_eager": {k: v["ms"] / eager["ms"] for k, v in students.items()}}
        line = (f"DynUNet reference / student {s['reference_over_student']:.1f}x in time, "
                f"{s['reference_gflop_over_student']:.1f}x in GFLOP")
        if args.foundation:
            sam, lite = at["SAM ViT-B (enc + dec)"], at["LiteMedSAM (enc + dec)"]
            s.update(sam_vit_b_over_student=sam["ms"] / best["ms"], litemedsam_over_student=lite["ms"] / best["ms"])
            line += (f", SAM ViT-B / student {s['sam_vit_b_over_student']:.1f}x, LiteMedSAM / student "
                     f"{s['litemedsam_over_student']:.1f}x")
        summary[str(size)] = s
        print(f"  {size}²: {line} (best student: {best_name}); student at "
              f"{100 * s['student_fraction_of_matmul']:.0f} % of the matmul rate; runtime / eager: "
              + ", ".join(f"{k.split(') ')[1]} {v:.2f}" for k, v in s["runtime_over_eager"].items()))
    big = str(max(args.sizes))
    targets = {"best student runtime >= 50 % of the matmul rate": all(s["student_fraction_of_matmul"] >= 0.5
                                                                       for s in summary.values()),
               "student GFLOP <= 1/5 of the DynUNet reference's at every size": all(
                   s["reference_gflop_over_student"] >= 5 for s in summary.values())}
    if args.foundation:
        targets[f"student >= 15x faster than SAM ViT-B at {big}²"] = summary[big]["sam_vit_b_over_student"] >= 15
    print("\ntargets")
    for name, met in targets.items():
        print(f"  {'met    ' if met else 'NOT met'}  {name}")
    print("\n| input | model | ms | GFLOP | GFLOP/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['model']} | {r['ms']:.1f} | {r['gflop']:.2f} | {r['gflops_per_s']:.1f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "torch": torch.__version__, "matmul_gflops_per_s": rate, "rows": rows,
                   "ratios": summary, "targets": targets}, f, indent=1)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
