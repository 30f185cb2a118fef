"""Knowledge-distillation training on MONAI's ``SupervisedTrainer`` (only ``_iteration`` changes)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

__all__ = ["DistillationTrainer", "TEACHER_LOGITS", "TEACHER_HIDDEN", "optimisation_step"]

# Batch keys of cached teacher outputs (see common.engines.teacher_cache).
TEACHER_LOGITS = "teacher_logits"
TEACHER_HIDDEN = "teacher_hidden"


class DistillationTrainer(SupervisedTrainer):
    """Trains a ``DistillationStudent`` to match a teacher on unlabelled images.

    The teacher's outputs come from the batch when it carries cached ``teacher_logits`` /
    ``teacher_hidden`` (one teacher pass for the whole run), otherwise from the teacher itself, run in
    ``eval()`` under ``torch.no_grad()``. ``loss_function`` is a ``TaskSpecificKDLoss``.

    Args:
        teacher: the teacher (``SamTeacher``); may be None when every batch carries cached outputs.
        args, kwargs: as ``SupervisedTrainer``.
    """

    def __init__(self, *args, teacher: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.state.device).eval()  # the online teacher runs where the student does
            for p in teacher.parameters():
                p.requires_grad_(False)

    def teacher_outputs(self, batchdata: dict, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cached outputs from the batch, else one no-grad teacher forward."""
        if TEACHER_LOGITS in batchdata and TEACHER_HIDDEN in batchdata:
            device = inputs.device
            return {"low_res_logits": batchdata[TEACHER_LOGITS].to(device).float(),
                    "hidden": batchdata[TEACHER_HIDDEN].to(device).float()}
        if self.teacher is None:
            raise ValueError("DistillationTrainer needs a teacher, or batches with cached teacher outputs")
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher.forward_all(inputs)

    def _iteration(self, engine: DistillationTrainer, batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs = batchdata[Keys.IMAGE].to(engine.state.device, non_blocking=engine.non_blocking)
        if hasattr(inputs, "as_tensor"):
            inputs = inputs.as_tensor()
        target = self.teacher_outputs(batchdata, inputs)
        engine.state.output = {Keys.IMAGE: inputs}

        def forward_loss() -> None:
            student = engine.network(inputs)
            engine.state.output[Keys.PRED] = student["logits"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(student["logits"], student["hidden"], target["low_res_logits"], target["hidden"])
            engine.state.output[Keys.LOSS] = terms["loss"]
            engine.state.output["kd_logit"] = terms["logit"].detach()
            engine.state.output["kd_hidden"] = terms["hidden"].detach()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        optimisation_step(engine, forward_loss)
        return engine.state.output


def optimisation_step(engine: SupervisedTrainer, forward_loss) -> None:
    """One training step as ``SupervisedTrainer._iteration`` takes it (zero grad, forward under AMP when
    enabled, backward, step, with MONAI's iteration events), around a ``forward_loss`` that sets
    ``engine.state.output[Keys.LOSS]``."""
    engine.network.train()
    engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
    if engine.amp and engine.scaler is not None:
        with torch.autocast("cuda", **engine.amp_kwargs):
            forward_loss()
        engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    else:
        forward_loss()
        engine.state.output[Keys.LOSS].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
