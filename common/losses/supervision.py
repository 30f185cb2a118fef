"""Deep supervision the way nnU-Net weights it, on MONAI's ``DeepSupervisionLoss``."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss

__all__ = ["DeepSupervised"]


class DeepSupervised(DeepSupervisionLoss):
    """``loss`` summed over a deeply supervised network's outputs, level ``i`` weighted by 1/2^i and the weights
    normalised to sum to 1 (nnU-Net's weighting; its coarsest level, weighted 0 there, is simply not built by
    ``common.models.build_dynunet``).

    It takes MONAI ``DynUNet``'s training output as it comes (the outputs stacked on dimension 1, one more
    dimension than the target) as well as a list of outputs or a single output (evaluation mode), which is
    ``loss`` itself. Outputs smaller than the target are compared with the target resampled to their size.

    Args:
        loss: the loss of one output, e.g. MONAI ``DiceCELoss``.
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__(loss)

    def get_weights(self, levels: int = 1) -> list[float]:
        weights = [0.5 ** level for level in range(max(1, levels))]
        return [w / sum(weights) for w in weights]

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - MONAI's argument name
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)
