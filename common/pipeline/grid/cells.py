"""The grid's cells: the teacher per label budget, the DynUNet reference and every student method, each a
short function over the shared stages (``common.pipeline.stages``), and the teacher diagnostics."""

from __future__ import annotations

import dataclasses
import os

from common.comparison import REFERENCE, TEACHER
from common.data import load_datalist, validation_items
from common.errors import TskdError
from common.pipeline.budget_scale import describe_scale, resolve_run_budget
from common.pipeline.bundles import bundle_properties
from common.pipeline.config import prepared_image_size
from common.pipeline.grid.records import CellRecords, mlflow_store
from common.pipeline.grid.spec import GridSpec, cell_id, check_grid_settings, label_budgets
from common.pipeline.profiles import PRETRAINED, PROFILES
from common.pipeline.stages import (evaluate_bundle, infer_bundle, reference_stage, stage_seconds, student_stages,
                                    teacher_stage)
from common.provenance import check_writable, file_sha256, machine

__all__ = ["Grid", "Cell", "TAUGHT"]

TAUGHT = ("tskd", "takd")  # the student methods that learn from their label budget's teacher


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell: ``kind`` teacher, reference or student; its row's method, label budget, transfer size, seed."""

    kind: str
    method: str
    labels: str
    transfer: int
    seed: int
    name: str


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
        if spec.workers < 1:
            raise TskdError(f"--workers must be at least 1, got {spec.workers}.")

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
        if not spec.image_size:
            spec.image_size = prepared_image_size(spec.dataset, self.data_dir)
        earlier = os.path.isfile(os.path.join(self.out, "grid.json"))  # a grid folder from before budget.json
        check_grid_settings(self.out, self.spec)
        # One step budget for every cell: chosen (or given) once, recorded in OUT/budget.json, kept on resuming.
        self.budget = resolve_run_budget(spec.cell_config("tskd", self.budgets[0], 0), self.data_dir, self.out,
                                         earlier=earlier, keep=True, may_measure=not spec.report_only)
        spec.budget_scale = self.budget["scale"]
        if not spec.report_only:
            print(f"=== {describe_scale(self.budget, spec.profile)}", flush=True)
        tracking = mlflow_store(self.out, spec.dataset) if spec.tracking == "mlflow" and not spec.report_only else None
        self.records = CellRecords(self.out, self.n_train, spec.transfer_source, tracking,
                                   {"profile": spec.profile, "dataset": spec.dataset, "fpn": spec.fpn,
                                    "teacher": spec.teacher, "budget_scale": spec.budget_scale})
        self.teachers: dict[str, tuple[str, str, str]] = {}
        self.teacher_digests: dict[str, str] = {}

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

    def teacher_sha256(self, labels: str) -> str:
        """The sha256 of the weights of ``labels``' teacher (trained first if this machine lacks them)."""
        if labels not in self.teacher_digests:
            self.teacher_digests[labels] = file_sha256(self.teacher(labels)[0])
        return self.teacher_digests[labels]

    def set_aside_stale_records(self, cells: list[Cell]) -> None:
        """Records of the teacher and the TS-KD / TA-KD cells of a label budget name the teacher weights they
        learnt from (``teacher_sha256``; a record without one, from before 2026-12-06, is taken to have learnt from
        the teacher its budget's teacher record names). When the teacher this grid now has differs (its folder
        was lost and it was retrained on another machine or with other packages), those records would mix two
        teachers in one table: they are moved to ``cells/stale/`` and their cells run again. The teacher is
        trained for the check only where a cell of its budget still needs it or its folder is here."""
        for labels in self.budgets:
            taught = [c for c in cells if c.labels == labels and (c.kind == "teacher" or c.method in TAUGHT)]
            done = {c.name: row for c in taught
                    if (row := self.records.get(c.name).get("row", {})).get("status") == "done"}
            root = os.path.join(self.out, "teacher", f"labels{labels}")
            if not done or (len(done) == len(taught) and not os.path.isfile(os.path.join(root, "done.json"))):
                continue  # nothing recorded to check, or every record is in and no weights here to check them by
            named = done.get(f"teacher_labels{labels}", {}).get("teacher_sha256", "")
            unknown = [name for name, row in done.items() if not (row.get("teacher_sha256") or named)]
            if unknown:
                print(f"!!! {labels} labels: the records {', '.join(unknown)} do not name the teacher weights they "
                      "learnt from (written before 2026-12-06); kept as they are. Move them out of "
                      f"{self.records.folder} to run them again with this grid's teacher.", flush=True)
            current = self.teacher_sha256(labels)
            stale = {name: row for name, row in done.items()
                     if name not in unknown and (row.get("teacher_sha256") or named) != current}
            if stale:
                before = sorted({(row.get("teacher_sha256") or named)[:12] + (f" on {row['machine']}"
                                                                              if row.get("machine") else "")
                                 for row in stale.values()})
                print(f"!!! {labels} labels: the teacher's weights here (sha256 {current[:12]}…, "
                      f"{os.path.join(root, 'models')}) are not those these records learnt from ({'; '.join(before)}), "
                      "most likely because it was retrained on another machine or with other packages. Running "
                      f"them again with this teacher; the old records are kept in {self.records.folder}/stale: "
                      + ", ".join(sorted(stale)), flush=True)
                for name in stale:
                    self.records.set_aside(name)

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
    def plan(self) -> list[Cell]:
        """Every cell, seeds outermost (a grid stopped part-way has whole tables for its first seeds); the
        teacher of a label budget before the cells that learn from it."""
        cells = []
        for seed in self.seeds:
            for labels in self.budgets:
                if seed == self.seeds[0]:
                    cells.append(Cell("teacher", TEACHER, labels, 0, self.spec.seed, f"teacher_labels{labels}"))
                if not self.spec.no_reference:
                    cells.append(Cell("reference", REFERENCE, labels, 0, seed, f"{REFERENCE}_labels{labels}_seed{seed}"))
                for method in self.methods:
                    for transfer in (self.transfers if method in PRETRAINED else [0]):
                        cells.append(Cell("student", method, labels, transfer, seed,
                                          cell_id(method, labels, transfer, seed)))
        return cells

    def run_cell(self, cell: Cell, work=None) -> dict:
        """Run ``cell`` once and record it (``work``: how, default ``self.work(cell)`` here)."""
        if cell.method == "imagenet_mae" and not self.spec.imagenet_mae_checkpoint:
            from common.pipeline.config import MAE_LITE_HINT

            record = {"row": self.records.row(cell.method, cell.labels, cell.transfer, cell.seed, status="skipped",
                                              error="no --imagenet_mae_checkpoint given. " + MAE_LITE_HINT)}
            self.records.save(cell.name, record)
            return record
        return self.records.run(cell.name, cell.method, cell.labels, cell.transfer, cell.seed,
                                work or (lambda: self.work(cell)))

    def work(self, cell: Cell) -> tuple[dict, dict, list[str]]:
        """Train (or reuse) what ``cell`` needs and evaluate it: ``(report, extra row fields, artefacts)``."""
        report, extra, artefacts = {"teacher": self._teacher_work, "reference": self._reference_work,
                                    "student": self._student_work}[cell.kind](cell)
        return report, {**extra, "machine": machine()}, artefacts  # where it ran: a worker's own CPU and threads

    def _teacher_work(self, cell: Cell):
        ckpt, _, root = self.teacher(cell.labels)
        report = self.evaluate("teacher", root, self.teacher_overrides(cell.labels, ckpt))
        return (report, {"root": root, "teacher_sha256": self.teacher_sha256(cell.labels)},
                [os.path.join(root, "eval", "metrics.json")])

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the transfer set and pre-training a cell of ``seed`` learns from: its own, or with
        ``shared_pretraining`` the first seed's (the seeds then vary only the fine-tuning)."""
        return self.spec.seed if self.spec.shared_pretraining else seed

    def pretrain_suffix(self, seed: int) -> str:
        """The folder suffix of a cell's transfer set and pre-training: none for the first seed's, which a grid
        with shared pre-training makes too (so a folder grown either way reuses it), ``_seed<n>`` for the others."""
        own = self.pretrain_seed(seed)
        return "" if own == self.spec.seed else f"_seed{own}"

    def _student_work(self, cell: Cell):
        method, labels, transfer, seed = cell.method, cell.labels, cell.transfer, cell.seed
        config = self.spec.cell_config(method, labels, transfer, seed=self.pretrain_seed(seed)).checked()
        teacher = self.teacher(labels)[:2] if method in TAUGHT else ("", "")
        tag = f"{method}_labels{labels}" + (f"_transfer{transfer}" if transfer else "")
        student_root = os.path.join(self.out, "students", f"{tag}_seed{seed}")
        suffix = self.pretrain_suffix(seed)
        result = student_stages(config, self.data_dir, os.path.join(self.out, "transfer", f"labels{labels}{suffix}"),
                                teacher, os.path.join(self.out, "pretrain", tag + suffix), student_root,
                                student_seed=seed, isolate=self.spec.isolate_stages)
        report = self.evaluate("student", student_root, result["overrides"])
        extra = {"pretrain_seconds": result["pretrain_seconds"], "train_seconds": stage_seconds(student_root),
                 "root": student_root, **({"teacher_sha256": self.teacher_sha256(labels)} if method in TAUGHT else {})}
        return report, extra, [os.path.join(student_root, "eval", "metrics.json")]

    def _reference_work(self, cell: Cell):
        root = os.path.join(self.out, "reference", f"labels{cell.labels}_seed{cell.seed}")
        report = reference_stage(self.spec.cell_config("scratch", cell.labels, 0), self.data_dir, root, cell.seed,
                                 isolate=self.spec.isolate_stages)
        return report, {"train_seconds": stage_seconds(root), "root": root}, [os.path.join(root, "eval", "metrics.json")]

    def bundle_value(self, stage: str, name: str):
        """A value of a stage's bundle for this grid's data (and image size), read through its properties."""
        overrides = {"dataset_dir": self.data_dir, **({"image_size": self.spec.image_size} if self.spec.image_size else {})}
        return getattr(bundle_properties(self.spec.dataset, stage, overrides), name)

    # --- the grid --------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Every cell not finished before, in order, or on ``workers`` workers (``executor`` local processes or
        Ray); returns the teacher diagnostics."""
        from common.pipeline.grid.diagnostics import teacher_diagnostics

        diagnostics = teacher_diagnostics(self)
        self.set_aside_stale_records(self.plan())
        if self.spec.workers > 1 or self.spec.executor == "ray":
            from common.pipeline.grid.parallel import run_parallel

            run_parallel(self, self.plan(), self.spec.workers, self.spec.executor, self.spec.ray_address)
        else:
            for cell in self.plan():
                self.run_cell(cell)
        return diagnostics
