"""The grid's cells: the teacher per label budget, the DynUNet reference and every student method, each a
short function over the shared stages (``common.pipeline.stages``), and the teacher diagnostics."""

from __future__ import annotations

import dataclasses
import math
import os

from common.comparison import REFERENCE, TEACHER, mutual_information
from common.data import load_datalist, validation_items
from common.data.datalists import class_names
from common.errors import TskdError
from common.pipeline.bundles import bundle_properties
from common.pipeline.grid.records import CellRecords, failure, mlflow_store
from common.pipeline.grid.spec import GridSpec, cell_id, label_budgets
from common.pipeline.profiles import PRETRAINED, PROFILES, stage_budget
from common.pipeline.stages import (evaluate_bundle, infer_bundle, stage_seconds, student_overrides, student_stages,
                                    teacher_stage, train_bundle)
from common.engines import read_training_record
from common.provenance import check_writable, read_json, write_json

__all__ = ["Grid"]


class Grid:
    """One grid folder: its settings (checked against what the folder already holds), data and cell records."""

    def __init__(self, spec: GridSpec) -> None:
        spec = dataclasses.replace(spec)
        self.out = spec.out = check_writable(spec.out)
        self.profile = PROFILES[spec.profile]
        if spec.transfer_source is None:
            spec.transfer_source = self.profile["transfer_source"]
        self.spec = spec
        self.methods = spec.method_list()
        self.budgets = label_budgets(spec.labels)
        self.transfers = [int(t) for t in spec.transfer.split(",") if t.strip()] or [self.profile["transfer"]]
        self.seeds = [spec.seed + i for i in range(spec.seeds)]

    def prepare(self) -> None:
        """The dataset (the demo is made under OUT/data), the checks of every cell's settings, the records."""
        spec = self.spec
        first = spec.cell_config(self.methods[0] if self.methods else "scratch", self.budgets[0], 0)
        spec.data_dir = self.data_dir = first.dataset_folder(self.out)
        self.datalist = os.path.join(self.data_dir, "datalist.json")
        self.n_train = len(load_datalist(self.datalist, "training"))
        self.val_n = len(validation_items(self.datalist, spec.val_labels))
        for labels in self.budgets:
            if labels != "all" and int(labels) > self.n_train:
                raise TskdError(f"--labels {labels}: the training split of {self.datalist} has {self.n_train} images.")
        if any(m in PRETRAINED for m in self.methods):
            spec.cell_config("tskd", self.budgets[0], self.transfers[0]).dataset_folder(self.out)
        self._check_settings()
        tracking = mlflow_store(self.out, spec.dataset) if spec.tracking == "mlflow" and not spec.report_only else None
        self.records = CellRecords(self.out, self.n_train, spec.transfer_source, tracking,
                                   {"profile": spec.profile, "dataset": spec.dataset, "fpn": spec.fpn,
                                    "teacher": spec.teacher})
        self.teachers: dict[str, tuple[str, str, str]] = {}

    def _check_settings(self) -> None:
        path = os.path.join(self.out, "grid.json")
        mine, saved = self.spec.fixed(), read_json(os.path.join(self.out, "grid.json"))
        differ = [f"--{k} {saved[k]!r} there, {mine[k]!r} now" for k in mine if k in saved and saved[k] != mine[k]]
        if differ:
            raise TskdError(f"'{self.out}' holds a grid run with other settings ({'; '.join(differ)}); its finished "
                            "cells would be mixed with these. Choose another --out.")
        if not saved and not self.spec.report_only:
            write_json(path, mine)

    # --- shared stages ---------------------------------------------------------------------------------------
    def teacher(self, labels: str, lora_rank: int | None = None) -> tuple[str, str, str]:
        key = f"{labels}:{lora_rank}"
        if key not in self.teachers:
            config = self.spec.cell_config("tskd", labels, 0)
            root = os.path.join(self.out, "teacher", f"labels{labels}" + ("" if lora_rank is None else f"_rank{lora_rank}"))
            ckpt, stamp = teacher_stage(config, self.data_dir, root, lora_rank=lora_rank,
                                        isolate=self.spec.isolate_stages)
            self.teachers[key] = (ckpt, stamp, root)
        return self.teachers[key]

    def teacher_overrides(self, labels: str, ckpt: str, lora_rank: int | None = None) -> dict:
        """What evaluates and infers with the teacher of a label budget."""
        config = self.spec.cell_config("tskd", labels, 0)
        return {**config.base_overrides(self.data_dir), **config.foundation_overrides(), "ckpt_path": ckpt,
                **({} if lora_rank is None else {"lora_rank": lora_rank})}

    def evaluate(self, stage: str, root: str, overrides: dict) -> dict:
        return evaluate_bundle(self.spec.dataset, stage, root, overrides, isolate=self.spec.isolate_stages)

    def infer(self, stage: str, root: str, overrides: dict) -> str:
        return infer_bundle(self.spec.dataset, stage, root, overrides, isolate=self.spec.isolate_stages)

    # --- cells -----------------------------------------------------------------------------------------------
    def teacher_cell(self, labels: str) -> dict:
        def work():
            ckpt, _, root = self.teacher(labels)
            report = self.evaluate("teacher", root, self.teacher_overrides(labels, ckpt))
            return report, {"root": root}, [os.path.join(root, "eval", "metrics.json")]
        return self.records.run(f"teacher_labels{labels}", TEACHER, labels, 0, self.spec.seed, work)

    def student_cell(self, method: str, labels: str, transfer: int, seed: int) -> dict:
        name = cell_id(method, labels, transfer, seed)
        if method == "imagenet_mae" and not self.spec.imagenet_mae_checkpoint:
            from common.pipeline.config import MAE_LITE_HINT

            record = {"row": self.records.row(method, labels, transfer, seed, status="skipped",
                                              error="no --imagenet_mae_checkpoint given. " + MAE_LITE_HINT)}
            self.records.save(name, record)
            return record

        def work():
            config = self.spec.cell_config(method, labels, transfer).checked()
            teacher = self.teacher(labels)[:2] if method in ("tskd", "takd") else ("", "")
            tag = f"{method}_labels{labels}" + (f"_transfer{transfer}" if transfer else "")
            student_root = os.path.join(self.out, "students", f"{tag}_seed{seed}")
            result = student_stages(config, self.data_dir, os.path.join(self.out, "transfer", f"labels{labels}"),
                                    teacher, os.path.join(self.out, "pretrain", tag), student_root, student_seed=seed,
                                    isolate=self.spec.isolate_stages)
            report = self.evaluate("student", student_root, result["overrides"])
            extra = {"pretrain_seconds": result["pretrain_seconds"], "train_seconds": stage_seconds(student_root),
                     "root": student_root}
            return report, extra, [os.path.join(student_root, "eval", "metrics.json")]
        return self.records.run(name, method, labels, transfer, seed, work)

    def reference_cell(self, labels: str, seed: int) -> dict:
        def work():
            config = self.spec.cell_config("scratch", labels, 0)
            root = os.path.join(self.out, "reference", f"labels{labels}_seed{seed}")
            base = {**config.base_overrides(self.data_dir), "seed": seed}
            train_bundle(self.spec.dataset, "reference", root,
                         {**base, **stage_budget(self.profile, "student"), "labels": config.labels},
                         isolate=self.spec.isolate_stages)
            report = self.evaluate("reference", root, base)
            extra = {"train_seconds": stage_seconds(root), "root": root}
            return report, extra, [os.path.join(root, "eval", "metrics.json")]
        return self.records.run(f"{REFERENCE}_labels{labels}_seed{seed}", REFERENCE, labels, 0, seed, work)

    def cell_overrides(self, method: str, labels: str, seed: int, stage: str) -> dict:
        """What infers with a finished cell's model (the qualitative figure)."""
        config = self.spec.cell_config(method, labels, 0)
        if stage == "student":
            return student_overrides(config, self.data_dir, seed)
        return {**config.base_overrides(self.data_dir), "seed": seed}

    # --- teacher diagnostics ---------------------------------------------------------------------------------
    def bundle_value(self, stage: str, name: str):
        """A value of a stage's bundle for this grid's data (and image size), read through its properties."""
        overrides = {"dataset_dir": self.data_dir, **({"image_size": self.spec.image_size} if self.spec.image_size else {})}
        return getattr(bundle_properties(self.spec.dataset, stage, overrides), name)

    def diagnostics(self) -> list[dict]:
        """Teachers of each ``lora_ranks`` rank at the largest budget: test Dice and I(T;Y) on the labelled
        images (the untuned foundation model, rank 0, against the task-specific LoRA teacher)."""
        text = self.spec.lora_ranks.strip().lower()
        if text == "none":
            return []
        bundle_rank = self.bundle_value("teacher", "lora_rank")
        ranks = [int(r) for r in text.split(",") if r.strip()] if text else [0, bundle_rank]
        labels = max(self.budgets, key=lambda b: math.inf if b == "all" else int(b))
        return [self._diagnose(rank, labels, None if rank == bundle_rank else rank) for rank in ranks]

    def _diagnose(self, rank: int, labels: str, lora_rank: int | None) -> dict:
        name = f"teacher_rank{rank}_labels{labels}"
        record = self.records.get(name)
        if record.get("status") == "done":
            return record
        print(f"\n##### teacher diagnostics: LoRA rank {rank} ({'untuned, decoder trained' if rank == 0 else 'LoRA'})",
              flush=True)
        try:
            ckpt, _, root = self.teacher(labels, lora_rank)
            overrides = self.teacher_overrides(labels, ckpt, lora_rank)
            report = self.evaluate("teacher", root, overrides)
            record = {"status": "done", "rank": rank, "labels": labels, "mean_dice": report["mean_dice"],
                      "mean_hd95": report["mean_hd95"], "hd95_unit": report.get("hd95_unit", ""),
                      **self._teacher_information(labels, root, overrides),
                      "val_dice": read_training_record(root).get("best_metric")}
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as e:
            message = failure(e)
            print(f"!!! teacher diagnostics rank {rank} failed: {message}", flush=True)
            record = {"status": "failed", "rank": rank, "labels": labels, "error": message}
        self.records.save(name, record)
        return record

    def _teacher_information(self, labels: str, root: str, overrides: dict) -> dict:
        """I(T;Y) over the pixels of the labelled training images (those the teacher was trained on)."""
        import nibabel as nib
        import numpy as np

        limit = None if labels == "all" else int(labels)
        items = load_datalist(self.datalist, "training", limit=limit)
        folder = os.path.join(root, "eval", "train_predictions")
        datalist = ("$[{'image': d['image']} for d in common.data.load_datalist("
                    f"{self.datalist!r}, 'training', limit={limit!r})]")
        self.infer("teacher", root, {**overrides, "datalist": datalist, "output_dir": folder})
        preds, truth = [], []
        for item in items:
            stem = os.path.basename(item["image"]).split(".")[0]
            preds.append(np.squeeze(np.asarray(nib.load(os.path.join(folder, f"{stem}_seg.nii.gz")).dataobj)))
            truth.append(np.squeeze(np.asarray(nib.load(item["label"]).dataobj)))
        return mutual_information(np.concatenate([p.ravel() for p in preds]),
                                  np.concatenate([y.ravel() for y in truth]), len(class_names(self.datalist)))

    # --- the grid --------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Every cell not finished before; returns the teacher diagnostics. Seeds outermost: a grid stopped
        part-way has whole tables for its first seeds."""
        diagnostics = self.diagnostics()
        for seed in self.seeds:
            for labels in self.budgets:
                self.teacher_cell(labels)
                if not self.spec.no_reference:
                    self.reference_cell(labels, seed)
                for method in self.methods:
                    for transfer in (self.transfers if method in PRETRAINED else [0]):
                        self.student_cell(method, labels, transfer, seed)
        return diagnostics
