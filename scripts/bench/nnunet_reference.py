"""Real nnU-Net v2 against tskd's DynUNet reference row, on the same split, in one run on this machine.

    python scripts/bench/nnunet_reference.py --dataset demo --labels 5,10,all --epochs 1,10 \
        --nnunet_bin nnunet-venv/bin --out runs/nnunet_reference

For each label budget, one seed: the reference stage (``<dataset>_reference``, DynUNet with nnU-Net's 2D recipe,
the profile's student budget) and nnU-Net v2's own 2D pipeline (plan, preprocess, ``nnUNetTrainer_<epochs>epochs``
for each of ``--epochs`` on the CPU, predict with its test-time mirroring), both trained on the first ``labels`` training images, both
validated on the validation split and scored on the test split by tskd's metrics. Writes ``results.json`` (every
figure, per-image Dice, wall times, nnU-Net's plan) and ``results.md`` (the table and a paired Wilcoxon test per
budget). nnU-Net is not installed by tskd: see ``common.pipeline.nnunet``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common.comparison import image_scores, paired_test
from common.data import class_names, spacing_unit
from common.engines import read_training_record
from common.errors import install_excepthook
from common.pipeline.config import RunConfig
from common.pipeline.nnunet import find_nnunet, run_nnunet, score_nnunet
from common.pipeline.stages import reference_stage, stage_seconds


def _row(report: dict) -> dict:
    return {k: report[k] for k in ("mean_dice", "mean_hd95", "mean_iou")} | {
        "per_class_dice": {c: v["dice"] for c, v in report["per_class"].items()},
        "image_dice": image_scores([report["per_image"]["dice"]])}


def _table(results: list[dict]) -> str:
    epochs = list(results[0]["nnunet"])
    head = ["labels", "DynUNet, nnU-Net 2D recipe (tskd reference)"] + [
        f"nnU-Net v2 2D, {e} epoch{'s' if int(e) > 1 else ''} ({int(e) * 250} steps)" for e in epochs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ref = r["reference"]
        cells = [str(r["labels"]), f"{ref['mean_dice']:.4f}, HD95 {ref['mean_hd95']:.1f}; {ref['steps']} steps "
                                   f"(best {ref['best_step']}), {ref['seconds']} s"]
        for e in epochs:
            nn, test = r["nnunet"][e], r["tests"][e]
            cells.append(f"{nn['mean_dice']:.4f}, HD95 {nn['mean_hd95']:.1f}; {test['mean_diff']:+.4f} (p {test['p']:.3g}, "
                         f"n {test['n']}); {nn['seconds']['train']:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return ("Test split, one seed per budget: mean Dice over classes, mean HD95 (the dataset's unit); for nnU-Net its "
            "difference from the reference in per-image Dice (nnU-Net − reference, Wilcoxon signed-rank p over the "
            "test images) and its training seconds on this machine.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    install_excepthook()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data_dir", default="", help="dataset folder with datalist.json (default: the demo in OUT/data)")
    parser.add_argument("--labels", default="5,10,all", help="label budgets (all: every training image)")
    parser.add_argument("--profile", default="quick", help="the reference's budget: this profile's student budget")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", default="1,10",
                        help="nnU-Net budgets, in its epochs of 250 steps (its trainer variants: 1, 5, 10, 20, 50, ...)")
    parser.add_argument("--nnunet_bin", default="", help="folder with nnUNetv2_train etc. (default: PATH)")
    parser.add_argument("--out", default="runs/nnunet_reference")
    args = parser.parse_args()

    bin_dir = find_nnunet(args.nnunet_bin)
    epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
    out = os.path.abspath(args.out)
    data_dir = RunConfig(dataset=args.dataset, data_dir=args.data_dir or None).dataset_folder(out)
    datalist = os.path.join(data_dir, "datalist.json")
    names, unit = class_names(datalist), spacing_unit(datalist)
    results = []
    for i, budget in enumerate(b.strip() for b in args.labels.split(",")):
        labels = 0 if budget == "all" else int(budget)
        config = RunConfig(dataset=args.dataset, data_dir=data_dir, method="scratch", profile=args.profile,
                           labels=labels, seed=args.seed, out=out)
        root = os.path.join(out, "reference", f"labels{budget}_seed{args.seed}")
        start = time.time()
        reference = reference_stage(config, data_dir, root, args.seed)
        record = read_training_record(root)
        nn = run_nnunet(data_dir, labels, os.path.join(out, "nnunet", f"labels{budget}"), 900 + i,
                        f"tskd{args.dataset}labels{budget}", epochs, bin_dir)
        ref_row = {**_row(reference), "steps": record.get("steps"), "best_step": record.get("best_step"),
                   "seconds": stage_seconds(root) or round(time.time() - start)}
        nn_rows = {str(e): {**_row(score_nnunet(run["predictions"], nn["test"], names, unit)),
                            **{k: run[k] for k in ("seconds", "trainer", "steps")}} for e, run in nn["runs"].items()}
        results.append({"labels": budget, "seed": args.seed, "reference": ref_row, "nnunet": nn_rows,
                        "nnunet_plan": nn["plan"],
                        "tests": {e: paired_test(row["image_dice"], ref_row["image_dice"]) for e, row in nn_rows.items()}})
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"dataset": args.dataset, "profile": args.profile, "results": results}, f, indent=1)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(_table(results))
        print(_table(results), flush=True)


if __name__ == "__main__":
    main()
