"""How many of the profile's training steps this machine has time for: ``--budget_scale``.

The quick profile gives the teacher and the students step budgets that keep the main job (demo, all labels) under
its time target, ``minutes`` (15), on the slowest 2-core CPU this project has timed it on. CPUs differ by more than
two times in these steps (the quick main job's teacher trained at 1.8 s a step, validation included, on one
2-core AMD EPYC and at 1.0 s on another), so on a faster machine the fixed budgets leave most of the target unused
while the stages still end at or near their cap (issue 20: "no stage may end with its best validation at the last
step while a longer budget still fits the profile's time").

``--budget_scale auto`` (the default) times a few training steps of this run's teacher and student on this machine,
predicts the main job's time at each scale of ``LADDER`` from ``REFERENCE_RUN`` (a main job whose stage times and
step times were both measured, on one machine), and takes the largest scale whose prediction stays within
``SAFETY`` of the target. The teacher's and the students' step caps are multiplied by it, rounded to whole
validation epochs; their early stop still ends them on a plateau. The DynUNet reference keeps x1
(``common.pipeline.stages.reference_stage`` says why). A number instead of ``auto`` multiplies the caps as given
(1: the profile's own budgets, as in every result before 2026-12-06). A profile without a time target (``paper``
counts epochs; ``smoke``) takes 1 for ``auto``.

The chosen scale, with the step times and the predictions it came from, is written to ``budget.json`` in the run
folder (or the grid's folder), reused by a later run into that folder (so a resumed run trains the same
budgets), and stated in the summary. The prediction is for the default main job (TS-KD, the demo's sizes of
validation and test set); a run with other sizes may take longer or shorter than predicted.
"""

from __future__ import annotations

import math
import os
import statistics
import time

from common.errors import TskdError
from common.provenance import machine, read_json, write_json

__all__ = ["LADDER", "SAFETY", "REFERENCE_RUN", "BUDGET_FILE", "parse_budget_scale", "measure_step_seconds",
           "predict_seconds", "choose_scale", "resolve_budget_scale", "resolve_run_budget", "describe_scale"]

LADDER = (1.0, 1.5, 2.0)
# The share of the profile's time a prediction may fill: the stages' time varies by 4-7 % between runs on one
# machine type (docs/results/main_job), and the prediction carries the error of its model.
SAFETY = 0.85
BUDGET_FILE = "budget.json"
# The quick main job (demo, all labels, TS-KD, seed 1234) at scale 1, timed stage by stage, with the median step
# times measure_step_seconds gave on the same machine, idle (docs/results/budget_scale/). Each stage's time is
# predicted elsewhere in proportion to the step time it is made of: the teacher's training and its cache pass to
# the teacher's step, the rest (TS-KD pre-training, fine-tuning, data, evaluation, start-up) to the student's.
REFERENCE_RUN = {
    "machine": "AMD EPYC (family 26, model 2), 2 threads, torch 2.14.1+cu130",
    "step_seconds": {"teacher": 0.963, "student": 0.140},
    "seconds": {"teacher": 202.2, "teacher_pass": 28.5, "pretrain": 129.2, "student": 127.2, "other": 20.2},
}
# Which stages' time grows with the scale, and which step time each is made of.
SCALED = {"teacher": True, "teacher_pass": False, "pretrain": False, "student": True, "other": False}
MADE_OF = {"teacher": "teacher", "teacher_pass": "teacher", "pretrain": "student", "student": "student",
           "other": "student"}


def parse_budget_scale(value) -> float | str:
    """``auto`` or a positive number (one ``TskdError`` otherwise)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise TskdError(f"--budget_scale must be 'auto' or a positive number (1: the profile's own step budgets), "
                        f"got {value!r}.")
    return scale


def _timed_steps(model, batch: int, size: int, channels: int, classes: int, steps: int, warmup: int, device,
                 amp: bool) -> float:
    """The median seconds of ``steps`` optimizer steps (forward, 0.2 CE + 0.8 Dice, backward, AdamW) on random
    images, after ``warmup`` steps, under the autocast the bundles train with on ``device``."""
    import torch
    from monai.losses import DiceCELoss

    from common.engines.precision import cpu_bf16_native

    model = model.to(device).train()
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.randint(0, classes, (batch, 1, size, size), device=device).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuda = torch.device(device).type == "cuda"
    dtype = torch.float16 if cuda else torch.bfloat16
    enabled = amp and (cuda or cpu_bf16_native())
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=enabled):
            out = model(x)
        loss_fn(out.float(), y).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_step_seconds(dataset: str, data_dir: str, overrides: dict | None = None, steps: int = 4,
                         warmup: int = 2) -> dict:
    """Seconds per training step of this run's teacher and student on this machine, as their bundles build and
    train them (input size, channels, classes, batch, LoRA rank, pyramid, precision and device read from the
    bundles' configs with ``overrides``), on random images: ``{"teacher": s, "student": s}``. Weights are the
    architecture's, not trained ones: the cost is what is measured."""
    import torch

    from common.models import build_teacher, build_vit_fpn
    from common.pipeline.bundles import bundle_properties

    overrides = {"dataset_dir": data_dir, **(overrides or {})}
    result = {}
    for stage in ("teacher", "student"):
        workflow = bundle_properties(dataset, stage, overrides)
        parsed = workflow.parser
        size, channels = int(workflow.image_size), int(workflow.in_channels)
        classes, batch = int(workflow.num_classes), int(parsed.get_parsed_content("batch_size"))
        amp, device = bool(parsed.get_parsed_content("amp")), parsed.get_parsed_content("device")
        torch.manual_seed(0)
        if stage == "teacher":
            model = build_teacher(name=overrides.get("teacher", "litemedsam"),
                                  checkpoint=overrides.get("sam_checkpoint") or None, image_size=size,
                                  num_classes=classes, lora_rank=int(workflow.lora_rank))
        else:
            model = build_vit_fpn(image_size=size, in_channels=channels, num_classes=classes,
                                  fpn=overrides.get("fpn", workflow.fpn))
        # the student's steps are short: more of them for a steadier median
        result[stage] = _timed_steps(model, batch, size, channels, classes, steps if stage == "teacher" else 2 * steps,
                                     warmup if stage == "teacher" else 2 * warmup, device, amp)
        del model
    return result


def predict_seconds(step_seconds: dict, scale: float, reference: dict | None = None) -> float:
    """The main job's predicted time at ``scale`` on a machine whose teacher and student steps take
    ``step_seconds``: each stage of ``reference`` (default ``REFERENCE_RUN``) in proportion to its step time,
    the teacher's training and the fine-tuning also to the scale."""
    reference = reference or REFERENCE_RUN
    total = 0.0
    for stage, seconds in reference["seconds"].items():
        kind = MADE_OF[stage]
        ratio = step_seconds[kind] / reference["step_seconds"][kind]
        total += seconds * ratio * (scale if SCALED[stage] else 1.0)
    return total


def choose_scale(step_seconds: dict, minutes: float, reference: dict | None = None) -> tuple[float, dict]:
    """The largest scale of ``LADDER`` whose predicted main job fits ``SAFETY`` x ``minutes`` (1 when none
    does), and the predicted minutes at each scale."""
    predicted = {scale: predict_seconds(step_seconds, scale, reference) / 60 for scale in LADDER}
    fitting = [scale for scale in LADDER if predicted[scale] <= SAFETY * minutes]
    return max(fitting, default=LADDER[0]), predicted


def resolve_budget_scale(requested, profile: dict, record_path: str, measure, earlier: bool = False,
                         keep: bool = False) -> dict:
    """The scale a run trains with, as a record (``scale``, ``how``, and for ``auto`` the step times, the
    predictions and the machine), written to ``record_path``.

    ``auto`` reuses a scale recorded there by an earlier run into the same folder; a folder with stages ``earlier``
    than these records trained at the profile's own budgets (1); otherwise ``auto`` calls ``measure()`` (step
    seconds) where the profile has a time target, or takes 1 where it has none or ``measure`` is None (nothing is
    written then). A given number is used as given, except that with ``keep`` (a grid folder, whose cells must share
    one budget) one that differs from the recorded scale is refused."""
    requested = parse_budget_scale(requested)
    saved = read_json(record_path)
    if saved and requested == "auto":
        return saved
    if saved and keep and float(requested) != float(saved["scale"]):
        raise TskdError(f"'{os.path.dirname(record_path) or '.'}' holds a run trained with --budget_scale "
                        f"{saved['scale']:g} ({os.path.basename(record_path)}); its finished stages would be mixed "
                        f"with --budget_scale {requested:g}. Run with --budget_scale {saved['scale']:g} (or auto), "
                        "or choose another --out.")
    if requested != "auto":
        record = {"scale": float(requested), "how": "given"}
    elif earlier:
        record = {"scale": 1.0, "how": "the folder's stages were trained before budget scales were recorded"}
    elif not profile.get("minutes"):
        record = {"scale": 1.0, "how": "auto: this profile has no time target"}
    elif measure is None:
        return {"scale": 1.0, "how": "auto: nothing recorded, nothing measured"}
    else:
        print("=== budget: timing a few training steps of the teacher and the student on this machine", flush=True)
        steps = measure()
        scale, predicted = choose_scale(steps, profile["minutes"])
        record = {"scale": scale, "how": "auto", "minutes": profile["minutes"], "safety": SAFETY,
                  "step_seconds": {k: round(v, 4) for k, v in steps.items()},
                  "predicted_minutes": {f"{k:g}": round(v, 2) for k, v in predicted.items()},
                  "reference_machine": REFERENCE_RUN["machine"],
                  "reference_step_seconds": REFERENCE_RUN["step_seconds"], "machine": machine()}
    write_json(record_path, record)
    return record


def resolve_run_budget(config, data_dir: str, folder: str, earlier: bool = False, keep: bool = False,
                       may_measure: bool = True) -> dict:
    """``resolve_budget_scale`` for a run configuration (``common.pipeline.RunConfig``) whose data is in
    ``data_dir``, recorded in ``folder``/budget.json; its step times are measured with the run's teacher, pyramid,
    input size and device."""
    overrides = {**config.base_overrides(data_dir), **config.foundation_overrides(), "fpn": config.fpn}
    measure = (lambda: measure_step_seconds(config.dataset, data_dir, overrides)) if may_measure else None
    return resolve_budget_scale(config.budget_scale, config.profile_settings, os.path.join(folder, BUDGET_FILE),
                                measure, earlier=earlier, keep=keep)


def describe_scale(record: dict, profile_name: str = "quick") -> str:
    """One line for the summary and the log: the scale and why."""
    scale = record["scale"]
    if record.get("how") != "auto":
        return (f"Step budgets: the {profile_name} profile's x {scale:g} "
                f"({'--budget_scale given' if record.get('how') == 'given' else record.get('how', '')}).")
    steps, predicted = record["step_seconds"], record["predicted_minutes"]
    return (f"Step budgets: the {profile_name} profile's x {scale:g}, chosen for this machine (--budget_scale auto): "
            f"a teacher step took {steps['teacher']:.2f} s and a student step {steps['student']:.2f} s here "
            f"({record['reference_step_seconds']['teacher']:.2f} s and "
            f"{record['reference_step_seconds']['student']:.2f} s on the machine the profile was timed on); "
            f"predicted main job " + ", ".join(f"{m:.1f} min at x{s}" for s, m in predicted.items()) +
            f", of {record['minutes']:g} min with {1 - record['safety']:.0%} kept spare. "
            "--budget_scale 1 trains the profile's own budgets.")
