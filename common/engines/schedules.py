"""Learning-rate schedules with a linear warm-up, chosen by name in a bundle (``lr_schedule``)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from monai.optimizers import WarmupCosineSchedule

from common.settings import SettingError

__all__ = ["warmup_schedule", "LR_SCHEDULES"]

LR_SCHEDULES = ("cosine", "poly")


def warmup_schedule(optimizer: Optimizer, kind: str, warmup_steps: int, total_steps: int,
                    power: float = 0.9) -> LRScheduler:
    """A linear warm-up over ``warmup_steps``, then a decay to 0 at ``total_steps``, stepped per iteration.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        kind: ``cosine`` (MONAI's ``WarmupCosineSchedule``) or ``poly``, ``(1 - t) ** power`` after the warm-up,
            as SAMed trains its LoRA teacher (the paper's teacher recipe).
        warmup_steps: iterations of linear warm-up from 0.
        total_steps: iterations in the run.
        power: the polynomial decay's exponent.

    Returns:
        The scheduler.
    """
    if kind == "cosine":
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=total_steps)
    if kind != "poly":
        raise SettingError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}.")
    warmup, total = max(0, int(warmup_steps)), max(1, int(total_steps))

    def scale(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup)) ** power

    return LambdaLR(optimizer, scale)
