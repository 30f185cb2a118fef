"""What the labelling loop reads from a trained run, and how two label maps disagree (no MONAI Label needed)."""

from __future__ import annotations

import numpy as np

from common.pipeline.stages import stage_overrides

__all__ = ["INFERENCE_KEYS", "run_overrides", "disagreement"]

# What a trained stage's record says it was trained with that its inference must repeat.
INFERENCE_KEYS = ("image_size", "fpn", "num_heads", "dataset_dir", "teacher", "sam_checkpoint", "lora_rank")


def run_overrides(model_dir: str) -> dict:
    """The settings a stage trained with (its ``done.json``, written by tskd-run or tskd-grid) that its network
    and preprocessing depend on; {} for a bundle trained by hand."""
    overrides = stage_overrides(model_dir)
    return {k: overrides[k] for k in INFERENCE_KEYS if k in overrides}


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """1 - mean Dice over the foreground classes present in either label map (0 when neither has any)."""
    classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c != 0]
    if not classes:
        return 0.0
    dice = [2.0 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in classes]
    return float(1.0 - np.mean(dice))
