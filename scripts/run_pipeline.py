"""The main job: every stage of tskd for one dataset, each through its MONAI bundle.

    python scripts/run_pipeline.py --dataset demo --profile quick --out runs/demo

Stages: prepare the data (demo only) -> teacher (SAM-LoRA) -> student (fine-tuned on the labels) ->
evaluate both on the test split. A stage whose outputs exist for the same inputs is skipped, so an
interrupted run continues where it stopped (each bundle also resumes its own training). Writes
``OUT/metrics.json`` ({"teacher": M, "student": M}) and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

from common.engines.metrics import format_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Epochs per stage. "paper" follows the paper (160 each); "quick" fits the demo on 2 CPU cores.
PROFILES = {
    "quick": {"teacher": 12, "student": 40},
    "paper": {"teacher": 160, "student": 160},
}


def _bundle(dataset: str, stage: str) -> str:
    return os.path.join(ROOT, "bundles", f"{dataset}_{stage}", "configs")


def _stamp(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def run_bundle(dataset: str, stage: str, out: str, overrides: dict, evaluate_only: bool = False) -> dict:
    """Train (unless done for the same overrides) and evaluate one bundle; returns its metrics report."""
    configs = _bundle(dataset, stage)
    root = os.path.join(out, stage)
    stamp_file = os.path.join(root, "done.json")
    stamp = _stamp(overrides)
    args = [f"--{k}={v}" for k, v in overrides.items()] + ["--bundle_root", root]
    done = os.path.isfile(stamp_file) and json.load(open(stamp_file)).get("stamp") == stamp
    if not done and not evaluate_only:
        print(f"\n=== {stage}: training ({overrides.get('epochs')} epochs) -> {root}", flush=True)
        start = time.time()
        _call(["--config_file", os.path.join(configs, "train.json"), *args])
        os.makedirs(root, exist_ok=True)
        with open(stamp_file, "w") as f:
            json.dump({"stamp": stamp, "overrides": overrides, "seconds": round(time.time() - start)}, f)
    else:
        print(f"\n=== {stage}: already trained with these settings ({root}), skipping", flush=True)
    print(f"=== {stage}: evaluating on the test split", flush=True)
    _call(["--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")]),
           "--meta_file", os.path.join(configs, "metadata.json"), *args])
    with open(os.path.join(root, "eval", "metrics.json")) as f:
        return json.load(f)


def _call(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"stage failed (exit {result.returncode}): python -m monai.bundle run {' '.join(args)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo", help="bundle prefix: bundles/<dataset>_{teacher,student}")
    parser.add_argument("--data_dir", default=None, help="folder with datalist.json (default: prepare the demo in OUT/data)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--labels", type=int, default=0, help="labelled training images to use (0: all)")
    parser.add_argument("--teacher", default="litemedsam", help="litemedsam (embedded) or vit_b / vit_l / vit_h")
    parser.add_argument("--sam_checkpoint", default="", help="official SAM checkpoint, for --teacher vit_*")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    data_dir = args.data_dir
    if data_dir is None:
        if args.dataset != "demo":
            sys.exit(f"--data_dir is required for dataset '{args.dataset}' (a folder with datalist.json)")
        data_dir = os.path.join(out, "data")
        if not os.path.isfile(os.path.join(data_dir, "datalist.json")):
            print("=== preparing the demo dataset (MNI152 brain MRI from nilearn)", flush=True)
            from common.data import prepare_demo

            prepare_demo(data_dir)
    data_dir = os.path.abspath(data_dir)
    epochs = PROFILES[args.profile]
    base = {"dataset_dir": data_dir, "seed": args.seed, "labels": args.labels}
    teacher = {**base, "epochs": epochs["teacher"], "teacher": args.teacher}
    if args.sam_checkpoint:
        teacher["sam_checkpoint"] = os.path.abspath(args.sam_checkpoint)
    reports = {
        "teacher": run_bundle(args.dataset, "teacher", out, teacher),
        "student": run_bundle(args.dataset, "student", out, {**base, "epochs": epochs["student"]}),
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(reports, f, indent=1)
    lines = [f"# tskd on {args.dataset} ({args.profile} profile, labels: {args.labels or 'all'}, seed {args.seed})", ""]
    for name, report in reports.items():
        lines += [f"## {name}", "", "```", format_report(report), "```", ""]
    summary = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary + f"\nwritten: {out}/metrics.json, {out}/summary.md")


if __name__ == "__main__":
    main()
