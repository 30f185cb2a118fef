"""The teacher's fragile start, two candidate remedies against the default: tables.md from the runs.

    python docs/results/teacher_start/tables.py

The default (bf16, 200 steps, per-image Dice, peak lr 0.005) is ../teacher_bf16's results.jsonl (variant
bf16_steps_200, same code and seeds); the candidates are this folder's results.jsonl (scripts/bench/teacher_recipe.py,
variants bf16_batch_dice and bf16_lr_2e-3), whose rows carry each run's validation curve.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from paired_table import paired_rows, sign_test  # noqa: E402  (docs/results/paired_table.py)

SETS = {5: "demo, 5 labels (+ 5 for validation)", 0: "demo, all 50 labels (+ 5 for validation)"}
SEEDS = (1234, 1235, 1236)
DEFAULT = "bf16_steps_200"
CANDIDATES = {"bf16_batch_dice": "batch Dice", "bf16_lr_2e-3": "peak lr 0.002"}
# A run "sits" at a validation after the first (step >= 50) whose Dice is below this: all background or one class.
SITTING = 0.5


def load(path: str) -> dict:
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows[(r["variant"], r["labels"], r["seed"])] = r  # a rerun's line replaces the earlier one
    return rows


def sitting_steps(run: dict) -> str:
    if not run.get("val_history"):
        return "no curve recorded"  # a row written before the bench recorded the validation curve
    low = [step for step, dice in run["val_history"] if step >= 50 and dice < SITTING]
    return f"{min(low)}-{max(low)}" if low else "none"


def main() -> None:
    runs = {**load(os.path.join(HERE, "..", "teacher_bf16", "results.jsonl")), **load(os.path.join(HERE, "results.jsonl"))}
    names = [n for n in CANDIDATES if any(k[0] == n for k in runs)]
    head = "| set | seed | default | " + " | ".join(CANDIDATES[n] for n in names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    diffs = {n: [] for n in names}
    for labels, title in SETS.items():
        lines += paired_rows(title, SEEDS, lambda seed: runs[(DEFAULT, labels, seed)],
                             {n: (lambda seed, n=n: runs.get((n, labels, seed))) for n in names}, diffs,
                             note=lambda n, r: f"; below {SITTING} at {sitting_steps(r)}")
    notes = []
    for n in names:
        notes.append(f"- {CANDIDATES[n]} ({n}) against the default: {sign_test(diffs[n])}.")
        done = [runs[(n, labels, seed)] for labels in SETS for seed in SEEDS if (n, labels, seed) in runs]
        curves = [r for r in done if r.get("val_history")]
        sat = sum(sitting_steps(r) != "none" for r in curves)
        notes.append(f"  Its validation Dice was below {SITTING} after step 25 in {sat} of the {len(curves)} runs with a "
                     f"recorded curve; best at the last validation in "
                     f"{sum(r['best_step'] == r['steps'] for r in done)} of {len(done)}.")
    seconds = "; ".join(f"{n} (labels {k[1] or 'all'}, seed {k[2]}) {r['seconds']} s"
                        for k, r in sorted(runs.items()) if (n := k[0]) in names)
    text = ("# The teacher's fragile start: batch Dice and a lower peak lr against the default\n\n"
            "Written by `tables.py`. Each cell: test Dice (best validation step / steps trained), its difference from "
            "the default at the same seed, and the steps at which the validation Dice sat below "
            f"{SITTING} (all background or one class). The validation masks chose each checkpoint, so only the test "
            "Dice is unbiased.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n\nTraining seconds: "
            + seconds + ".\n")
    with open(os.path.join(HERE, "tables.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
