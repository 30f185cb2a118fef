"""Profiles: the training budget of every stage and the transfer set's size, as a registry of plain data.

README.md gives what each profile costs and why its settings are what they are. Budgets are in optimizer steps
(``steps``, in epochs of ``epoch_length`` steps with a validation after each; ``patience`` validations without a
better one stop early, a patience that grows to ``patience_fraction`` of the run, judged on the moving average of
weight ``val_smoothing``: common.engines.budget.plateau), so a set of 11 images and one of 300 both train to convergence; ``epochs`` counts passes
over the data instead. A stage's other keys (``learning_rate``, ``lr_schedule``, ...) are bundle overrides.
Pre-training is budgeted in transfer images seen (``images``), as the paper gives every method the same epochs:
each method then takes the steps its own batch needs. ``pretrain_batch`` scales a method's recipe batch
(``PRETRAIN_BATCH``) down where the machine needs it. The synthetic transfer set comes from a DDPM trained on
``augmented`` views of the labelled images (with ``synth_augmentation``'s mild ranges where given); ``synth`` holds
the synth bundle's overrides and ``sample_steps`` the DDIM steps. ``transfer_source``: the profile's default source
of the transfer set.
"""

from __future__ import annotations

import math

__all__ = ["PROFILES", "PRETRAIN_BATCH", "METHODS", "PRETRAINED", "HEAD_PRETRAINED", "SELF_SUPERVISED",
           "SCALED_STAGES", "stage_budget", "pretrain_recipe", "describe_budget"]

# The students' and the reference's budget: 750 steps, stopped when the best of the validation Dice's moving
# average (weight 0.5) is older than max(3 validations, half the run). Replayed on 10 measured curves to 750 steps
# (docs/results/convergence/stop_rules.md) this rule kept checkpoints of mean test Dice 0.8073, against 0.7755 for
# the former 300-step cap with patience 3 and 0.8130 for the best checkpoint on each curve.
STUDENT_STOP = {"steps": 750, "patience": 3, "patience_fraction": 0.5, "val_smoothing": 0.5}
MILD_AUGMENTATION = {"rotate": 0.05, "scale": 0.05, "shear": 0.0, "translate": 0.02}
# The teacher's quick budget: as many steps as keep the main job (demo, all labels, 2 CPU cores) under 15 min.
# bf16 steps (0.76x an fp32 one): 200 fit where 175 fp32 steps did (225 took the job to 15 min 32 s;
# docs/results/main_job). Over 3 seeds they scored above the 175 fp32 steps in mean, inside the noise (4 of 6 runs
# higher; docs/results/teacher_bf16); the teacher still ends at or one validation before its cap.
# ``minutes``: the quick profile's time target for the main job (demo, all labels, 2 CPU cores), which
# ``--budget_scale auto`` fills on machines faster than the one these budgets were set on.
PROFILES = {
    "quick": {"minutes": 15, "teacher": {"steps": 200, "patience": 3}, "pretrain": {"images": 4000},
              "student": STUDENT_STOP, "epoch_length": 25, "transfer": 160,
              "pretrain_batch": {"tskd": 16, "takd": 16}, "transfer_source": "augment", "augmented": 160,
              "synth": {"steps": 1500, "epoch_length": 100, "image_size": 32, "denoiser_width": 16, "learning_rate": 1e-3,
                        "prediction_type": "v_prediction", "ema_decay": 0.995},
              "synth_augmentation": MILD_AUGMENTATION, "sample_steps": 20},
    # The paper's recipe (section 3 and its tables); the teacher's lr, warm-up and decay (SAMed's) are the bundle's.
    "paper": {"teacher": {"epochs": 160}, "pretrain": {"epochs": 1600},
              "student": {"epochs": 160}, "transfer": 3000, "pretrain_batch": {}, "transfer_source": "synth",
              "augmented": 1000, "synth": {"epochs": 300, "denoiser_width": 32, "ema_decay": 0.999}, "sample_steps": 50},
    "smoke": {"teacher": {"steps": 2}, "pretrain": {"images": 8}, "student": {"steps": 2},  # wiring check (tests)
              "epoch_length": 1, "transfer": 8, "pretrain_batch": {m: 4 for m in ("tskd", "takd", "mae", "mocov3")},
              "transfer_source": "synth", "augmented": 8,
              "synth": {"epochs": 1, "image_size": 32, "denoiser_width": 16, "ema_decay": 0.9}, "sample_steps": 2},
}
# Each pre-training method's own batch: the paper's for the distillations, MAE's and MoCo v3's published ones.
PRETRAIN_BATCH = {"tskd": 48, "takd": 48, "mae": 64, "mocov3": 32}
METHODS = ("tskd", "takd", "mae", "mocov3", "imagenet_mae", "scratch")
# Methods that pre-train on a transfer set.
PRETRAINED = ("mae", "mocov3", "takd", "tskd")
# Methods whose pre-training trains the student's FPN head (TS-KD's logit term); the others' head is untrained.
HEAD_PRETRAINED = ("tskd",)
# The stages whose step cap --budget_scale multiplies (pre-training is budgeted in transfer images, as the paper's
# equal epochs, and does not stop early).
SCALED_STAGES = ("teacher", "student")
# Pre-training methods that are a short override of the pretrain bundle's train.json (configs/<method>.json).
SELF_SUPERVISED = ("mae", "mocov3")


def stage_budget(profile: dict, stage: str, scale: float = 1.0) -> dict:
    """A stage's overrides from the profile: its budget (``steps`` with ``epoch_length`` and ``patience``, or
    ``epochs``) and any other setting the profile gives it. ``scale`` multiplies the step cap of the stages that
    stop on a validation plateau (teacher and student; the reference takes the student's at x1), rounded to whole
    epochs (``--budget_scale``, common.pipeline.budget_scale)."""
    budget = dict(profile[stage])
    if budget.get("steps"):
        budget.update(epoch_length=profile["epoch_length"], patience=budget.get("patience", 0))
        if stage in SCALED_STAGES and scale != 1:
            steps = budget["steps"] * scale
            budget["steps"] = max(1, round(steps / budget["epoch_length"])) * budget["epoch_length"]
    return budget


def pretrain_recipe(profile: dict, method: str) -> dict:
    """The pre-training stage's batch and budget for ``method``: its recipe's batch (``PRETRAIN_BATCH``, or the
    profile's scaled one) and, for a budget in transfer images seen, the steps that batch needs."""
    batch = profile["pretrain_batch"].get(method, PRETRAIN_BATCH[method])
    budget = {k: v for k, v in profile["pretrain"].items() if k != "images"}
    if "images" in profile["pretrain"]:
        budget.update(steps=math.ceil(profile["pretrain"]["images"] / batch), epoch_length=profile["epoch_length"],
                      patience=0)
    return {"batch_size": batch, **budget}


def describe_budget(overrides: dict) -> str:
    if overrides.get("steps"):
        patience = overrides.get("patience")
        fraction, smoothing = overrides.get("patience_fraction"), overrides.get("val_smoothing")
        rule = (f", early stop after {patience} validations without a better one" +
                (f" (or {fraction:g} of the run, if longer)" if fraction else "") +
                (f" on a moving average (weight {smoothing:g})" if smoothing else "")) if patience else ""
        return f"at most {overrides['steps']} steps" + rule
    return f"{overrides.get('epochs')} epochs"
