"""A markdown table of evaluation reports, for README tables that come from files the code wrote.

    python scripts/report_runs.py "teacher=runs/demo/metrics.json#teacher" \
        "student, TS-KD=runs/demo/metrics.json#student" "student, scratch=runs/scratch/metrics.json#student"

Each argument is ``label=FILE[#KEY]`` (split at the last "="): a ``metrics.json`` written by an evaluation (a bundle's
``eval/metrics.json``, or the pipeline's ``OUT/metrics.json`` with ``#teacher`` / ``#student``).
"""

from __future__ import annotations

import argparse
import json
import sys


def load_report(spec: str) -> tuple[str, dict]:
    """``label=FILE[#KEY]`` -> (label, report)."""
    label, _, where = spec.rpartition("=")  # a label may hold "=" (r=4); a path seldom does
    path, _, key = where.partition("#")
    with open(path) as f:
        report = json.load(f)
    return label, report[key] if key else report


def table(rows: list[tuple[str, dict]]) -> str:
    """Mean Dice, HD95 (in the reports' unit), IoU, and the false-positive image count per row."""
    units = {r.get("hd95_unit", "mm") for _, r in rows}
    unit = units.pop() if len(units) == 1 else "mm or px"
    lines = [f"| model | mean Dice | mean HD95 ({unit}) | mean IoU | false-positive images |", "|---|---|---|---|---|"]
    for label, r in rows:
        fp = sum(c.get("images", {}).get("false_positive_images", 0) for c in r["per_class"].values())
        lines.append(f"| {label} | {r['mean_dice']:.4f} | {r['mean_hd95']:.2f} | {r['mean_iou']:.4f} | {fp} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="label=FILE[#KEY]")
    args = parser.parse_args()
    try:
        rows = [load_report(spec) for spec in args.reports]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"report_runs: cannot read {e}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
