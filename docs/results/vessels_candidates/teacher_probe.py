import json, os, sys
from common.pipeline.stages import train_bundle, evaluate_bundle
base = {"dataset_dir": "/work/runs/vessels", "seed": 1234, "image_size": 128, "teacher": "litemedsam"}
budget = {"steps": 175, "patience": 3, "epoch_length": 25, "labels": 5}
variants = {"lr0.001": {"learning_rate": 0.001}, "nostop": {"patience": 100}}
for name in sys.argv[1:]:
    root = f"/work/runs/teacher_probe/{name}"
    train_bundle("drive", "teacher", root, {**base, **budget, **variants[name]})
    report = evaluate_bundle("drive", "teacher", root, base)
    t = json.load(open(os.path.join(root, "models", "training.json")))
    print("RESULT", name, report.get("mean_dice", report.get("metrics", {}).get("mean_dice")), t["steps"], t["best_step"],
          [round(v, 3) for _, v in t["history"]], flush=True)
