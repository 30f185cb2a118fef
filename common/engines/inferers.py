"""Test-time mirroring, as nnU-Net predicts: the network's softmax averaged over every combination of flips of
the spatial axes (4 passes for a 2D image), returned as logits of that average."""

from __future__ import annotations

import itertools

import torch
from monai.inferers import Inferer

__all__ = ["MirrorInferer"]


class MirrorInferer(Inferer):
    """Average the softmax of ``network`` over all flips of the spatial axes (``axes``: which of them; default
    all) and return its log, so an argmax or a softmax after it reads the averaged probabilities."""

    def __init__(self, axes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.axes = axes

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        spatial = tuple(range(2, inputs.ndim)) if self.axes is None else tuple(2 + a for a in self.axes)
        total = None
        combos = [c for r in range(len(spatial) + 1) for c in itertools.combinations(spatial, r)]
        for dims in combos:
            x = torch.flip(inputs, dims) if dims else inputs
            prob = torch.softmax(network(x, *args, **kwargs).float(), dim=1)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
        return torch.log((total / len(combos)).clamp_min(1e-8))
