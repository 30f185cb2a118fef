"""Mixed precision on the CPU: bf16 autocast around a network's forward pass.

MONAI's engines autocast on CUDA only (``amp``); on a CPU they train in fp32 whatever ``amp`` says.
``autocast_network`` gives a bundle's ``amp`` a meaning there too: the network runs under
``torch.autocast("cpu", torch.bfloat16)`` and hands float32 outputs to the loss, so the loss, the gradients'
accumulation and the optimizer stay in fp32 (no gradient scaler is needed for bf16). The wrapper holds the same
module, so the optimizer, the checkpoints and the exported model are those of the network itself.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

__all__ = ["CpuAutocast", "autocast_network", "engine_amp"]


class CpuAutocast(torch.nn.Module):
    """``net`` under bf16 autocast on the CPU; its outputs (a tensor, or lists / tuples / dicts of them, e.g. deep
    supervision's) come back as float32."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.net(*args, **kwargs)
        return tree_map(lambda t: t.float() if torch.is_tensor(t) and t.is_floating_point() else t, out)


def autocast_network(network: torch.nn.Module, amp: bool, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The network a bundle trains and validates with: wrapped in ``CpuAutocast`` when ``amp`` is asked for on
    a CPU; as it is otherwise (on CUDA the engines' own ``amp`` autocasts)."""
    return CpuAutocast(network) if amp and torch.device(device).type == "cpu" else network


def engine_amp(amp: bool, device: torch.device | str) -> bool:
    """The engines' ``amp``: only on CUDA (on the CPU ``autocast_network`` does it)."""
    return bool(amp) and torch.device(device).type == "cuda"
