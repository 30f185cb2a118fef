"""The grid's teacher diagnostics: teachers of each LoRA rank at the largest label budget, their test Dice and
the mutual information I(T;Y) between their predicted classes and the labels of the labelled images (the untuned
foundation model, rank 0, against the task-specific LoRA teacher)."""

from __future__ import annotations

import math
import os

from common.comparison import mutual_information
from common.data import load_datalist, read_prediction
from common.data.datalists import class_names
from common.engines import read_training_record
from common.pipeline.grid.cells import Grid
from common.pipeline.grid.records import failure

__all__ = ["teacher_diagnostics"]


def teacher_diagnostics(grid: Grid) -> list[dict]:
    """One record per ``lora_ranks`` rank (default: 0 and the bundle's rank; "none": no diagnostics)."""
    text = grid.spec.lora_ranks.strip().lower()
    if text == "none":
        return []
    bundle_rank = grid.bundle_value("teacher", "lora_rank")
    ranks = [int(r) for r in text.split(",") if r.strip()] if text else [0, bundle_rank]
    labels = max(grid.budgets, key=lambda b: math.inf if b == "all" else int(b))
    return [diagnose(grid, rank, labels, None if rank == bundle_rank else rank) for rank in ranks]


def diagnose(grid: Grid, rank: int, labels: str, lora_rank: int | None) -> dict:
    name = f"teacher_rank{rank}_labels{labels}"
    record = grid.records.get(name)
    if record.get("status") == "done":
        return record
    print(f"\n##### teacher diagnostics: LoRA rank {rank} ({'untuned, decoder trained' if rank == 0 else 'LoRA'})",
          flush=True)
    try:
        ckpt, _, root = grid.teacher(labels, lora_rank)
        overrides = grid.teacher_overrides(labels, ckpt, lora_rank)
        report = grid.evaluate("teacher", root, overrides)
        record = {"status": "done", "rank": rank, "labels": labels, "mean_dice": report["mean_dice"],
                  "mean_hd95": report["mean_hd95"], "hd95_unit": report.get("hd95_unit", ""),
                  **teacher_information(grid, labels, root, overrides),
                  "val_dice": read_training_record(root).get("best_metric")}
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as e:
        message = failure(e)
        print(f"!!! teacher diagnostics rank {rank} failed: {message}", flush=True)
        record = {"status": "failed", "rank": rank, "labels": labels, "error": message}
    grid.records.save(name, record)
    return record


def teacher_information(grid: Grid, labels: str, root: str, overrides: dict) -> dict:
    """I(T;Y) over the pixels of the labelled training images (those the teacher was trained on)."""
    import nibabel as nib
    import numpy as np

    limit = None if labels == "all" else int(labels)
    items = load_datalist(grid.datalist, "training", limit=limit)
    folder = os.path.join(root, "eval", "train_predictions")
    datalist = ("$[{'image': d['image']} for d in common.data.load_datalist("
                f"{grid.datalist!r}, 'training', limit={limit!r})]")
    grid.infer("teacher", root, {**overrides, "datalist": datalist, "output_dir": folder})
    preds, truth = [], []
    for item in items:
        preds.append(read_prediction(folder, item["image"]))
        truth.append(np.squeeze(np.asarray(nib.load(item["label"]).dataobj)))
    return mutual_information(np.concatenate([p.ravel() for p in preds]),
                              np.concatenate([y.ravel() for y in truth]), len(class_names(grid.datalist)))
