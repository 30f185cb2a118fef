"""The grid's report, written from its cell records: ``results.csv``, ``tables.md`` (with the paired tests, the
teacher checks and diagnostics, the transfer sets, pre-training times and inference cost) and the figures."""

from __future__ import annotations

import os
from collections import Counter

from common.comparison import (METHOD_NAMES, REFERENCE, TEACHER, compare_methods, image_scores, plot_dice_vs_labels,
                               plot_dice_vs_transfer, read_results, write_results, write_tables)
from common.data import load_datalist
from common.data.datalists import class_names
from common.data.figures import save_prediction_grid
from common.pipeline.budget_scale import describe_scale
from common.pipeline.grid.cells import Grid
from common.pipeline.grid.spec import cell_id
from common.pipeline.profiles import PRETRAINED
from common.pipeline.report import teacher_check, transfer_report
from common.pipeline.stages import REFERENCE_BUDGET_SCALE, WEIGHTS, stage_overrides, student_overrides
from common.provenance import read_json

__all__ = ["write_report", "qualitative"]


def class_scores(grid: Grid, record: dict) -> list:
    """A cell's per-image, per-class test Dice (``None`` where prediction and ground truth both lack the class),
    from its record or, for records written before they kept it, from its evaluation."""
    if "per_image_class_dice" in record:
        return record["per_image_class_dice"]
    row = record["row"]
    root = row.get("root") or os.path.join(grid.out, "teacher", f"labels{row['labels']}")
    return read_json(os.path.join(root, "eval", "metrics.json")).get("per_image", {}).get("dice", [])


def paired_tests(grid: Grid, records: list[dict]) -> dict:
    """TS-KD against every other row, per label budget and transfer size (seeds averaged per image)."""
    per_seed: dict[tuple, list] = {}
    for r in records:
        if r["row"]["status"] == "done":
            key = (r["row"]["method"], r["row"]["labels"], str(r["row"]["transfer"]))
            per_seed.setdefault(key, []).append(class_scores(grid, r))
    tests = {}
    for labels in grid.budgets:
        for transfer in grid.transfers:
            scores = {}
            for method in [TEACHER, REFERENCE, *grid.methods]:
                found = per_seed.get((method, labels, str(transfer) if method in PRETRAINED else ""), [])
                if found and all(found):
                    scores[method] = image_scores(found)
            tests[(labels, str(transfer))] = compare_methods(scores, "tskd")
    return tests


def header_lines(grid: Grid, rows: list[dict]) -> list[str]:
    n_test = len(load_datalist(grid.datalist, "test"))
    lines = [f"# tskd comparison grid: {grid.spec.dataset}, {grid.spec.profile} profile", "",
             f"Written by `tskd-grid` (scripts/run_grid.py) from `results.csv` ({len(rows)} rows). Test split: {n_test} "
             f"images. Every row also used {grid.val_n} validation masks (checkpoint selection and early stopping), "
             f"counted in each title. Seeds {', '.join(map(str, grid.seeds))} vary the fine-tuning (data order, "
             "augmentation, and the head's initialisation, except TS-KD's head, which its pre-training trains)"
             + ("; the teacher and the pre-training use the first (shared pre-training), so ± is the fine-tuning's "
                "spread only" if grid.spec.shared_pretraining else
                " and each pre-trained row's transfer set and pre-training, so ± covers both; the teacher of a "
                "label budget is one run (the first seed's)") + ". Transfer sets: "
             f"{grid.spec.transfer_source}. Mean ± sd over seeds; the best student per column in **bold** "
             "(the teacher and the DynUNet reference are not marked). TS-KD is compared with every other "
             "row by a Wilcoxon signed-rank test on per-image mean Dice (a class absent from both prediction and "
             f"ground truth counts as agreement), each method's seeds averaged per image, so n is at most "
             f"{n_test} test images; the p-values of one table are Holm-adjusted together."]
    lines += ["", machine_line(rows), "", describe_scale(grid.budget, grid.spec.profile)
              + reference_budget_note(grid.budget["scale"], grid.spec.no_reference)]
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", "Cells not in the tables:"] + [f"- {r['method']}, {r['labels']} labels, seed {r['seed']}: "
                                                    f"{r['status']} ({r['error']})" for r in failed]
    return lines


def reference_budget_note(scale: float, no_reference: bool) -> str:
    """The reference row's budget when it differs from the grid's scale: the reference trains at
    ``REFERENCE_BUDGET_SCALE`` (see ``stages.reference_stage``), so a reader must not take it for the scaled one
    of the other rows."""
    if scale == REFERENCE_BUDGET_SCALE or no_reference:
        return ""
    return (f" The teacher and the students trained x {scale:g} of their caps; the DynUNet reference kept the "
            f"profile's own (x {REFERENCE_BUDGET_SCALE:g}), whatever the scale, since its Dice fell with a longer cap.")


def machine_line(rows: list[dict]) -> str:
    """Which machines made the finished cells (recorded since 2026-12-06): one, or each with its count, since the
    same seed on another CPU or thread count does not give the same numbers."""
    counts = Counter(r.get("machine") or "not recorded" for r in rows if r["status"] == "done")
    if len(counts) == 1:
        (name, _), = counts.items()
        return (f"Every cell ran on: {name}." if name != "not recorded" else
                "The cells' machine is not recorded (records written before tskd recorded it).")
    return ("The cells ran on more than one machine; the same seed on another CPU or thread count gives other "
            "numbers (other kernels and rounding, amplified by training), so differences between these machines' "
            "cells mix the machine's effect in: "
            + "; ".join(f"{name} ({n} cell{'s' * (n > 1)})" for name, n in counts.most_common()) + ".")


def write_report(grid: Grid, diagnostics: list[dict] | None = None) -> None:
    records = [r for r in grid.records.all() if "row" in r]
    if diagnostics is None:
        diagnostics = [r for r in grid.records.all() if "rank" in r]
    classes = class_names(grid.datalist)[1:]
    write_results([r["row"] for r in records], os.path.join(grid.out, "results.csv"), classes)
    rows = read_results(os.path.join(grid.out, "results.csv"))  # the table is written from the file
    footer = [*teacher_lines(grid), *diagnostic_lines(diagnostics), *transfer_lines(grid),
              *time_lines(rows, grid.spec.shared_pretraining), *flop_lines(grid)]
    write_tables(rows, os.path.join(grid.out, "tables.md"), classes, tests=paired_tests(grid, records),
                 header=header_lines(grid, rows), footer=footer, val_labels=grid.val_n)
    transfer = str(grid.transfers[0])
    plot_dice_vs_labels(rows, os.path.join(grid.out, "dice_vs_labels.png"), transfer,
                        f"{grid.spec.dataset}: Dice against labels (transfer {transfer}, "
                        f"{grid.spec.transfer_source}; bars: sd over seeds)")
    if len(grid.transfers) > 1:
        plot_dice_vs_transfer(rows, os.path.join(grid.out, "dice_vs_transfer.png"), grid.budgets[0])
    print(f"written: {grid.out}/results.csv, {grid.out}/tables.md, {grid.out}/dice_vs_labels.png", flush=True)


def teacher_lines(grid: Grid) -> list[str]:
    lines = ["## Teacher checks (best validation Dice, before distilling)", ""]
    for labels in grid.budgets:
        teacher_root = os.path.join(grid.out, "teacher", f"labels{labels}")
        students = {m: os.path.join(grid.out, "students", cell_id(m, labels, 0 if m not in PRETRAINED else
                                                                  grid.transfers[0], grid.spec.seed))
                    for m in ("scratch", "tskd") if m in grid.methods}
        check = teacher_check(teacher_root, students)
        digest = grid.records.get(f"teacher_labels{labels}").get("row", {}).get("teacher_sha256")
        if digest:  # what every TS-KD / TA-KD record of this budget names too (the grid reruns those that differ)
            check = [*check, f"its weights: sha256 {digest[:12]}… (`teacher_sha256` in results.csv)"]
        lines += [f"{labels} labels:", *(f"- {line}" for line in check or ["no record"]), ""]
    return lines


def diagnostic_lines(diagnostics: list[dict]) -> list[str]:
    if not diagnostics:
        return []
    unit = next((d.get("hd95_unit") for d in diagnostics if d.get("hd95_unit")), "")
    lines = ["## Teacher diagnostics (largest label budget)", "",
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
    return lines + [""]


def transfer_lines(grid: Grid) -> list[str]:
    """What each transfer set is (source, size, a synthetic set's quality), from the pre-training records: one
    per label budget and transfer size, and per seed unless the grid shares its pre-training."""
    lines = []
    seeds = list(dict.fromkeys(grid.pretrain_seed(seed) for seed in grid.seeds))
    for labels in grid.budgets:
        for transfer in grid.transfers:
            for seed in seeds:
                for method in [m for m in grid.methods if m in PRETRAINED]:
                    tag = f"{method}_labels{labels}_transfer{transfer}{grid.pretrain_suffix(seed)}"
                    overrides = stage_overrides(os.path.join(grid.out, "pretrain", tag))
                    if overrides.get("transfer_file"):
                        report = transfer_report(grid.spec.transfer_source, os.path.dirname(overrides["transfer_file"]))
                        title = f"{labels} labels, transfer {transfer}" + (f", seed {seed}" if len(seeds) > 1 else "")
                        lines += [f"{title}:", *(f"- {line}" for line in report), ""]
                        break
    return ["## Transfer sets", "", *lines] if lines else []


def time_lines(rows: list[dict], shared: bool) -> list[str]:
    times: dict[str, dict] = {}
    for r in rows:
        if r["status"] == "done" and r["method"] in PRETRAINED and r.get("pretrain_seconds") not in ("", None):
            # A pre-training shared by seeds is one run: keyed without the seed, its cells count once.
            key = (r["labels"], r["transfer"]) + (() if shared else (r["seed"],))
            times.setdefault(r["method"], {})[key] = float(r["pretrain_seconds"])
    if not times:
        return []
    per = "label budget and transfer size" + ("" if shared else " and seed")
    lines = [f"## Pre-training wall time (this machine; once per {per})", "",
             "| method | mean seconds | runs |", "|---|---|---|"]
    for m, values in times.items():
        lines.append(f"| {METHOD_NAMES.get(m, m)} | {sum(values.values()) / len(values):.0f} | {len(values)} |")
    return lines + [""]


def flop_lines(grid: Grid) -> list[str]:
    import torch

    from common.models import build_dynunet, build_vit_fpn, count_gflop

    size = grid.spec.image_size or int(grid.bundle_value("student", "image_size"))
    channels = int(grid.bundle_value("student", "in_channels"))
    classes = len(class_names(grid.datalist))
    x = torch.zeros(1, channels, size, size)
    student = count_gflop(build_vit_fpn(size, channels, classes, fpn=grid.spec.fpn).eval(), x)
    reference = count_gflop(build_dynunet(size, channels, classes).eval(), x)
    return ["## Inference cost per image", "", f"At {size}² with {channels} channel(s): the student (ViT-Tiny + "
            f"{grid.spec.fpn} FPN) {student:.2f} GFLOP, the DynUNet reference {reference:.2f} GFLOP "
            f"({reference / student:.1f}x the student), counted by torch.utils.flop_counter.", ""]


def qualitative(grid: Grid) -> None:
    """The same test images segmented by the teacher, the reference and every method (smallest label budget,
    first seed, first transfer size)."""
    labels, seed, transfer = grid.budgets[0], grid.spec.seed, grid.transfers[0]
    columns = {}
    if grid.records.get(f"teacher_labels{labels}").get("row", {}).get("status") == "done":
        ckpt, _, root = grid.teacher(labels)
        columns[METHOD_NAMES[TEACHER]] = grid.infer("teacher", root, grid.teacher_overrides(labels, ckpt))
    names = [(REFERENCE, f"{REFERENCE}_labels{labels}_seed{seed}", "reference")]
    names += [(m, cell_id(m, labels, transfer if m in PRETRAINED else 0, seed), "student") for m in grid.methods]
    for method, name, stage in names:
        row = grid.records.get(name).get("row", {})
        if row.get("status") != "done":
            continue
        if not os.path.isfile(os.path.join(row["root"], WEIGHTS)):  # a record copied from another machine
            print(f"qualitative.png: no column for {METHOD_NAMES.get(method, method)}: its record {name} names "
                  f"{row['root']}, which holds no {WEIGHTS} here (rerun that cell to draw it)", flush=True)
            continue
        columns[METHOD_NAMES.get(method, method)] = grid.infer(stage, row["root"],
                                                               cell_overrides(grid, method, labels, seed, stage))
    if columns:
        path = save_prediction_grid(grid.datalist, columns, os.path.join(grid.out, "qualitative.png"),
                                    n=grid.spec.qualitative)
        print(f"written: {path} ({labels} labels, seed {seed})", flush=True)


def cell_overrides(grid: Grid, method: str, labels: str, seed: int, stage: str) -> dict:
    """What infers with a finished cell's model."""
    config = grid.spec.cell_config(method, labels, 0)
    if stage == "student":
        return student_overrides(config, grid.data_dir, seed)
    return {**config.base_overrides(grid.data_dir), "seed": seed}
