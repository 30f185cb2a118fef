"""Per-seed tables of runs against a baseline run of the same seed, for the docs/results/*/tables.py scripts.

A run is a results row with ``test_dice``, ``best_step`` and ``steps`` (scripts/bench/teacher_recipe.py writes
them). ``paired_rows`` gives one table line per seed (the baseline's cell, then each column's cell with its
difference from the baseline) and a mean ± sd line, and collects the differences for ``sign_test``.
"""
import statistics

from scipy.stats import binomtest


def run_cell(run: dict) -> str:
    return f"{run['test_dice']:.4f} ({run['best_step']}/{run['steps']})"


def paired_rows(title: str, seeds, base, columns: dict, diffs: dict, note=None) -> list[str]:
    """``base(seed)``: the baseline run; ``columns[name](seed)``: that column's run or None (an empty cell);
    ``note(name, run)``: text after a column's cell. Appends each difference to ``diffs[name]``."""
    values = {None: [], **{name: [] for name in columns}}
    lines = []
    for seed in seeds:
        b = base(seed)
        values[None].append(b["test_dice"])
        cells = [run_cell(b)]
        for name, lookup in columns.items():
            run = lookup(seed)
            if run is None:
                cells.append("-")
                continue
            diff = run["test_dice"] - b["test_dice"]
            values[name].append(run["test_dice"])
            diffs[name].append(diff)
            cells.append(f"{run_cell(run)}, {diff:+.4f}" + (note(name, run) if note else ""))
        lines.append(f"| {title} | {seed} | " + " | ".join(cells) + " |")
    lines.append(f"| {title} | mean ± sd | " + " | ".join(
        f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else "-" for v in values.values()) + " |")
    return lines


def sign_test(diffs: list) -> str:
    wins = sum(d > 0 for d in diffs)
    p = binomtest(wins, len(diffs)).pvalue  # two-sided exact sign test
    return (f"higher in {wins} of {len(diffs)} (set, seed) pairs, mean {statistics.mean(diffs):+.4f}, "
            f"two-sided sign test p = {p:.3f}")
