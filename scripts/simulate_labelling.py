"""A simulated annotation loop on a trained run (see ``common.labelling.simulate``), then its table and plot.

    python scripts/simulate_labelling.py --run runs/demo5 --seeds 3 --out runs/loop

Writes ``OUT/loop.json``, ``OUT/loop.md`` (test Dice per round and strategy, mean ± sd over seeds; the final
round of each strategy against random by a Wilcoxon signed-rank test over test images, seeds averaged per image)
and ``OUT/dice_vs_labels.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.errors import TskdError, install_excepthook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a tskd-run output folder (its teacher, pretrain and data)")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--method", default="tskd")
    parser.add_argument("--strategies", default="disagreement,tta,random")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--start", type=int, default=5)
    parser.add_argument("--add", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--out", default="runs/loop")
    args = parser.parse_args()
    install_excepthook()
    from common.labelling.runs import run_overrides
    from common.labelling.simulate import simulate, write_report
    from common.provenance import read_json

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seeds = [args.seed + i for i in range(args.seeds)]
    os.makedirs(args.out, exist_ok=True)
    try:
        overrides = run_overrides(os.path.join(args.run, f"student_{args.method}"))
        if "dataset_dir" not in overrides:
            raise TskdError(f"{args.run}/student_{args.method}/done.json is missing: give a finished tskd-run folder")
        record = read_json(os.path.join(args.out, "loop.json")) if args.report_only else simulate(
            args.dataset, overrides["dataset_dir"], os.path.abspath(args.run), os.path.abspath(args.out), overrides,
            args.method, strategies, seeds, args.start, args.add, args.rounds, args.profile)
    except TskdError as e:
        sys.exit(f"simulate_labelling: {e.message}")
    write_report(record, args.out, strategies, seeds)


if __name__ == "__main__":
    main()
