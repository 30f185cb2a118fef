"""The comparison: which start gives the best student for this task and label budget.

    python scripts/run_grid.py --dataset demo --methods scratch,mae,mocov3,takd,tskd --labels 5,10,all \\
        --transfer 160 --transfer_source augment --seeds 3 --profile quick --out runs/grid

Every cell (method x label budget x transfer-set size x seed) runs the stages of ``run_pipeline.py`` through
the same bundles. What a cell shares with others is trained once: the teacher per label budget, the transfer
set (and its generator) per label budget and size, the teacher cache and the pre-trained encoder per method,
label budget and size. Seeds vary the fine-tuning (data order, augmentation, and the head's initialisation
except TS-KD's, which its pre-training trains); the teacher and the pre-training use ``--seed``. A DynUNet trained with
nnU-Net's 2D recipe (the ``<dataset>_reference`` bundle) on the same labels with the student's step budget is the
reference row.

A finished cell is recorded in ``OUT/cells/`` and skipped when the grid is run again (after a crash or
Ctrl-C the grid continues where it stopped); a failed cell is recorded with its error and the grid goes on.
Before the cells, the teacher diagnostics: teachers with each ``--lora_ranks`` rank (0: the untuned
foundation model, its decoder trained) at the largest label budget, their test Dice and the mutual
information I(T;Y) between their predicted classes and the labels of the labelled images.

Writes ``OUT/results.csv`` (one row per cell and seed), ``OUT/tables.md`` (mean ± sd over seeds, best student
marked, TS-KD against every other method by a Wilcoxon signed-rank test over test images (seeds averaged per
image, Holm-adjusted within a table), the
teacher checks and diagnostics, each method's pre-training time, the student's and the reference's GFLOP),
``OUT/dice_vs_labels.png``, ``OUT/dice_vs_transfer.png`` (with more than one ``--transfer``),
``OUT/qualitative.png``, and an MLflow run per cell (``OUT/mlruns.db``, a local store, unless
``--tracking none``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # the main job's stages, shared with every cell

from common.comparison import (METHOD_NAMES, REFERENCE, TEACHER, compare_methods, image_scores,  # noqa: E402
                               mutual_information, plot_dice_vs_labels, plot_dice_vs_transfer, read_results, write_results,
                               write_tables)
from common.data import load_datalist, validation_items
from common.data.datalists import class_names  # noqa: E402
from common.data.figures import save_prediction_grid  # noqa: E402
from common.errors import TskdError, first_line, install_excepthook  # noqa: E402
import run_pipeline as rp  # noqa: E402


PRETRAINED = ("mae", "mocov3", "takd", "tskd")  # methods that pre-train on a transfer set


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data_dir", default=None, help="folder with datalist.json (default: the demo in OUT/data)")
    parser.add_argument("--methods", default="scratch,mae,mocov3,takd,tskd",
                        help=f"comma-separated, of {', '.join(rp.METHODS)}")
    parser.add_argument("--labels", default="5,10,all", help="label budgets (numbers of labelled images, or all)")
    parser.add_argument("--transfer", default="", help="transfer-set sizes (default: the profile's)")
    parser.add_argument("--transfer_source", choices=["synth", "augment", "unlabelled"], default=None,
                        help="as run_pipeline.py (default: the profile's)")
    parser.add_argument("--unlabelled_dir", default="")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per cell: --seed, --seed+1, ...")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--profile", choices=sorted(rp.PROFILES), default="quick")
    parser.add_argument("--no_reference", action="store_true", help="leave out the DynUNet reference row")
    parser.add_argument("--lora_ranks", default="",
                        help="teacher diagnostics: LoRA ranks to train and measure at the largest label budget "
                             "(0: untuned foundation model; default: 0 and the bundle's rank; 'none': skip)")
    parser.add_argument("--teacher", default="litemedsam")
    parser.add_argument("--sam_checkpoint", default="")
    parser.add_argument("--imagenet_mae_checkpoint", default="")
    parser.add_argument("--num_heads", type=int, default=0)
    parser.add_argument("--imagenet_mae_pos_embed", action="store_true", help="as run_pipeline.py")
    parser.add_argument("--val_labels", type=int, default=None,
                        help="validation masks every cell uses (default: the whole validation split; 0: none)")
    parser.add_argument("--fpn", default="light")
    parser.add_argument("--image_size", type=int, default=0)
    parser.add_argument("--denoiser", choices=["unet", "swin"], default="unet")
    parser.add_argument("--tracking", choices=["mlflow", "none"], default="mlflow")
    parser.add_argument("--qualitative", type=int, default=4, help="test images in qualitative.png (0: none)")
    parser.add_argument("--report_only", action="store_true", help="rewrite the tables and plots from OUT/cells")
    parser.add_argument("--out", default="runs/grid")
    return parser.parse_args(argv)


def _budgets(text: str) -> list[str]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) > 0:
            out.append(str(int(part)))
        else:
            raise TskdError(f"--labels: '{part}' is neither a positive number of images nor 'all'.")
    return out


def cell_args(grid, method: str, labels: str, transfer: int):
    """The run_pipeline arguments of one cell (teacher, transfer set and pre-training use ``--seed``)."""
    args = argparse.Namespace(
        dataset=grid.dataset, data_dir=grid.data_dir, method=method, profile=grid.profile, transfer=transfer,
        transfer_source=grid.transfer_source, unlabelled_dir=grid.unlabelled_dir, denoiser=grid.denoiser,
        labels=0 if labels == "all" else int(labels), teacher=grid.teacher, sam_checkpoint=grid.sam_checkpoint,
        teacher_checkpoint="", fpn=grid.fpn, imagenet_mae_checkpoint=grid.imagenet_mae_checkpoint,
        num_heads=grid.num_heads if method in ("imagenet_mae", "scratch") else 0, seed=grid.seed,
        image_size=grid.image_size, val_labels=grid.val_labels, imagenet_mae_pos_embed=grid.imagenet_mae_pos_embed,
        out=grid.out)
    return args


def cell_id(method: str, labels: str, transfer: int, seed: int) -> str:
    return f"{method}_labels{labels}" + (f"_transfer{transfer}" if transfer else "") + f"_seed{seed}"


class Grid:
    def __init__(self, args) -> None:
        self.args = args
        self.out = rp.check_output(args.out)
        self.cells_dir = os.path.join(self.out, "cells")
        os.makedirs(self.cells_dir, exist_ok=True)
        args.out = self.out
        self.data_dir = rp.dataset_folder(args, self.out)
        args.data_dir = self.data_dir
        self.datalist = os.path.join(self.data_dir, "datalist.json")
        self.profile = rp.PROFILES[args.profile]
        if args.transfer_source is None:
            args.transfer_source = self.profile["transfer_source"]
        self.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in self.methods:
            if m not in rp.METHODS:
                raise TskdError(f"--methods: unknown method '{m}' (choose from {', '.join(rp.METHODS)}).")
        self.budgets = _budgets(args.labels)
        self.transfers = [int(t) for t in args.transfer.split(",") if t.strip()] or [self.profile["transfer"]]
        self.seeds = [args.seed + i for i in range(args.seeds)]
        self.n_train = len(load_datalist(self.datalist, "training"))
        self.val_n = len(validation_items(self.datalist, args.val_labels))
        if any(m in PRETRAINED for m in self.methods):
            rp.check_unlabelled(args, self.data_dir)
        for labels in self.budgets:
            if labels != "all" and int(labels) > self.n_train:
                raise TskdError(f"--labels {labels}: the training split of {self.datalist} has {self.n_train} images.")
        self._check_settings()
        self.teachers: dict[str, tuple[str, str, str]] = {}
        self.notes: list[str] = []
        self.tracking = None
        if args.tracking == "mlflow" and not args.report_only:
            import mlflow

            # A local store under OUT (SQLite, as the bundles' ``--tracking mlflow``; MLflow 3 refuses new
            # plain-folder stores), artefacts beside it.
            mlflow.set_tracking_uri("sqlite:///" + os.path.join(self.out, "mlruns.db"))
            name = f"tskd-grid-{args.dataset}"
            if mlflow.get_experiment_by_name(name) is None:
                mlflow.create_experiment(name, artifact_location="file://" + os.path.join(self.out, "mlartifacts"))
            mlflow.set_experiment(name)
            self.tracking = mlflow

    # Settings every cell depends on: a grid folder holds one value of each (methods, budgets, sizes and
    # seeds may be extended between runs).
    FIXED = ("dataset", "profile", "transfer_source", "unlabelled_dir", "seed", "image_size", "fpn", "teacher",
             "sam_checkpoint", "denoiser", "val_labels", "imagenet_mae_pos_embed")

    def _check_settings(self) -> None:
        path = os.path.join(self.out, "grid.json")
        mine = {k: getattr(self.args, k) for k in self.FIXED}
        saved = rp._read_json(path)
        differ = [f"--{k} {saved[k]!r} there, {mine[k]!r} now" for k in self.FIXED if k in saved and saved[k] != mine[k]]
        if differ:
            raise TskdError(f"'{self.out}' holds a grid run with other settings ({'; '.join(differ)}); its finished "
                            "cells would be mixed with these. Choose another --out.")
        if not saved and not self.args.report_only:
            with open(path, "w") as f:
                json.dump(mine, f, indent=1)

    # --- records -------------------------------------------------------------------------------------
    def _record_path(self, name: str) -> str:
        return os.path.join(self.cells_dir, f"{name}.json")

    def _record(self, name: str) -> dict:
        return rp._read_json(self._record_path(name))

    def _save(self, name: str, record: dict) -> None:
        tmp = self._record_path(name) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, self._record_path(name))  # a crash never leaves half a record

    def _row(self, method, labels, transfer, seed, report=None, status="done", error="", **extra) -> dict:
        row = {"method": method, "labels": labels, "labels_n": self.n_train if labels == "all" else int(labels),
               "transfer": transfer or "", "transfer_source": self.args.transfer_source if transfer else "",
               "seed": seed, "status": status, "error": error, **extra}
        if report:
            row.update(mean_dice=report["mean_dice"], mean_hd95=report["mean_hd95"], mean_iou=report["mean_iou"],
                       hd95_unit=report.get("hd95_unit", ""))
            for c, values in report["per_class"].items():
                row.update({f"{k}_{c}": values.get(k) for k in ("dice", "hd95", "iou")})
        return row

    def _class_scores(self, record: dict) -> list:
        """A cell's per-image, per-class test Dice (``None`` where prediction and ground truth both lack the
        class), from its record or, for records written before they kept it, from its evaluation."""
        if "per_image_class_dice" in record:
            return record["per_image_class_dice"]
        row = record["row"]
        root = row.get("root") or os.path.join(self.out, "teacher", f"labels{row['labels']}")
        return rp._read_json(os.path.join(root, "eval", "metrics.json")).get("per_image", {}).get("dice", [])

    def _log(self, name: str, row: dict, report: dict | None, artefacts: list[str]) -> None:
        if not self.tracking or row["status"] != "done":
            return
        mlflow = self.tracking
        with mlflow.start_run(run_name=name):
            mlflow.set_tags({k: str(row[k]) for k in ("method", "labels", "transfer", "seed", "transfer_source")})
            mlflow.log_params({"profile": self.args.profile, "dataset": self.args.dataset, "fpn": self.args.fpn,
                               "teacher": self.args.teacher, **{k: row[k] for k in ("method", "labels", "transfer",
                                                                                   "seed", "transfer_source")}})
            metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("seed", "labels_n", "transfer") and not math.isnan(float(v))}
            mlflow.log_metrics(metrics)
            for path in artefacts:
                if os.path.isfile(path):
                    mlflow.log_artifact(path)

    def _run_cell(self, name: str, method: str, labels: str, transfer: int, seed: int, work) -> dict:
        """Run ``work() -> (report, extra, artefacts)`` once: a finished record is reused, a failure recorded."""
        record = self._record(name)
        if record.get("row", {}).get("status") in ("done", "skipped"):
            print(f"--- {name}: done before, skipping", flush=True)
            return record
        print(f"\n##### cell {name}", flush=True)
        start = time.time()
        try:
            report, extra, artefacts = work()
            row = self._row(method, labels, transfer, seed, report, seconds=round(time.time() - start), **extra)
            record = {"row": row, "per_image_class_dice": report.get("per_image", {}).get("dice", [])}
            self._log(name, row, report, artefacts)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as e:  # a failed stage exits with its command; the grid goes on
            message = _failure(e)
            print(f"!!! cell {name} failed: {message}", flush=True)
            if not isinstance(e, (TskdError, SystemExit)):
                traceback.print_exc()
            record = {"row": self._row(method, labels, transfer, seed, status="failed", error=message)}
        self._save(name, record)
        return record

    # --- stages --------------------------------------------------------------------------------------
    def teacher(self, labels: str, lora_rank: int | None = None) -> tuple[str, str, str]:
        key = f"{labels}:{lora_rank}"
        if key not in self.teachers:
            args = cell_args(self.args, "tskd", labels, 0)
            root = os.path.join(self.out, "teacher", f"labels{labels}" + ("" if lora_rank is None else f"_rank{lora_rank}"))
            ckpt, stamp = rp.teacher_stage(args, self.data_dir, root, self.profile, lora_rank=lora_rank)
            self.teachers[key] = (ckpt, stamp, root)
        return self.teachers[key]

    def _teacher_overrides(self, labels: str, ckpt: str, lora_rank: int | None = None) -> dict:
        """What evaluates and infers with the teacher of a label budget."""
        args = cell_args(self.args, "tskd", labels, 0)
        return {**rp.base_overrides(args, self.data_dir), **rp.foundation_overrides(args), "ckpt_path": ckpt,
                **({} if lora_rank is None else {"lora_rank": lora_rank})}

    def _teacher_eval(self, labels: str, root: str, ckpt: str, lora_rank: int | None = None) -> dict:
        overrides = self._teacher_overrides(labels, ckpt, lora_rank)
        return rp.evaluate_bundle(self.args.dataset, "teacher", root, overrides), overrides

    def teacher_cell(self, labels: str) -> dict:
        def work():
            ckpt, _, root = self.teacher(labels)
            report, _ = self._teacher_eval(labels, root, ckpt)
            return report, {"root": root}, [os.path.join(root, "eval", "metrics.json")]
        return self._run_cell(f"teacher_labels{labels}", TEACHER, labels, 0, self.args.seed, work)

    def student_cell(self, method: str, labels: str, transfer: int, seed: int) -> dict:
        name = cell_id(method, labels, transfer, seed)
        if method == "imagenet_mae" and not self.args.imagenet_mae_checkpoint:
            record = {"row": self._row(method, labels, transfer, seed, status="skipped",
                                       error="no --imagenet_mae_checkpoint given. " + rp.MAE_LITE_HINT)}
            self._save(name, record)
            return record

        def work():
            args = cell_args(self.args, method, labels, transfer)
            rp.check_args(args)
            teacher = self.teacher(labels)[:2] if method in ("tskd", "takd") else ("", "")
            tag = f"{method}_labels{labels}" + (f"_transfer{transfer}" if transfer else "")
            transfer_out = os.path.join(self.out, "transfer", f"labels{labels}")
            student_root = os.path.join(self.out, "students", f"{tag}_seed{seed}")
            result = rp.student_stages(args, self.data_dir, transfer_out, self.profile, teacher,
                                       os.path.join(self.out, "pretrain", tag), student_root, student_seed=seed)
            report = rp.evaluate_bundle(self.args.dataset, "student", student_root, result["overrides"])
            extra = {"pretrain_seconds": result["pretrain_seconds"],
                     "train_seconds": rp._read_json(os.path.join(student_root, "done.json")).get("seconds", 0),
                     "root": student_root}
            return report, extra, [os.path.join(student_root, "eval", "metrics.json")]
        return self._run_cell(name, method, labels, transfer, seed, work)

    def reference_cell(self, labels: str, seed: int) -> dict:
        def work():
            args = cell_args(self.args, "scratch", labels, 0)
            root = os.path.join(self.out, "reference", f"labels{labels}_seed{seed}")
            base = {**rp.base_overrides(args, self.data_dir), "seed": seed}
            rp.train_bundle(self.args.dataset, "reference", root,
                            {**base, **rp.stage_budget(self.profile, "student"), "labels": args.labels})
            report = rp.evaluate_bundle(self.args.dataset, "reference", root, base)
            extra = {"train_seconds": rp._read_json(os.path.join(root, "done.json")).get("seconds", 0), "root": root}
            return report, extra, [os.path.join(root, "eval", "metrics.json")]
        return self._run_cell(f"{REFERENCE}_labels{labels}_seed{seed}", REFERENCE, labels, 0, seed, work)

    def diagnostics(self) -> list[dict]:
        """Teachers of each ``--lora_ranks`` rank at the largest budget: test Dice and I(T;Y) on the labelled
        images (the untuned foundation model, rank 0, against the task-specific LoRA teacher)."""
        text = self.args.lora_ranks.strip().lower()
        if text == "none":
            return []
        bundle_rank = self._bundle_value("teacher", "lora_rank")
        ranks = [int(r) for r in text.split(",") if r.strip()] if text else [0, bundle_rank]
        labels = max(self.budgets, key=lambda b: math.inf if b == "all" else int(b))
        rows = []
        for rank in ranks:
            name = f"teacher_rank{rank}_labels{labels}"
            record = self._record(name)
            if record.get("status") != "done":
                print(f"\n##### teacher diagnostics: LoRA rank {rank} ({'untuned, decoder trained' if rank == 0 else 'LoRA'})",
                      flush=True)
                try:
                    ckpt, _, root = self.teacher(labels, None if rank == bundle_rank else rank)
                    report, overrides = self._teacher_eval(labels, root, ckpt, None if rank == bundle_rank else rank)
                    info = self._teacher_information(labels, root, overrides)
                    record = {"status": "done", "rank": rank, "labels": labels, "mean_dice": report["mean_dice"],
                              "mean_hd95": report["mean_hd95"], "hd95_unit": report.get("hd95_unit", ""), **info,
                              "val_dice": rp.read_training_record(root).get("best_metric")}
                except KeyboardInterrupt:
                    raise
                except (Exception, SystemExit) as e:
                    message = _failure(e)
                    print(f"!!! teacher diagnostics rank {rank} failed: {message}", flush=True)
                    record = {"status": "failed", "rank": rank, "labels": labels, "error": message}
                self._save(name, record)
            rows.append(record)
        return rows

    def _teacher_information(self, labels: str, root: str, overrides: dict) -> dict:
        """I(T;Y) over the pixels of the labelled training images (those the teacher was trained on)."""
        import nibabel as nib
        import numpy as np

        limit = None if labels == "all" else int(labels)
        items = load_datalist(self.datalist, "training", limit=limit)
        folder = os.path.join(root, "eval", "train_predictions")
        datalist = ("$[{'image': d['image']} for d in common.data.load_datalist("
                    f"{self.datalist!r}, 'training', limit={limit!r})]")
        rp._call(["--config_file", os.path.join(rp._bundle(self.args.dataset, "teacher"), "inference.json"),
                  *rp._args({**overrides, "datalist": datalist, "output_dir": folder}, root)])
        num_classes = len(class_names(self.datalist))
        preds, labels_ = [], []
        for item in items:
            stem = os.path.basename(item["image"]).split(".")[0]
            preds.append(np.squeeze(np.asarray(nib.load(os.path.join(folder, f"{stem}_seg.nii.gz")).dataobj)))
            labels_.append(np.squeeze(np.asarray(nib.load(item["label"]).dataobj)))
        return mutual_information(np.concatenate([p.ravel() for p in preds]),
                                  np.concatenate([y.ravel() for y in labels_]), num_classes)

    def _bundle_value(self, stage: str, key: str):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(os.path.join(rp._bundle(self.args.dataset, stage), "train.json"))
        parser["dataset_dir"] = self.data_dir
        if self.args.image_size and key != "image_size":
            parser["image_size"] = self.args.image_size
        return parser.get_parsed_content(key)

    # --- the grid ------------------------------------------------------------------------------------
    def run(self) -> None:
        diagnostics = self.diagnostics()
        # Seeds outermost: a grid stopped part-way has whole tables for its first seeds.
        for seed in self.seeds:
            for labels in self.budgets:
                self.teacher_cell(labels)
                if not self.args.no_reference:
                    self.reference_cell(labels, seed)
                for method in self.methods:
                    for transfer in (self.transfers if method in PRETRAINED else [0]):
                        self.student_cell(method, labels, transfer, seed)
        self.report(diagnostics)
        if self.args.qualitative:
            self.qualitative()

    def records(self) -> list[dict]:
        return [rp._read_json(os.path.join(self.cells_dir, f)) for f in sorted(os.listdir(self.cells_dir))
                if f.endswith(".json")]

    def report(self, diagnostics: list[dict] | None = None) -> None:
        records = [r for r in self.records() if "row" in r]
        rows = [r["row"] for r in records]
        if diagnostics is None:
            diagnostics = [r for r in self.records() if "rank" in r]
        classes = class_names(self.datalist)[1:]
        write_results(rows, os.path.join(self.out, "results.csv"), classes)
        rows = read_results(os.path.join(self.out, "results.csv"))  # the table is written from the file
        per_seed: dict[tuple, list] = {}
        for r in records:
            if r["row"]["status"] == "done":
                key = (r["row"]["method"], r["row"]["labels"], str(r["row"]["transfer"]))
                per_seed.setdefault(key, []).append(self._class_scores(r))
        tests = {}
        for labels in self.budgets:
            for transfer in self.transfers:
                scores = {}
                for method in [TEACHER, REFERENCE, *self.methods]:
                    found = per_seed.get((method, labels, str(transfer) if method in PRETRAINED else ""), [])
                    if found and all(found):
                        scores[method] = image_scores(found)
                tests[(labels, str(transfer))] = compare_methods(scores, "tskd")
        n_test = len(load_datalist(self.datalist, "test"))
        header = [f"# tskd comparison grid: {self.args.dataset}, {self.args.profile} profile", "",
                  f"Written by `scripts/run_grid.py` from `results.csv` ({len(rows)} rows). Test split: {n_test} images. "
                  f"Every row also used {self.val_n} validation masks (checkpoint selection and early stopping), "
                  f"counted in each title. Seeds {', '.join(map(str, self.seeds))} vary the fine-tuning (data order, "
                  "augmentation, and the head's initialisation, except TS-KD's head, which its pre-training trains); "
                  "the teacher and the pre-training use the first. Transfer sets: "
                  f"{self.args.transfer_source}. Mean ± sd over seeds; the best student per column in **bold** "
                  "(the teacher and the DynUNet reference are not marked). TS-KD is compared with every other "
                  "row by a Wilcoxon signed-rank test on per-image mean Dice (a class absent from both prediction and "
                  f"ground truth counts as agreement), each method's seeds averaged per image, so n is at most "
                  f"{n_test} test images; the p-values of one table are Holm-adjusted together."]
        failed = [r for r in rows if r["status"] != "done"]
        if failed:
            header += ["", "Cells not in the tables:"] + [f"- {r['method']}, {r['labels']} labels, seed {r['seed']}: "
                                                           f"{r['status']} ({r['error']})" for r in failed]
        footer = self._footer(rows, diagnostics)
        write_tables(rows, os.path.join(self.out, "tables.md"), classes, tests=tests, header=header, footer=footer,
                     val_labels=self.val_n)
        transfer = str(self.transfers[0])
        plot_dice_vs_labels(rows, os.path.join(self.out, "dice_vs_labels.png"), transfer,
                            f"{self.args.dataset}: Dice against labels (transfer {transfer}, "
                            f"{self.args.transfer_source}; bars: sd over seeds)")
        if len(self.transfers) > 1:
            for labels in self.budgets[:1]:
                plot_dice_vs_transfer(rows, os.path.join(self.out, "dice_vs_transfer.png"), labels)
        print(f"written: {self.out}/results.csv, {self.out}/tables.md, {self.out}/dice_vs_labels.png", flush=True)

    def _footer(self, rows: list[dict], diagnostics: list[dict]) -> list[str]:
        lines = ["## Teacher checks (best validation Dice, before distilling)", ""]
        for labels in self.budgets:
            teacher_root = os.path.join(self.out, "teacher", f"labels{labels}")
            students = {m: os.path.join(self.out, "students", cell_id(m, labels, 0 if m not in PRETRAINED else
                                                                          self.transfers[0], self.args.seed))
                        for m in ("scratch", "tskd") if m in self.methods}
            check = rp.teacher_check(teacher_root, students)
            lines += [f"{labels} labels:", *(f"- {line}" for line in check or ["no record"]), ""]
        if diagnostics:
            unit = next((d.get("hd95_unit") for d in diagnostics if d.get("hd95_unit")), "")
            lines += ["## Teacher diagnostics (largest label budget)", "",
                      "I(T;Y): mutual information between the teacher's predicted classes and the labels over the "
                      "pixels of the labelled training images, in bits (at most H(Y)). Rank 0 is the untuned "
                      "foundation model with its mask decoder trained; the others add LoRA on q and v.", "",
                      f"| LoRA rank | test Dice | test HD95 ({unit}) | best validation Dice | I(T;Y) bits | H(Y) bits |",
                      "|---|---|---|---|---|---|"]
            for d in diagnostics:
                if d.get("status") != "done":
                    lines.append(f"| {d['rank']} | failed: {d.get('error', '')} | | | | |")
                    continue
                val = "—" if d.get("val_dice") is None else f"{d['val_dice']:.4f}"
                lines.append(f"| {d['rank']}{' (untuned)' if d['rank'] == 0 else ''} | {d['mean_dice']:.4f} | "
                             f"{d['mean_hd95']:.2f} | {val} | {d['mi_bits']:.4f} | {d['label_entropy_bits']:.4f} |")
            lines.append("")
        lines += self._transfer_lines()
        times = {}
        for r in rows:
            if r["status"] == "done" and r["method"] in PRETRAINED and r.get("pretrain_seconds") not in ("", None):
                times.setdefault(r["method"], {})[(r["labels"], r["transfer"])] = float(r["pretrain_seconds"])
        if times:
            lines += ["## Pre-training wall time (this machine; once per label budget and transfer size)", "",
                      "| method | mean seconds | runs |", "|---|---|---|"]
            for m, values in times.items():
                lines.append(f"| {METHOD_NAMES.get(m, m)} | {sum(values.values()) / len(values):.0f} | {len(values)} |")
            lines.append("")
        lines += self._flops()
        return lines

    def _transfer_lines(self) -> list[str]:
        """What each transfer set is (source, size, a synthetic set's quality), from the pre-training records."""
        lines = []
        for labels in self.budgets:
            for transfer in self.transfers:
                for method in [m for m in self.methods if m in PRETRAINED]:
                    done = rp._read_json(os.path.join(self.out, "pretrain", f"{method}_labels{labels}_transfer{transfer}",
                                                      "done.json"))
                    if done.get("overrides", {}).get("transfer_file"):
                        folder = os.path.dirname(done["overrides"]["transfer_file"])
                        report = rp.transfer_report(self.args.transfer_source, folder)
                        lines += [f"{labels} labels, transfer {transfer}:", *(f"- {line}" for line in report), ""]
                        break
        return ["## Transfer sets", "", *lines] if lines else []

    def _flops(self) -> list[str]:
        import torch

        from common.models import build_dynunet, build_vit_fpn, count_gflop

        size = self.args.image_size or int(self._bundle_value("student", "image_size"))
        channels = int(self._bundle_value("student", "in_channels"))
        classes = len(class_names(self.datalist))
        x = torch.zeros(1, channels, size, size)
        student = count_gflop(build_vit_fpn(size, channels, classes, fpn=self.args.fpn).eval(), x)
        reference = count_gflop(build_dynunet(size, channels, classes).eval(), x)
        return ["## Inference cost per image", "", f"At {size}² with {channels} channel(s): the student (ViT-Tiny + "
                f"{self.args.fpn} FPN) {student:.2f} GFLOP, the DynUNet reference {reference:.2f} GFLOP "
                f"({reference / student:.1f}x the student), counted by torch.utils.flop_counter.", ""]

    def qualitative(self) -> None:
        """The same test images segmented by the teacher, the reference and every method (smallest label
        budget, first seed, first transfer size)."""
        labels, seed, transfer = self.budgets[0], self.args.seed, self.transfers[0]
        columns = {}
        teacher = self._record(f"teacher_labels{labels}").get("row", {})
        if teacher.get("status") == "done":
            ckpt, _, root = self.teacher(labels)
            columns[METHOD_NAMES[TEACHER]] = rp.infer_bundle(self.args.dataset, "teacher", root,
                                                             self._teacher_overrides(labels, ckpt))
        names = [(REFERENCE, f"{REFERENCE}_labels{labels}_seed{seed}", "reference")]
        names += [(m, cell_id(m, labels, transfer if m in PRETRAINED else 0, seed), "student") for m in self.methods]
        for method, name, stage in names:
            row = self._record(name).get("row", {})
            if row.get("status") != "done":
                continue
            overrides = {**rp.base_overrides(cell_args(self.args, method, labels, 0), self.data_dir), "seed": seed}
            if stage == "student":
                overrides["fpn"] = self.args.fpn
                if method in ("imagenet_mae", "scratch") and self.args.num_heads:
                    overrides["num_heads"] = self.args.num_heads
            columns[METHOD_NAMES.get(method, method)] = rp.infer_bundle(self.args.dataset, stage, row["root"], overrides)
        if columns:
            path = save_prediction_grid(self.datalist, columns, os.path.join(self.out, "qualitative.png"),
                                        n=self.args.qualitative)
            print(f"written: {path} ({labels} labels, seed {seed})", flush=True)


def _failure(e: BaseException) -> str:
    """One line for a failed cell: a TskdError's message, the exit message of a failed stage, or the error."""
    return e.message if isinstance(e, TskdError) else first_line(e) if str(e) else type(e).__name__


def main(argv=None) -> None:
    args = parse_args(argv)
    install_excepthook()
    try:
        grid = Grid(copy.copy(args))
        if args.report_only:
            grid.report()
        else:
            grid.run()
    except TskdError as e:
        sys.exit(f"run_grid: {e.message}")


if __name__ == "__main__":
    main()
