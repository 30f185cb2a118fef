"""Is the teacher's warm-up what lowered the 10-label TS-KD student? One run: the grid's 10-label teacher with
the former warm-up (17 of 175 steps, a tenth) instead of 88, then the main job's TS-KD pre-training and
fine-tuning from it at seed 1234 (``tskd-run --teacher_checkpoint``, which runs the grid cell's stages), on the
grid's prepared demo data. Run from the repository root after the grid:

    PYTHONPATH=. python docs/results/demo_grid_warmup/probe10.py /work/runs/grid_warmup /work/runs/probe10

Writes OUT/probe10.json (teacher and student test Dice, the teacher's validation curve) and prints it."""

import json
import os
import sys
import time

from common.pipeline.cli import run_main
from common.pipeline.stages import evaluate_bundle, train_bundle

grid, out = sys.argv[1], sys.argv[2]
with open(os.path.join(grid, "teacher", "labels10", "done.json")) as f:
    overrides = json.load(f)["overrides"]  # the grid teacher's own overrides (data, seed, budget, labels)
teacher_root = os.path.join(out, "teacher")
start = time.time()
train_bundle("demo", "teacher", teacher_root, {**overrides, "lr_scheduler#warmup_steps": 17})
evaluate = {k: v for k, v in overrides.items() if k in ("dataset_dir", "seed", "teacher")}
teacher_report = evaluate_bundle("demo", "teacher", teacher_root, evaluate)
with open(os.path.join(teacher_root, "models", "training.json")) as f:
    curve = json.load(f)
teacher_seconds = round(time.time() - start)
run_main(["--dataset", "demo", "--profile", "quick", "--labels", "10", "--seed", "1234",
          "--teacher_checkpoint", os.path.join(teacher_root, "models", "model.pt"), "--out", os.path.join(out, "run")])
with open(os.path.join(out, "run", "metrics.json")) as f:
    run = json.load(f)
result = {"teacher_warmup_steps": 17, "teacher_test_mean_dice": teacher_report.get("mean_dice"),
          "teacher_steps": curve["steps"], "teacher_best_step": curve["best_step"], "teacher_history": curve["history"],
          "teacher_seconds": teacher_seconds, "student_test_mean_dice": run["student"]["mean_dice"], "run_metrics": run,
          "seconds": round(time.time() - start)}
with open(os.path.join(out, "probe10.json"), "w") as f:
    json.dump(result, f, indent=1)
print(json.dumps({k: v for k, v in result.items() if k != "run_metrics"}, indent=1))
