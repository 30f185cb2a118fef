"""Mixed precision on the CPU: bf16 autocast around a network's forward pass.

MONAI's engines autocast on CUDA only (``amp``); on a CPU they train in fp32 whatever ``amp`` says.
``autocast_network`` gives a bundle's ``amp`` a meaning there too: the network runs under
``torch.autocast("cpu", torch.bfloat16)`` and hands float32 outputs to the loss, so the loss, the gradients'
accumulation and the optimizer stay in fp32 (no gradient scaler is needed for bf16). The wrapper holds the same
module, so the optimizer, the checkpoints and the exported model are those of the network itself.

bf16 pays only where the CPU computes it natively (AVX512-BF16 or AMX; on the 2-core AMD EPYC with AVX512-BF16
these bundles are developed on, the demo's TS-KD pre-training took 0.55-0.68x of its fp32 time, the skip student
0.78-0.86x and a reference step 0.58x, ``scripts/bench/train_step.py`` and the README).
Elsewhere oneDNN emulates it, slower than fp32, so ``amp`` there trains in fp32 and says so once.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.utils._pytree import tree_map

__all__ = ["CpuAutocast", "autocast_network", "cpu_bf16_native", "engine_amp"]

logger = logging.getLogger(__name__)


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


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
    """The network a bundle trains with: wrapped in ``CpuAutocast`` when ``amp`` is asked for on a CPU with bf16
    instructions; as it is otherwise (on CUDA the engines' own ``amp`` autocasts; on a CPU without bf16
    instructions it trains in fp32, with one warning). Validation uses the plain network, in fp32."""
    if not amp or torch.device(device).type != "cpu":
        return network
    if cpu_bf16_native():
        return CpuAutocast(network)
    _warn_no_bf16()
    return network


@functools.cache
def _warn_no_bf16() -> None:
    """Once per process."""
    logger.warning("amp: this CPU has no bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast is slower "
                   "than fp32; training in fp32 (recipe.json records the precision). --amp false silences this.")


def engine_amp(amp: bool, device: torch.device | str) -> bool:
    """The engines' ``amp``: only on CUDA (on the CPU ``autocast_network`` does it)."""
    return bool(amp) and torch.device(device).type == "cuda"
