"""The synthetic transfer set, end to end: sample from the trained generator, write, report quality."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn as nn

from common.provenance import save_torch
from common.synth.diffusion import write_synthetic_set
from common.synth.quality import load_images, quality_report

__all__ = ["make_synthetic_transfer_set", "report_folder", "save_generator"]


def make_synthetic_transfer_set(denoiser: nn.Module, checkpoint: str, out: str, reference: str, transform: Callable,
                                n: int = 1000, image_size: int = 128, channels: int = 1, sampler: str = "ddim",
                                steps: int = 50, batch_size: int = 16, seed: int = 0,
                                device: str | torch.device = "cpu", prediction_type: str = "epsilon") -> dict:
    """Sample ``n`` images into ``out`` (with ``manifest.json``), then write ``out/quality.json`` (PSNR/MSE
    against the nearest of ``reference``'s training images) and ``out/samples.png``.

    Args:
        denoiser: the generator's architecture.
        checkpoint: its trained (EMA) weights.
        out: the transfer-set folder (a ``datalist.json`` the pretrain bundle reads as ``transfer_file``).
        reference: the dataset's datalist (its training images are the real reference).
        transform: preprocessing giving ``image`` in [0, 1] at the generator's size.
        n, image_size, channels, sampler, steps, batch_size, seed, device, prediction_type: see
            ``common.synth.diffusion.sample``.

    Returns:
        The quality report (with the manifest under ``"manifest"``).
    """
    manifest = write_synthetic_set(denoiser, checkpoint, out, n, image_size, channels, sampler, steps, batch_size,
                                   seed, device, prediction_type)
    synthetic = load_images(os.path.join(out, "datalist.json"), "training", transform)
    real = load_images(reference, "training", transform)
    report = quality_report(synthetic, real, out)
    print(f"synthetic transfer set: {n} images in {out}; mean PSNR {report['mean_psnr']:.2f} dB, mean MSE "
          f"{report['mean_mse']:.1f} (0-255) against the nearest real image; near-copies: {len(report['near_copies'])}")
    return {**report, "manifest": manifest}


def report_folder(synth_dir: str, reference: str, transform: Callable) -> dict:
    """Quality report (``quality.json``, ``samples.png``) of an existing synthetic folder against ``reference``'s
    training images."""
    synthetic = load_images(os.path.join(synth_dir, "datalist.json"), "training", transform)
    return quality_report(synthetic, load_images(reference, "training", transform), synth_dir)


def save_generator(model: nn.Module, path: str) -> str:
    """Write the generator's (EMA) weights as the bundle's ``models/model.pt``."""
    return save_torch(model.state_dict(), path)
