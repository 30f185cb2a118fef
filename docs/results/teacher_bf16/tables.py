"""The teacher in bf16 with the steps it buys, against the fp32 quick default it replaced: tables.md from the runs.

    python docs/results/teacher_bf16/tables.py

fp32, 175 steps: the half-run warm-up runs of ../teacher_warmup (results.json, variant "half"), the quick default
from 2026-12-03 to 2026-12-05. bf16, 200 steps (today's default) and 225: this folder's results.jsonl
(scripts/bench/teacher_recipe.py; a row with a "source" comes from the main job of ../main_job instead, the same
stage with the same inputs). This folder's fp32_steps_175 row reruns one fp32 run on the bf16 runs' machine, for
the time.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from paired_table import paired_rows, sign_test  # noqa: E402  (docs/results/paired_table.py)

SETS = {"demo5": (5, "demo, 5 labels (+ 5 for validation)"), "demoall": (0, "demo, all 50 labels (+ 5 for validation)")}
SEEDS = (1234, 1235, 1236)
COLUMNS = ("bf16_steps_200", "bf16_steps_225")


def main() -> None:
    fp32 = {(r["set"], r["seed"]): {**r, "test_dice": r["test_mean_dice"]}
            for r in json.load(open(os.path.join(HERE, "..", "teacher_warmup", "results.json"))) if r["variant"] == "half"}
    runs = [json.loads(line) for line in open(os.path.join(HERE, "results.jsonl"))]
    bf16 = {(r["variant"], r["labels"], r["seed"]): r for r in runs}
    lines = ["| set | seed | fp32, 175 steps | bf16, 200 steps (default) | bf16, 225 steps |", "|---|---|---|---|---|"]
    diffs = {c: [] for c in COLUMNS}
    for name, (labels, title) in SETS.items():
        lines += paired_rows(title, SEEDS, lambda seed: fp32[(name, seed)],
                             {c: (lambda seed, c=c: bf16.get((c, labels, seed))) for c in COLUMNS}, diffs)
    text = ("# Teacher test Dice: fp32 with 175 steps against bf16 with 200 and 225\n\nWritten by `tables.py`. Each "
            "cell: test Dice (best validation step / steps trained), and its difference from fp32 with 175 steps at "
            "the same seed. The validation masks chose each checkpoint, so only the test Dice is unbiased.\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(f"- {c} against fp32, 175 steps: {sign_test(d)}." for c, d in diffs.items() if d)
            + "\n")
    for r in runs:
        if r["variant"] == "fp32_steps_175":
            text += (f"\nfp32, 175 steps, rerun on the bf16 runs' machine (labels {r['labels'] or 'all'}, seed {r['seed']}): "
                     f"test Dice {r['test_dice']:.4f}, best at {r['best_step']}/{r['steps']}, {r['seconds']} s of training.\n")
    seconds = [f"{c} (labels {r['labels'] or 'all'}, seed {r['seed']}) {r['seconds']} s" for c in COLUMNS for r in runs
               if r["variant"] == c]
    text += "\nTraining seconds of the bf16 runs: " + "; ".join(seconds) + ".\n"
    open(os.path.join(HERE, "tables.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
