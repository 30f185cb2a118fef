"""Where training stops improving, on the test split: the data behind the profiles' step budgets and stop rule.

    python scripts/bench/convergence.py --dataset demo --models reference,scratch:skip,tskd:skip --labels 5 \
        --cap 750 --out runs/convergence

Each model (``reference``, or ``<method>:<fpn>`` for a student) is trained once on the first ``--labels`` training
images with a long step budget (``--cap``, no early stop), validated every ``epoch_length`` steps as in the grid,
and its weights are kept after every validation (MONAI's ``CheckpointSaver``). Every kept checkpoint is then scored
on the test split, so each model has a curve of validation and test Dice against the steps trained
(``OUT/<model>_labels<N>_seed<S>/curve.json``). The teacher of the distillations is ``--teacher_checkpoint`` or
the quick profile's, trained into ``OUT/teacher_labels<N>``.

From every curve under ``OUT`` the script then replays stop rules (``common.engines.budget.STOP_RULES``): where
each would have stopped, the checkpoint it would have chosen on the validation images, and that checkpoint's test
Dice; ``OUT/stop_rules.md`` / ``.json`` hold the table and ``OUT/curves.png`` the curves. With ``--report_only``
only the replay runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import time

from common.engines.budget import STOP_RULES, replay_stop_rule
from common.errors import install_excepthook
from common.pipeline.bundles import bundle_folder, run_bundle
from common.pipeline.config import RunConfig
from common.pipeline.profiles import PROFILES
from common.pipeline.stages import stage_seconds, student_stages, teacher_stage, train_bundle
from common.provenance import read_json, write_json


@dataclasses.dataclass(frozen=True)
class CappedConfig(RunConfig):
    """The run's settings with the student budget (which the reference shares) raised to ``cap`` steps, without
    early stopping, and a checkpoint kept after every validation in ``snapshots``."""

    cap: int = 750
    snapshots: str = ""
    extra: str = "{}"

    @property
    def profile_settings(self) -> dict:
        profile = dict(PROFILES[self.profile])
        saver = _saver_index(self.dataset)
        profile["student"] = {"steps": self.cap, "patience": 0, f"train#handlers#{saver}": {
            "_target_": "CheckpointSaver", "save_dir": self.snapshots, "save_dict": {"model": "@checkpoint_model"},
            "save_interval": 1, "n_saved": None, "file_prefix": "snapshot"}, **json.loads(self.extra)}
        return profile


def _saver_index(dataset: str) -> int:
    """The slot of the (validation-less) CheckpointSaver in the student's and the reference's train.json, which
    the snapshot saver takes: both bundles read the one student budget, so the slot must be the same."""
    slots = set()
    for stage in ("student", "reference"):
        handlers = read_json(os.path.join(bundle_folder(dataset, stage), "train.json"))["train"]["handlers"]
        slots.add(next((i for i, h in enumerate(handlers) if h.get("_target_") == "CheckpointSaver"), None))
    if len(slots) != 1 or None in slots:
        raise SystemExit(f"{dataset}_student and {dataset}_reference need a CheckpointSaver in the same handler slot")
    return slots.pop()


def train_curve(args, model: str, labels: int, data_dir: str) -> str:
    """Train ``model`` with the long budget, score each kept checkpoint on the test split; returns curve.json."""
    method, _, fpn = model.partition(":")
    name = f"{method}{'_' + fpn if fpn else ''}{'_' + args.tag if args.tag else ''}_labels{labels or 'all'}_seed{args.seed}"
    root = os.path.join(args.out, name)
    snapshots = os.path.join(root, "snapshots")
    config = CappedConfig(dataset=args.dataset, data_dir=data_dir, method="scratch" if method == "reference" else method,
                          profile=args.profile, labels=labels, seed=args.seed, out=root, fpn=fpn or "light",
                          transfer_source="augment", cap=args.cap, snapshots=snapshots,
                          extra=args.overrides, budget_scale=1.0)
    start = time.time()
    if method == "reference":
        base = config.base_overrides(data_dir)
        budget = {**config.profile_settings["student"], "epoch_length": config.profile_settings["epoch_length"]}
        train_bundle(args.dataset, "reference", root, {**base, **budget, "labels": labels})
        stage, evaluate, trained = "reference", base, root
    else:
        teacher = _teacher(args, labels, data_dir)
        result = student_stages(config, data_dir, root, teacher, os.path.join(root, "pretrain"),
                                os.path.join(root, "student"), args.seed)
        stage, evaluate, trained = "student", result["overrides"], os.path.join(root, "student")
    seconds = round(time.time() - start)
    epoch_length = config.profile_settings["epoch_length"]
    history = dict(read_json(os.path.join(trained, "models", "training.json"))["history"])
    curve = []
    for path in sorted(glob.glob(os.path.join(snapshots, "snapshot_*.pt")), key=_epoch):
        step = _epoch(path) * epoch_length
        out = os.path.join(root, "test", str(step))
        if not os.path.exists(os.path.join(out, "metrics.json")):
            run_bundle(args.dataset, stage, ("train", "evaluate"), trained, {**evaluate, "ckpt_path": path, "output_dir": out})
        report = read_json(os.path.join(out, "metrics.json"))
        curve.append({"step": step, "val_dice": history.get(step), "test_dice": report["mean_dice"],
                      "test_hd95": report["mean_hd95"]})
    record = {"model": model + (f" ({args.tag})" if args.tag else ""), "overrides": json.loads(args.overrides),
              "labels": labels, "seed": args.seed, "cap": args.cap, "seconds": seconds,
              "train_seconds": stage_seconds(trained), "pretrain_seconds": stage_seconds(os.path.join(root, "pretrain")),
              "curve": curve}
    write_json(os.path.join(root, "curve.json"), record)
    return os.path.join(root, "curve.json")


def _epoch(path: str) -> int:
    return int(re.findall(r"(\d+)\.pt$", path)[0])


def _teacher(args, labels: int, data_dir: str) -> tuple[str, str]:
    """The distillations' teacher, as the pipeline gets it: ``--teacher_checkpoint``, or trained once into OUT."""
    config = RunConfig(dataset=args.dataset, data_dir=data_dir, profile=args.profile, labels=labels, seed=args.seed,
                       teacher_checkpoint=args.teacher_checkpoint, budget_scale=1.0)
    return teacher_stage(config, data_dir, os.path.join(args.out, f"teacher_labels{labels or 'all'}"))


def replay(out: str) -> dict:
    """Every stop rule replayed on every curve under ``out``: the step it stops at, the step it picks, and the
    picked checkpoint's test Dice; per rule, the means over the curves."""
    curves = [read_json(p) for p in sorted(glob.glob(os.path.join(out, "*", "curve.json")))]
    if not curves:
        raise SystemExit(f"no curve.json under {out}: train some models first")
    rows = {}
    for rule in STOP_RULES:
        picks = []
        for record in curves:
            points = [(c["step"], c["val_dice"]) for c in record["curve"]]
            stop, pick = replay_stop_rule(points, **STOP_RULES[rule])
            test = {c["step"]: c["test_dice"] for c in record["curve"]}
            picks.append({"name": _name(record),
                          "stop": stop, "pick": pick, "test_dice": test[pick]})
        rows[rule] = {"picks": picks, "mean_test_dice": sum(p["test_dice"] for p in picks) / len(picks),
                      "mean_stop": sum(p["stop"] for p in picks) / len(picks)}
    best = {_name(r): max(c["test_dice"] for c in r["curve"]) for r in curves}
    # The level a curve settles at: its test Dice averaged over the last third of the budget (single checkpoints
    # scatter by several hundredths around it).
    level = {_name(r): sum(c["test_dice"] for c in r["curve"][-len(r["curve"]) // 3:]) / (len(r["curve"]) // 3 or 1)
             for r in curves}
    return {"rules": rows, "best_test_dice": best, "last_third_test_dice": level, "curves": curves}


def _name(record: dict) -> str:
    return f"{record['model']} labels {record['labels'] or 'all'} seed {record['seed']}"


def _write_report(out: str, result: dict) -> None:
    names = [p["name"] for p in next(iter(result["rules"].values()))["picks"]]
    head = ["rule", "mean test Dice", "mean steps"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule, row in result["rules"].items():
        lines.append("| " + " | ".join([f"`{rule}`", f"{row['mean_test_dice']:.4f}", f"{row['mean_stop']:.0f}"] + [
            f"{p['test_dice']:.4f} (stop {p['stop']}, pick {p['pick']})" for p in row["picks"]]) + " |")
    lines.append("| best test Dice on the curve (not a rule: it peeks at the test split) | "
                 f"{sum(result['best_test_dice'].values()) / len(names):.4f} | | "
                 + " | ".join(f"{result['best_test_dice'][n]:.4f}" for n in names) + " |")
    lines.append("| test Dice averaged over the last third of the curve (not a rule) | "
                 f"{sum(result['last_third_test_dice'].values()) / len(names):.4f} | | "
                 + " | ".join(f"{result['last_third_test_dice'][n]:.4f}" for n in names) + " |")
    text = ("Stop rules replayed on the curves of `scripts/bench/convergence.py` (validation Dice picks the checkpoint; "
            "the table gives that checkpoint's test Dice, the step the rule stops at and the step it picks).\n\n"
            + "\n".join(lines) + "\n\nRules: " + "; ".join(f"`{k}`: {v}" for k, v in STOP_RULES.items()) + "\n")
    with open(os.path.join(out, "stop_rules.md"), "w") as f:
        f.write(text)
    write_json(os.path.join(out, "stop_rules.json"), {k: v for k, v in result.items() if k != "curves"})
    _plot(out, result["curves"])
    print(text)


def _plot(out: str, curves: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3), squeeze=False, sharey=True)
    for ax, record in zip(axes[0], curves):
        steps = [c["step"] for c in record["curve"]]
        ax.plot(steps, [c["val_dice"] for c in record["curve"]], label="validation")
        ax.plot(steps, [c["test_dice"] for c in record["curve"]], label="test")
        ax.set_title(f"{record['model']}, {record['labels'] or 'all'} labels", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("mean Dice")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    install_excepthook()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data_dir", default="", help="dataset folder with datalist.json (default: the demo in OUT/data)")
    parser.add_argument("--models", default="reference,scratch:skip,tskd:skip",
                        help="reference, or <method>:<fpn> students (method: scratch, tskd, takd, mae, mocov3)")
    parser.add_argument("--labels", default="5", help="label budgets, comma-separated (all: every training image)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cap", type=int, default=750, help="the long step budget every model trains for")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--teacher_checkpoint", default="", help="a trained teacher for the distillations")
    parser.add_argument("--out", default="runs/convergence")
    parser.add_argument("--overrides", default="{}", help='JSON of bundle settings for the fine-tuning and the reference (not the pre-training), e.g. {"amp": true}')
    parser.add_argument("--tag", default="", help="a name for --overrides, in the runs' folders and the tables")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        data_dir = RunConfig(dataset=args.dataset, data_dir=args.data_dir or None).dataset_folder(args.out)
        for labels in [0 if b == "all" else int(b) for b in args.labels.split(",")]:
            for model in args.models.split(","):
                print(f"=== {model}, {labels or 'all'} labels: {json.dumps(train_curve(args, model, labels, data_dir))}",
                      flush=True)
    _write_report(args.out, replay(args.out))


if __name__ == "__main__":
    main()
