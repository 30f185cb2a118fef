"""The main job: every stage of tskd for one dataset, each through its MONAI bundle.

Stages: prepare the data (demo only) -> teacher (SAM-LoRA) -> transfer set (``transfer_source``, by default the
profile's: ``synth``, a DDPM trained on seeded affine views of the labelled images, then sampled with DDIM;
``augment``, seeded affine views of the labelled images; ``unlabelled``, real images without masks) -> pre-train
the student by distillation (``tskd`` or ``takd``), by MAE or MoCo v3 on the transfer set (``mae``, ``mocov3``), or
not at all (``scratch``) -> fine-tune the student on the labels -> evaluate teacher and student on the test split.
A stage whose outputs exist for the same inputs (including its upstream stages) is skipped, so an interrupted run
continues where it stopped (each bundle also resumes its own training). Writes ``OUT/metrics.json``
({"teacher": M, "student": M}), ``OUT/summary.md`` and ``OUT/predictions.png``.
"""

from __future__ import annotations

import os

from common.data import validation_items
from common.data.figures import save_prediction_grid
from common.engines.metrics import format_report
from common.pipeline.budget_scale import describe_scale, resolve_run_budget
from common.pipeline.config import RunConfig
from common.pipeline.report import no_teacher_record, teacher_check, teacher_record_root, transfer_report
from common.pipeline.stages import evaluate_bundle, infer_bundle, student_stages, teacher_stage
from common.provenance import FolderLock, machine, write_json

__all__ = ["run_pipeline"]


def run_pipeline(config: RunConfig, isolate: bool = False) -> dict:
    """Run the main job for ``config`` (checked first); returns ``{"teacher": report, "student": report}``.
    ``isolate``: each stage in its own process (see ``common.pipeline.bundles``)."""
    config = config.checked()
    out = config.output_folder()
    with FolderLock(out, what="the run folder"):
        return _run(config, out, isolate)


def _run(config: RunConfig, out: str, isolate: bool) -> dict:
    data_dir = config.dataset_folder(out)
    if config.data_dir is None:  # the demo, prepared just now: its splits against the label budgets
        config.check_dataset(data_dir)
    teacher_root = os.path.join(out, "teacher")
    budget = resolve_run_budget(config, data_dir, out, earlier=os.path.isfile(os.path.join(teacher_root, "done.json")))
    config = config.replace(budget_scale=budget["scale"])
    budget_line = describe_scale(budget, config.profile)
    print(f"=== {budget_line}", flush=True)
    teacher_ckpt, teacher_key = teacher_stage(config, data_dir, teacher_root, isolate=isolate)
    teacher_record = teacher_record_root(config.teacher_checkpoint, teacher_root)
    if config.method == "tskd":  # the one method that learns from the trained teacher
        check = teacher_check(teacher_record, {}) or [no_teacher_record(config.teacher_checkpoint)]
        print("\n".join(["=== teacher check before distilling:", *check]), flush=True)
    pretrain_root = os.path.join(out, f"pretrain_{config.method}")
    student_root = os.path.join(out, f"student_{config.method}")
    student = student_stages(config, data_dir, out, (teacher_ckpt, teacher_key), pretrain_root, student_root,
                             isolate=isolate)
    teacher_eval = {**config.base_overrides(data_dir), **config.foundation_overrides(), "ckpt_path": teacher_ckpt}
    reports = {"teacher": evaluate_bundle(config.dataset, "teacher", teacher_root, teacher_eval, isolate=isolate),
               "student": evaluate_bundle(config.dataset, "student", student_root, student["overrides"],
                                          isolate=isolate)}
    write_json(os.path.join(out, "metrics.json"), reports)
    print("=== predictions on the test split -> predictions.png", flush=True)
    grid = {"teacher": infer_bundle(config.dataset, "teacher", teacher_root, teacher_eval, isolate=isolate),
            f"student ({config.method})": infer_bundle(config.dataset, "student", student_root, student["overrides"],
                                                       isolate=isolate)}
    save_prediction_grid(os.path.join(data_dir, "datalist.json"), grid, os.path.join(out, "predictions.png"))
    summary = summary_lines(config, data_dir, student["transfer"], teacher_record, student_root, reports,
                            budget_line)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(summary))
    print("\n" + "\n".join(summary) + f"\nwritten: {out}/metrics.json, {out}/summary.md, {out}/predictions.png")
    return reports


def summary_lines(config: RunConfig, data_dir: str, transfer: str, teacher_record: str, student_root: str,
                  reports: dict, budget: str = "") -> list[str]:
    """``summary.md``: what was used, the transfer set, the teacher check and the test metrics. ``budget``: the
    line saying which step budgets were trained (``describe_scale``)."""
    lines = [f"# tskd on {config.dataset} ({config.profile} profile, student: {config.method}, seed {config.seed})", "",
             f"Masks used: {config.label_count(data_dir)}.", "",
             f"Ran on: {machine()} (each stage's done.json names the machine that trained it).", "",
             *([budget, ""] if budget else [])]
    if not validation_items(os.path.join(data_dir, "datalist.json"), config.val_labels):
        lines += ["No validation images: every stage kept its last epoch's weights (no model selection, no early "
                  "stopping).", ""]
    if transfer:
        lines += [*transfer_report(config.transfer_source, transfer), ""]
    check = teacher_check(teacher_record, {config.method: student_root}) or [no_teacher_record(config.teacher_checkpoint)]
    lines += [*check, ""]
    for name, report in reports.items():
        lines += [f"## {name}", "", "```", format_report(report), "```", ""]
    lines += ["![test images, ground truth and predictions](predictions.png)", ""]
    return lines

