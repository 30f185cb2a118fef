"""Does the better teacher move the TS-KD student? This grid's cells against those of ``../demo_grid_bf16``
(same command and seeds; the teacher then warmed up over 15 of 150 steps, here over 88 of 175).

Per label budget: each grid's teacher (one run), TS-KD mean ± sd over seeds, and new − old TS-KD per test image
(seed-averaged, Wilcoxon signed-rank, the three budgets Holm-adjusted together) with ``common.comparison``.
Writes ``compare.md`` beside this file.

    PYTHONPATH=. python docs/results/demo_grid_warmup/compare.py
"""

from __future__ import annotations

import json
import os

import numpy as np

from common.comparison import holm, image_scores, paired_test

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = os.path.join(HERE, "..", "demo_grid_bf16", "cells")
NEW = os.path.join(HERE, "cells")
BUDGETS = ("5", "10", "all")
SEEDS = (1234, 1235, 1236)


def load(folder: str, name: str) -> dict:
    with open(os.path.join(folder, name + ".json")) as f:
        return json.load(f)


def teacher_dice(folder: str, labels: str) -> float:
    record = load(folder, f"teacher_labels{labels}")
    return record.get("row", record)["mean_dice"]


def tskd(folder: str, labels: str) -> tuple[list[float], list]:
    records = [load(folder, f"tskd_labels{labels}_transfer160_seed{seed}") for seed in SEEDS]
    return [r["row"]["mean_dice"] for r in records], image_scores([r["per_image_class_dice"] for r in records])


def main() -> None:
    rows, tests = [], []
    for labels in BUDGETS:
        old_means, old_images = tskd(OLD, labels)
        new_means, new_images = tskd(NEW, labels)
        tests.append(paired_test(new_images, old_images))
        rows.append((labels, teacher_dice(OLD, labels), teacher_dice(NEW, labels), old_means, new_means))
    adjusted = holm([t["p"] for t in tests])
    lines = ["| labels (+ 5 for validation) | teacher, warm-up 15 of 150 | teacher, warm-up 88 of 175 "
             "| TS-KD, old teacher | TS-KD, new teacher | new − old per image (Holm p, n) |",
             "|---|---|---|---|---|---|"]
    for (labels, t_old, t_new, old_means, new_means), test, p in zip(rows, tests, adjusted):
        verdict = "inside the noise" if p >= 0.05 else ("better" if test["mean_diff"] > 0 else "worse")
        lines.append(f"| {labels} | {t_old:.4f} | {t_new:.4f} "
                     f"| {np.mean(old_means):.4f} ± {np.std(old_means, ddof=1):.4f} "
                     f"| {np.mean(new_means):.4f} ± {np.std(new_means, ddof=1):.4f} "
                     f"| {test['mean_diff']:+.3f} ({p:.3g}, n = {test['n']}; {verdict}) |")
    lines += ["", "Per seed (old → new TS-KD mean Dice):", ""]
    for labels, _, _, old_means, new_means in rows:
        pairs = ", ".join(f"{seed}: {o:.4f} → {n:.4f}" for seed, o, n in zip(SEEDS, old_means, new_means))
        lines.append(f"- {labels} labels — {pairs}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "compare.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
