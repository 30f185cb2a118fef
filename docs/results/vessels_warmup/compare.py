"""Does a teacher that works move the vessel student? This grid's TS-KD cells (teacher warm-up over 88 of 175
steps, test Dice 0.60; each seed its own pre-training) against ``../vessels_candidates/skip``'s (warm-up 17, the
teacher stayed all background, Dice 0; one pre-training shared by the seeds). Same data, seeds and students
otherwise. New − old per test image, seeds averaged per image, Wilcoxon signed-rank (``common.comparison``).
Writes ``compare.md`` beside this file.

    PYTHONPATH=. python docs/results/vessels_warmup/compare.py
"""

from __future__ import annotations

import json
import os

import numpy as np

from common.comparison import image_scores, paired_test

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = os.path.join(HERE, "..", "vessels_candidates", "skip", "cells")
NEW = os.path.join(HERE, "cells")
SEEDS = (1234, 1235)


def tskd(folder: str) -> tuple[list[float], list]:
    records = []
    for seed in SEEDS:
        with open(os.path.join(folder, f"tskd_labels5_transfer160_seed{seed}.json")) as f:
            records.append(json.load(f))
    return [r["row"]["mean_dice"] for r in records], image_scores([r["per_image_class_dice"] for r in records])


def main() -> None:
    (old, old_images), (new, new_images) = tskd(OLD), tskd(NEW)
    test = paired_test(new_images, old_images)
    text = (f"| TS-KD, teacher Dice 0 (shared pre-training) | TS-KD, teacher Dice 0.60 (own pre-training) "
            f"| new − old per image (p, n) |\n|---|---|---|\n"
            f"| {' / '.join(f'{v:.4f}' for v in old)} ({np.mean(old):.4f}) "
            f"| {' / '.join(f'{v:.4f}' for v in new)} ({np.mean(new):.4f}) "
            f"| {test['mean_diff']:+.4f} ({test['p']:.3g}, n = {test['n']}) |\n")
    with open(os.path.join(HERE, "compare.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
