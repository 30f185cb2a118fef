"""Reading checkpoints safely, and saving only what was trained.

Every load goes through ``load_state_file`` (``weights_only=True``, one clear error naming the file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from common.errors import CheckpointError, first_line

__all__ = ["load_state_file", "TrainableState", "check_state_dict", "require_file", "kd_teacher_weights"]

# Wrappers used by SAM, MAE, timm, ignite and MONAI checkpoints around the plain state dict.
_WRAPPER_KEYS = ("model", "state_dict", "network", "teacher", "student")


def load_state_file(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, torch.Tensor]:
    """Load a state dict of tensors from ``path`` with ``weights_only=True``.

    Args:
        path: checkpoint file.
        what: what the file should be, for the error message (e.g. "SAM vit_b checkpoint").
        hint: where to get the file, or how to fix the setting, appended to errors.

    Returns:
        The state dict, unwrapped from a ``{"model": ...}``-style container if needed.
    """
    suffix = f" {hint}" if hint else ""
    require_file(str(path), what, hint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle of arbitrary objects, not a torch file at all
        raise CheckpointError(f"{what} '{path}' could not be read as a PyTorch state dict ({type(e).__name__}: "
                              f"{first_line(e)}).{suffix}") from e
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping) and not isinstance(state.get(key), torch.Tensor):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} '{path}' does not hold a state dict of tensors.{suffix}")
    return dict(state)


def require_file(path: str, what: str, hint: str = "") -> str:
    """``path`` if it is a file, else one ``CheckpointError`` naming it and the fix."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: '{path}'." + (f" {hint}" if hint else ""))
    return path


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: str,
                     what: str, hint: str = "") -> None:
    """Raise one ``CheckpointError`` listing every missing, unexpected and wrongly shaped key.

    Args:
        state: what the file holds.
        expected: the model's state dict (names and shapes wanted).
        path: the file, for the message.
        what: what the file should be.
        hint: how to fix it.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" … (+{len(names) - 5} more)" if len(names) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({show(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({show(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} of the wrong shape ({show(wrong)})")
    raise CheckpointError(f"{what} '{path}' does not fit the model: " + "; ".join(parts) + "." + (f" {hint}" if hint else ""))


class TrainableState:
    """The trained part of a module, for ignite checkpoints: its ``trained_parameter_names()`` when it
    defines them (the teacher, whose parameters a distillation run freezes), else its parameters with
    ``requires_grad``.

    The LoRA teacher saves LoRA + mask decoder only (a few MB instead of SAM's 357 MB); the frozen base
    comes from the foundation-model checkpoint when the teacher is rebuilt.

    Args:
        module: the model whose trainable parameters are saved and restored.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def keys(self) -> list[str]:
        if hasattr(self.module, "trained_parameter_names"):
            return list(self.module.trained_parameter_names())
        return [n for n, p in self.module.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        full = self.module.state_dict()
        return {k: full[k] for k in self.keys()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], path: str = "<checkpoint>") -> None:
        expected = self.state_dict()
        check_state_dict(state, expected, path, "trained-weights checkpoint",
                         "It must come from a teacher with the same variant, num_classes, image_size and LoRA rank.")
        self.module.load_state_dict(dict(state), strict=False)


def kd_teacher_weights(method: str, teacher_checkpoint: str) -> str | None:
    """The trained-teacher file distillation needs: required for ``tskd``, none for ``takd``.

    Task-specific KD distils the fine-tuned teacher; task-agnostic KD distils the original foundation
    encoder (paper, baselines), so no trained weights are loaded.
    """
    if method == "takd":
        return None
    if method != "tskd":
        raise CheckpointError(f"unknown distillation method '{method}': use 'tskd' (task-specific) or 'takd' "
                              "(task-agnostic).")
    return require_file(teacher_checkpoint, "trained teacher checkpoint (teacher_checkpoint)",
                        "Task-specific KD distils the fine-tuned teacher: train bundles/<dataset>_teacher first and "
                        "pass its models/model.pt as --teacher_checkpoint, or use --method takd.")
