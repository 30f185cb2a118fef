"""The teacher probe after the vessel grids: one teacher run per named variant (the quick profile's 175-step
budget, seed 1234), trained and evaluated through the same bundles as the grid. Run from the repository root:
PYTHONPATH=. python docs/results/vessels_candidates/teacher_probe.py lr0.001 nostop warmup88 demo_lr0.001 demo_warmup88"""
import json
import os
import sys

from common.pipeline.stages import evaluate_bundle, train_bundle

VESSELS = ("drive", {"dataset_dir": "/work/runs/vessels", "seed": 1234, "image_size": 128, "teacher": "litemedsam"},
           {"labels": 5})
DEMO = ("demo", {"dataset_dir": "/work/runs/main175/data", "seed": 1234, "teacher": "litemedsam"}, {})
BUDGET = {"steps": 175, "patience": 3, "epoch_length": 25}
VARIANTS = {"lr0.001": (VESSELS, {"learning_rate": 0.001}), "nostop": (VESSELS, {"patience": 100}),
            "warmup88": (VESSELS, {"lr_scheduler#warmup_steps": 88}),
            "demo_lr0.001": (DEMO, {"learning_rate": 0.001}),
            "demo_warmup88": (DEMO, {"lr_scheduler#warmup_steps": 88})}
for name in sys.argv[1:]:
    (dataset, base, labels), change = VARIANTS[name]
    root = f"/work/runs/teacher_probe/{name}"
    train_bundle(dataset, "teacher", root, {**base, **BUDGET, **labels, **change})
    report = evaluate_bundle(dataset, "teacher", root, base)
    t = json.load(open(os.path.join(root, "models", "training.json")))
    print("RESULT", name, report.get("mean_dice", report.get("metrics", {}).get("mean_dice")), t["steps"],
          t["best_step"], [round(v, 3) for _, v in t["history"]], flush=True)
