"""What a run tells its user: the transfer set's source and quality, the teacher check before distilling and
after, and whether a stage was stopped by its budget while still improving."""

from __future__ import annotations

import os

from common.engines import read_training_record
from common.provenance import read_json

__all__ = ["LOW_SYNTH_PSNR", "WEAK_TEACHER_DICE", "transfer_report", "teacher_check", "teacher_record_root",
           "no_teacher_record", "trained_line",
           "still_improving"]

# A synthetic transfer set whose mean PSNR against the nearest real image is below this is reported loudly:
# its images do not look like the dataset (the paper's sets: ~28 dB).
LOW_SYNTH_PSNR = 20.0
# A teacher whose best validation Dice is below this is reported loudly before anything distils from it.
WEAK_TEACHER_DICE = 0.5


def transfer_report(source: str, folder: str) -> list[str]:
    """Summary lines on the transfer set in ``folder``: its source, size and, for a synthetic set, its quality
    (loud when the mean PSNR is below ``LOW_SYNTH_PSNR``)."""
    info = read_json(os.path.join(folder, "datalist.json"))
    count = len(info.get("training", []))
    shown = os.path.relpath(folder) if os.path.abspath(folder).startswith(os.getcwd() + os.sep) else folder
    if source == "augment":
        return [f"Transfer set: {count} images, the labelled training images and their affine views "
                f"(--transfer_source augment), {shown}."]
    if source == "unlabelled":
        return [f"Transfer set: {count} images, real unlabelled images and their affine views "
                f"(--transfer_source unlabelled), {shown}."]
    quality = read_json(os.path.join(folder, "quality.json"))
    manifest = info.get("manifest", {})
    lines = [f"Transfer set: {count} synthetic images (--transfer_source synth; DDIM {manifest.get('steps')} steps), "
             f"{shown}."]
    if "mean_psnr" not in quality:
        return lines + [f"**WARNING: {shown}/quality.json is missing: the synthetic set's quality is unknown.**"]
    lines.append(f"Synthetic set quality: mean PSNR {quality['mean_psnr']:.2f} dB, mean MSE {quality['mean_mse']:.1f} "
                 f"(0-255) against the nearest real training image; near-copies (PSNR > "
                 f"{quality.get('memorization_psnr', 40):g} dB): {len(quality.get('near_copies', []))}; samples.png "
                 "shows them.")
    if quality["mean_psnr"] < LOW_SYNTH_PSNR:
        lines.append(f"**WARNING: the synthetic transfer set is of low quality (mean PSNR {quality['mean_psnr']:.2f} dB "
                     f"< {LOW_SYNTH_PSNR:g} dB; the paper's sets: ~28 dB): its images do not look like the dataset, "
                     "and the student is distilled on them.** Train the generator longer (--profile paper, on a GPU) "
                     "or use --transfer_source augment or unlabelled.")
    return lines


def teacher_check(teacher_root: str, students: dict[str, str]) -> list[str]:
    """Summary lines comparing the teacher's best validation Dice with the students' (name -> bundle root):
    loud when the teacher is below ``WEAK_TEACHER_DICE`` or weaker than a student it teaches."""
    record = read_training_record(teacher_root)
    teacher = record.get("best_metric")
    if teacher is None:
        return []
    lines = [f"Teacher: best validation Dice {teacher:.4f} ({trained_line(record)}). Its checkpoint was chosen on these "
             "validation images, so the figure is optimistic; no other labelled image is left to check it on before "
             "distilling (the test split stays unseen until the end). The summary's test Dice is the unbiased one.",
             *still_improving("teacher", record)]
    if teacher < WEAK_TEACHER_DICE:
        lines.append(f"**WARNING: the teacher is weak (validation Dice {teacher:.4f} < {WEAK_TEACHER_DICE}).** "
                     "Distilling its logits teaches its mistakes; train it longer (a larger teacher budget, "
                     "--profile paper) or check its data before trusting a distilled student.")
    for name, root in students.items():
        record = read_training_record(root)
        value = record.get("best_metric")
        if value is None:
            continue
        lines.append(f"Student ({name}): best validation Dice {value:.4f} ({trained_line(record)}).")
        lines += still_improving(f"{name} student", record)
        if round(value, 4) > round(teacher, 4):  # weaker as the figures show it, not by a rounding's worth
            lines.append(f"**WARNING: the teacher (validation Dice {teacher:.4f}) is weaker than the {name} student "
                         f"({value:.4f}).** Task-specific KD's logit term imitates a teacher worse than the student; "
                         "train the teacher longer before relying on TS-KD.")
    return lines


def teacher_record_root(teacher_checkpoint: str, teacher_root: str) -> str:
    """The bundle whose ``models/training.json`` describes the teacher: the one trained here, or the bundle a
    ``--teacher_checkpoint`` (``<bundle>/models/model.pt``) comes from."""
    if teacher_checkpoint:
        return os.path.dirname(os.path.dirname(os.path.abspath(teacher_checkpoint)))
    return teacher_root


def no_teacher_record(teacher_checkpoint: str) -> str:
    """The check's line when the teacher has no training record to read."""
    where = f"'{teacher_checkpoint}' (--teacher_checkpoint)" if teacher_checkpoint else "the teacher"
    return (f"**The teacher was not checked: {where} has no training record (models/training.json beside it), so "
            "its validation Dice is unknown.** Evaluate it (its bundle's evaluate.json) before trusting a student "
            "distilled from it.")


def trained_line(record: dict) -> str:
    """How a stage trained, from its ``training.json`` record."""
    return (f"{record['steps']} of {record['budget_steps']} steps, best at step {record['best_step']}"
            + (", stopped early" if record.get("stopped_early") else ""))


def still_improving(name: str, record: dict) -> list[str]:
    """A loud line when a stage used its whole budget and its best validation came at the last check: it was
    stopped by the cap, not by a plateau."""
    steps, budget = record.get("steps"), record.get("budget_steps")
    if not budget or steps != budget or record.get("stopped_early") or record.get("best_step") != steps:
        return []
    return [f"**WARNING: the {name} was still improving when its budget ran out** (best validation at its last "
            f"step, {steps}): a larger step budget would likely make it better (a bundle's --steps; for "
            "run_pipeline.py and run_grid.py, the profile's)."]
