"""Does choosing the next image save labels? A simulated annotation loop, with the held-back masks as the
annotator.

Start from the run's label budget (the first ``start`` training images); each round fine-tunes the student from the
run's pre-trained encoder on the labels so far (the same stage as ``/train``), evaluates it on the test split, then
asks a strategy for the next ``add`` images of the unlabelled rest of the training split and "labels" them (their
masks join the datalist). Strategies: ``disagreement`` (1 - Dice between the run's teacher and the student),
``tta`` (the student against itself under flips) and ``random`` (seeded). The teacher stays the run's: re-distilling
every round is out of this simulation's budget. Writes ``OUT/loop.json`` (per strategy and seed: labels used, test
Dice, per-image Dice each round) as it goes, and resumes from it.
"""

from __future__ import annotations

import os
import random
import statistics
from itertools import combinations

import numpy as np

from common.data import load_datalist, read_prediction
from common.labelling.runs import disagreement
from common.pipeline.profiles import HEAD_PRETRAINED, PROFILES, stage_budget
from common.pipeline.stages import evaluate_bundle, infer_bundle, stage_overrides, train_bundle
from common.provenance import read_json, write_json

__all__ = ["simulate", "write_report", "STRATEGIES"]

STRATEGIES = ("disagreement", "tta", "random")


def _flipped_copies(items: list[dict], folder: str, axis: int) -> list[dict]:
    """The pool's images flipped along ``axis`` (NIfTI, same header), for test-time augmentation."""
    import nibabel as nib

    os.makedirs(folder, exist_ok=True)
    copies = []
    for item in items:
        image = nib.load(item["image"])
        path = os.path.join(folder, os.path.basename(item["image"]))
        nib.save(nib.Nifti1Image(np.flip(np.asarray(image.dataobj), axis).copy(), image.affine, image.header), path)
        copies.append({"image": path, "original": item["image"]})
    return copies


class Loop:
    def __init__(self, dataset: str, data_dir: str, run: str, method: str, out: str, overrides: dict,
                 profile: str = "quick") -> None:
        self.dataset, self.data_dir, self.run, self.method, self.out = dataset, data_dir, run, method, out
        self.overrides, self.profile = overrides, profile
        self.datalist = os.path.join(data_dir, "datalist.json")
        self.training = load_datalist(self.datalist, "training")

    def _round_data(self, folder: str, labelled: list[dict]) -> str:
        info = read_json(self.datalist)
        info.update(training=labelled, validation=load_datalist(self.datalist, "validation", allow_empty=True),
                    test=load_datalist(self.datalist, "test"), allow_external_paths=True)
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "datalist.json"), info)
        return folder

    def fine_tune(self, root: str, labelled: list[dict], seed: int) -> tuple[dict, dict]:
        data = self._round_data(os.path.join(root, "data"), labelled)
        overrides = {**self.overrides, "dataset_dir": data, "labels": 0, "seed": seed,
                     **stage_budget(PROFILES[self.profile], "student")}
        encoder = os.path.join(self.run, f"pretrain_{self.method}", "models", "model.pt")
        if os.path.isfile(encoder):
            overrides["encoder_checkpoint"] = encoder
            if self.method not in HEAD_PRETRAINED:
                overrides["init_head"] = False
        train_bundle(self.dataset, "student", os.path.join(root, "student"), overrides)
        evaluation = {k: v for k, v in overrides.items() if k not in ("encoder_checkpoint",)}
        report = evaluate_bundle(self.dataset, "student", os.path.join(root, "student"), evaluation)
        return report, evaluation

    def predict(self, stage: str, root: str, overrides: dict, items: list[dict], folder: str) -> dict:
        infer_bundle(self.dataset, stage, root, {**overrides, "datalist": [{"image": i["image"]} for i in items],
                                                 "output_dir": folder})
        return {item["image"]: read_prediction(folder, item["image"]) for item in items}

    def teacher_predictions(self, pool: list[dict]) -> dict:
        teacher = stage_overrides(os.path.join(self.run, "teacher"))
        overrides = {k: v for k, v in teacher.items() if k in ("dataset_dir", "image_size", "teacher", "sam_checkpoint",
                                                              "lora_rank", "seed")}
        overrides["ckpt_path"] = os.path.join(self.run, "teacher", "models", "model.pt")
        return self.predict("teacher", os.path.join(self.run, "teacher"), overrides, pool,
                            os.path.join(self.out, "teacher_predictions"))

    def scores(self, strategy: str, root: str, overrides: dict, pool: list[dict], teacher: dict) -> dict[str, float]:
        student = self.predict("student", os.path.join(root, "student"), overrides, pool,
                               os.path.join(root, "pool_predictions"))
        if strategy == "disagreement":
            return {i: disagreement(student[i], teacher[i]) for i in student}
        views = [student]
        for axis in (0, 1):
            copies = _flipped_copies(pool, os.path.join(root, f"flip{axis}"), axis)
            flipped = self.predict("student", os.path.join(root, "student"), overrides, copies,
                                   os.path.join(root, f"flip{axis}_predictions"))
            views.append({c["original"]: np.flip(flipped[c["image"]], axis) for c in copies})
        return {i: float(np.mean([disagreement(a[i], b[i]) for a, b in combinations(views, 2)])) for i in student}


def simulate(dataset: str, data_dir: str, run: str, out: str, overrides: dict, method: str = "tskd",
             strategies=STRATEGIES, seeds=(1234,), start: int = 5, add: int = 5, rounds: int = 4,
             profile: str = "quick") -> dict:
    """Run the loop for every strategy and seed (resumable from ``OUT/loop.json``); returns its record."""
    loop = Loop(dataset, data_dir, run, method, out, overrides, profile)
    record_path = os.path.join(out, "loop.json")
    record = read_json(record_path)
    teacher = None
    for seed in seeds:
        for strategy in strategies:
            key = f"{strategy}_seed{seed}"
            done = record.get(key, {"rounds": []})
            labelled = loop.training[:start] if not done["rounds"] else [
                item for item in loop.training if item["image"] in done["rounds"][-1]["labelled"]]
            for r in range(len(done["rounds"]), rounds + 1):
                # Round 0 (the run's own labels) is the same for every strategy of a seed: trained once.
                root = os.path.join(out, f"seed{seed}_round0" if r == 0 else f"{key}_round{r}")
                report, evaluation = loop.fine_tune(root, labelled, seed)
                done["rounds"].append({"labels": len(labelled), "labelled": [i["image"] for i in labelled],
                                       "mean_dice": report["mean_dice"],
                                       "per_image_dice": report.get("per_image", {}).get("dice", [])})
                record[key] = done
                write_json(record_path, record)
                if r == rounds:
                    break
                pool = [item for item in loop.training if item not in labelled]
                if strategy == "random":
                    chosen = random.Random(f"{seed}:{r}").sample(pool, min(add, len(pool)))  # same after a resume
                else:
                    if strategy == "disagreement" and teacher is None:
                        teacher = loop.teacher_predictions(loop.training[start:])
                    scores = loop.scores(strategy, root, evaluation, pool, teacher or {})
                    chosen = sorted(pool, key=lambda i: -scores[i["image"]])[:add]
                labelled = labelled + chosen
    return record


def _labels_to_reach(rounds: list[tuple[int, float]], target: float) -> int | None:
    """The fewest labels at which a strategy's mean test Dice reaches ``target`` (None: never)."""
    return next((labels for labels, dice in rounds if dice >= target), None)


def _plot_picks(record: dict, strategies: list[str], seeds: list[int], path: str) -> None:
    """Which training images each strategy added, round by round: one column per strategy and seed, the images
    in name order (the demo's slices by height)."""
    import matplotlib.pyplot as plt

    runs = [(strategy, seed, record[f"{strategy}_seed{seed}"]["rounds"]) for strategy in strategies for seed in seeds
            if f"{strategy}_seed{seed}" in record]
    names = sorted({os.path.basename(i) for _, _, rounds in runs for r in rounds for i in r["labelled"]})
    row = {name: k for k, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * len(runs), 5))
    colours = plt.get_cmap("viridis")
    for x, (_, _, rounds) in enumerate(runs):
        for r, current in enumerate(rounds):
            before = set(rounds[r - 1]["labelled"]) if r else set()
            added = [row[os.path.basename(i)] for i in current["labelled"] if i not in before]
            ax.scatter([x] * len(added), added, s=18, color=colours(r / max(len(rounds) - 1, 1)),
                       label=("the start" if r == 0 else f"round {r}") if x == 0 else None)
    ax.set_xticks(range(len(runs)), [f"{s}\nseed {seed}" for s, seed, _ in runs], fontsize=7, rotation=45, ha="right")
    step = max(1, len(names) // 12)
    ax.set_yticks(range(0, len(names), step), [n.split(".")[0] for n in names[::step]], fontsize=7)
    ax.set_ylabel("training image (name order)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("images each strategy labelled", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(record: dict, out: str, strategies: list[str], seeds: list[int]) -> None:
    """``OUT/loop.md`` (test Dice per round and strategy, mean ± sd over seeds; the labels each strategy needs to
    reach random's final Dice; each strategy's final round against random by a Wilcoxon signed-rank test over test
    images, seeds averaged per image, Holm-adjusted together), ``OUT/dice_vs_labels.png`` and ``OUT/picks.png``
    (which images each strategy added)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.comparison import compare_methods, image_scores

    lines = ["# Simulated annotation loop", "", f"Seeds {', '.join(map(str, seeds))}; test Dice, mean ± sd over seeds.",
             "", "| strategy | " + " | ".join(f"round {r}" for r in range(len(record[next(iter(record))]["rounds"])))
             + " |", "|---|" + "---|" * len(record[next(iter(record))]["rounds"])]
    finals, curves = {}, {}
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
        curves[strategy] = list(zip(labels, means))
        finals[strategy] = image_scores([r[n - 1]["per_image_dice"] for r in runs])
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test Dice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dice_vs_labels.png"), dpi=120)
    plt.close(fig)
    _plot_picks(record, strategies, seeds, os.path.join(out, "picks.png"))
    if "random" in curves:
        target = curves["random"][-1][1]
        lines += ["", f"Labels to reach random's final mean Dice ({target:.4f} at {curves['random'][-1][0]} "
                  "labels):", ""]
        for strategy, curve in curves.items():
            reached = _labels_to_reach(curve, target)
            lines.append(f"- {strategy}: " + (f"{reached} labels" if reached is not None else
                                              f"not reached in {curve[-1][0]} labels"))
    lines += ["", "Final round against random (Wilcoxon signed-rank over test images, seeds averaged per image; "
              "p Holm-adjusted over these tests):", ""]
    for strategy, t in compare_methods(finals, "random").items():  # random - strategy: the sign is turned
        verdict = ("n too small for any p < 0.05" if t["min_p"] >= 0.05 else
                   "inside the noise" if t["p_holm"] >= 0.05 else "a real difference")
        lines.append(f"- {strategy} vs random: mean difference {-t['mean_diff']:+.4f}, n = {t['n']}, "
                     f"p = {t['p']:.4f}, Holm {t['p_holm']:.4f} ({verdict})")
    with open(os.path.join(out, "loop.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
