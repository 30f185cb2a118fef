"""A simulated annotation loop on a trained run (see ``common.labelling.simulate``), then its table and plot.

    python scripts/simulate_labelling.py --run runs/demo5 --seeds 3 --out runs/loop

Writes ``OUT/loop.json``, ``OUT/loop.md`` (test Dice per round and strategy, mean ± sd over seeds; the final
round of each strategy against random by a Wilcoxon signed-rank test over test images, seeds averaged per image)
and ``OUT/dice_vs_labels.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from common.errors import TskdError, install_excepthook


def report(record: dict, out: str, strategies: list[str], seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.comparison import image_scores, paired_test

    lines = ["# Simulated annotation loop", "", f"Seeds {', '.join(map(str, seeds))}; test Dice, mean ± sd over seeds.",
             "", "| strategy | " + " | ".join(f"round {r}" for r in range(len(record[next(iter(record))]["rounds"])))
             + " |", "|---|" + "---|" * len(record[next(iter(record))]["rounds"])]
    finals = {}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for strategy in strategies:
        runs = [record[f"{strategy}_seed{s}"]["rounds"] for s in seeds if f"{strategy}_seed{s}" in record]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        means = [statistics.mean(r[i]["mean_dice"] for r in runs) for i in range(n)]
        sds = [statistics.stdev([r[i]["mean_dice"] for r in runs]) if len(runs) > 1 else 0.0 for i in range(n)]
        labels = [runs[0][i]["labels"] for i in range(n)]
        lines.append(f"| {strategy} | " + " | ".join(f"{m:.4f} ± {s:.4f} ({k} labels)" for m, s, k in
                                                     zip(means, sds, labels)) + " |")
        ax.errorbar(labels, means, yerr=sds, marker="o", capsize=3, label=strategy)
        finals[strategy] = image_scores([r[n - 1]["per_image_dice"] for r in runs])
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test Dice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dice_vs_labels.png"), dpi=120)
    lines += ["", "Final round against random (Wilcoxon signed-rank over test images, seeds averaged per image):", ""]
    for strategy, scores in finals.items():
        if strategy != "random" and "random" in finals:
            t = paired_test(scores, finals["random"])
            verdict = ("n too small for any p < 0.05" if t["min_p"] >= 0.05 else
                       "inside the noise" if t["p"] >= 0.05 else "a real difference")
            lines.append(f"- {strategy} vs random: mean difference {t['mean_diff']:+.4f}, n = {t['n']}, "
                         f"p = {t['p']:.4f} ({verdict})")
    with open(os.path.join(out, "loop.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


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
    from common.labelling.simulate import simulate
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
    report(record, args.out, strategies, seeds)


if __name__ == "__main__":
    main()
