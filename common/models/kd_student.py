"""The student as distillation trains it: ViT-FPN plus a learned projection of its hidden state."""

from __future__ import annotations

import torch
import torch.nn as nn

from common.models.vit_fpn import ViTFPN

__all__ = ["DistillationStudent"]


class DistillationStudent(nn.Module):
    """Wraps the student with a 1x1 projection from its width (192) to the teacher's (256).

    The projection exists only to compare hidden states during pre-training; ``student`` is what is
    saved and fine-tuned afterwards.

    Args:
        student: the ViT-FPN student.
        teacher_dim: channels of the teacher's hidden state (256 for SAM and LiteMedSAM).
    """

    def __init__(self, student: ViTFPN, teacher_dim: int = 256) -> None:
        super().__init__()
        self.student = student
        self.proj = nn.Conv2d(student.encoder.embed_dim, teacher_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, S, S) -> ``logits`` (B, K, S, S) and projected ``hidden`` (B, teacher_dim, S/16, S/16)."""
        logits, hidden = self.student.forward_with_hidden(x)
        return {"logits": logits, "hidden": self.proj(hidden)}
