"""The teacher's warm-up over seeds: the default (a tenth of the run, capped at 250 steps) against a warm-up over
half the run, each on the quick profile's 175-step budget, trained and evaluated through the same bundles as the grid.
Run from the repository root, one run per argument SET:VARIANT:SEED, e.g.
PYTHONPATH=. python docs/results/teacher_warmup/probe.py demo5:half:1235 vessels:default:1236
Each run appends one JSON line to /work/runs/teacher_warmup/results.jsonl."""
import json
import os
import sys
import time

from common.pipeline.stages import evaluate_bundle, train_bundle

OUT = "/work/runs/teacher_warmup"
SETS = {"demo5": ("demo", {"dataset_dir": "/work/runs/main175/data", "teacher": "litemedsam"}, {"labels": 5}),
        "demoall": ("demo", {"dataset_dir": "/work/runs/main175/data", "teacher": "litemedsam"}, {}),
        "vessels": ("drive", {"dataset_dir": "/work/runs/vessels", "image_size": 128, "teacher": "litemedsam"},
                    {"labels": 5})}
BUDGET = {"steps": 175, "patience": 3, "epoch_length": 25}
VARIANTS = {"default": {}, "half": {"lr_scheduler#warmup_steps": 88}}
for arg in sys.argv[1:]:
    name, variant, seed = arg.split(":")
    dataset, base, labels = SETS[name]
    base = {**base, "seed": int(seed)}
    root = os.path.join(OUT, f"{name}_{variant}_{seed}")
    start = time.time()
    train_bundle(dataset, "teacher", root, {**base, **BUDGET, **labels, **VARIANTS[variant]})
    report = evaluate_bundle(dataset, "teacher", root, base)
    t = json.load(open(os.path.join(root, "models", "training.json")))
    row = {"set": name, "variant": variant, "seed": int(seed),
           "test_mean_dice": report.get("mean_dice", report.get("metrics", {}).get("mean_dice")),
           "steps": t["steps"], "best_step": t["best_step"], "history": t["history"],
           "seconds": round(time.time() - start)}
    with open(os.path.join(OUT, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    print("RESULT", json.dumps(row), flush=True)
