"""Distillation losses: task-specific KD (logits + hidden state) and task-agnostic KD (hidden state).

Paper, student pre-training: loss = w_logit * MSE(student logits, teacher low-res logits interpolated to
the student's output size) + w_hidden * MSE(student last hidden state, teacher last hidden state); the
best setting (TS-KD8) is w_logit 0.2, w_hidden 0.1. The ablation's other rows (TS-KD1..7) change the
logit loss (MSE or cross-entropy on class probabilities), how the logit maps are matched, and the
weights; all are options here, so each row is a config override.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TaskSpecificKDLoss", "match_logits", "align_grid"]

LOGIT_LOSSES = ("mse", "ce")
LOGIT_MATCHING = ("interpolate", "none", "drop_last")


def align_grid(teacher_hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a teacher hidden state (B, C, h, w) to the student's grid: area-averaged when shrinking
    (LiteMedSAM's stride-4 map onto ViT-Tiny's stride 16), bilinear when growing."""
    size = tuple(size)
    if tuple(teacher_hidden.shape[-2:]) == size:
        return teacher_hidden
    if teacher_hidden.shape[-2] >= size[0] and teacher_hidden.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(teacher_hidden, size)
    return F.interpolate(teacher_hidden, size=size, mode="bilinear", align_corners=False)


def match_logits(student: torch.Tensor, teacher: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring student and teacher logit maps to one size.

    Args:
        student: (B, K, S, S) student logits.
        teacher: (B, K, h, w) teacher low-resolution logits.
        mode: ``interpolate`` — teacher upsampled (bilinear) to the student's size (TS-KD2, 5-8);
            ``none`` — the teacher's maps are not interpolated: the student's are average-pooled to the
            teacher's size (TS-KD3); ``drop_last`` — as ``interpolate`` with the last mask channel removed
            from both (TS-KD1, "last mask dimension removed").

    Returns:
        (student, teacher) of equal shape.
    """
    if mode not in LOGIT_MATCHING:
        raise ValueError(f"logit matching must be one of {LOGIT_MATCHING}, got '{mode}'")
    if mode == "none":
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.adaptive_avg_pool2d(student, teacher.shape[-2:])
        return student, teacher
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    if mode == "drop_last":
        return student[:, :-1], teacher[:, :-1]
    return student, teacher


class TaskSpecificKDLoss(nn.Module):
    """w_logit * logit loss + w_hidden * hidden-state MSE.

    Args:
        w_logit: weight of the logit term (0 disables it: task-agnostic KD).
        w_hidden: weight of the hidden-state term (0 disables it, TS-KD6).
        logit_loss: ``mse`` on pre-softmax logits, or ``ce``: cross-entropy of the student's softmax
            against the teacher's class probabilities (TS-KD4, 5).
        logit_matching: see ``match_logits``.
        temperature: softmax temperature for ``ce``.
    """

    def __init__(self, w_logit: float = 0.2, w_hidden: float = 0.1, logit_loss: str = "mse",
                 logit_matching: str = "interpolate", temperature: float = 1.0) -> None:
        super().__init__()
        if logit_loss not in LOGIT_LOSSES:
            raise ValueError(f"logit_loss must be one of {LOGIT_LOSSES}, got '{logit_loss}'")
        match_logits(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), logit_matching)  # validate the mode
        self.w_logit, self.w_hidden = w_logit, w_hidden
        self.logit_loss, self.logit_matching, self.temperature = logit_loss, logit_matching, temperature

    def forward(self, student_logits: torch.Tensor | None, student_hidden: torch.Tensor | None,
                teacher_logits: torch.Tensor | None, teacher_hidden: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Args:
            student_logits: (B, K, S, S).
            student_hidden: (B, C, g, g), already projected to the teacher's width.
            teacher_logits: (B, K, h, w) low-resolution teacher logits.
            teacher_hidden: (B, C, h', w'), brought to the student's grid g x g by ``align_grid``.

        Returns:
            ``loss`` (the weighted sum), ``logit`` and ``hidden`` (the unweighted terms; 0 when off).
        """
        device = (student_logits if student_logits is not None else student_hidden).device
        zero = torch.zeros((), device=device)
        logit = hidden = zero
        if self.w_logit:
            s, t = match_logits(student_logits.float(), teacher_logits.float(), self.logit_matching)
            if self.logit_loss == "mse":
                logit = F.mse_loss(s, t)
            else:
                target = torch.softmax(t / self.temperature, dim=1)
                logit = -(target * torch.log_softmax(s / self.temperature, dim=1)).sum(1).mean()
        if self.w_hidden:
            hidden = F.mse_loss(student_hidden.float(), align_grid(teacher_hidden.float(), student_hidden.shape[-2:]))
        return {"loss": self.w_logit * logit + self.w_hidden * hidden, "logit": logit, "hidden": hidden}
