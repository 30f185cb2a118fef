"""What the pre-training's seed adds to the grid's spread: this grid's TS-KD cells (each seed its own transfer set
and pre-training) against ``../demo_grid_warmup``'s (same teachers, same fine-tuning seeds, one pre-training per
budget shared by the seeds). The seed-1234 cells are the same runs in both.

Per label budget: the TS-KD Dice of every seed, mean ± sd, and TS-KD − reference per test image (seed-averaged,
Wilcoxon signed-rank, the three budgets Holm-adjusted together, ``common.comparison``) under either grid. Also
checks that a grid cell is the main job's run: the 10-label cells of seeds 1235 and 1236 against
``run_pipeline.py --seed S --teacher_checkpoint`` the same teacher (``../demo_grid_warmup/pretrain_seeds.json``).
Writes ``compare.md`` beside this file.

    PYTHONPATH=. python docs/results/demo_grid_perseed/compare.py
"""

from __future__ import annotations

import json
import os

import numpy as np

from common.comparison import holm, image_scores, paired_test

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "demo_grid_warmup", "cells")
PER_SEED = os.path.join(HERE, "cells")
REFERENCE = os.path.join(HERE, "..", "demo_grid_bf16", "cells")  # the reference cells both grids reused
PIPELINE = os.path.join(HERE, "..", "demo_grid_warmup", "pretrain_seeds.json")
BUDGETS = ("5", "10", "all")
SEEDS = (1234, 1235, 1236)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def cells(folder: str, name: str) -> tuple[list[float], list]:
    """One row's cells over the seeds: their mean Dice and their per-image scores averaged over the seeds."""
    records = [load(os.path.join(folder, f"{name}_seed{seed}.json")) for seed in SEEDS]
    return [r["row"]["mean_dice"] for r in records], image_scores([r["per_image_class_dice"] for r in records])


def against_reference(folder: str, reference_folder: str) -> list[tuple]:
    out = []
    for labels in BUDGETS:
        means, images = cells(folder, f"tskd_labels{labels}_transfer160")
        _, reference = cells(reference_folder, f"dynunet_labels{labels}")
        out.append((labels, means, paired_test(images, reference)))
    return out


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def main() -> None:
    shared, per_seed = against_reference(SHARED, REFERENCE), against_reference(PER_SEED, REFERENCE)
    p_shared, p_per_seed = holm([t["p"] for *_, t in shared]), holm([t["p"] for *_, t in per_seed])
    lines = ["| labels (+ 5 for validation) | TS-KD per seed, shared pre-training | TS-KD, shared "
             "| TS-KD per seed, own pre-training | TS-KD, own | − reference, shared (Holm p over the budgets) "
             "| − reference, own (Holm p over the budgets) |", "|---|---|---|---|---|---|---|"]
    for (labels, m_shared, t_shared), (_, m_own, t_own), ps, po in zip(shared, per_seed, p_shared, p_per_seed):
        lines.append(f"| {labels} | {' / '.join(f'{v:.4f}' for v in m_shared)} | {spread(m_shared)} "
                     f"| {' / '.join(f'{v:.4f}' for v in m_own)} | {spread(m_own)} "
                     f"| {t_shared['mean_diff']:+.3f} ({ps:.3g}) | {t_own['mean_diff']:+.3f} ({po:.3g}) |")
    lines += ["", "A grid cell against the main job with the same teacher and seed (10 labels):", ""]
    pipeline = {run["seed"]: run["student_test_mean_dice"] for run in load(PIPELINE)["runs"]}
    for seed, dice in pipeline.items():
        cell = load(os.path.join(PER_SEED, f"tskd_labels10_transfer160_seed{seed}.json"))["row"]["mean_dice"]
        lines.append(f"- seed {seed}: grid cell {cell:.4f}, run_pipeline.py {dice:.4f} (difference {cell - dice:+.4f})")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "compare.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
