"""How close the synthetic transfer set is to the real images, and whether it copies them.

Paper: PSNR and MSE on the 0-255 scale against the real images (≈ 27.7-28.0 dB, MSE ≈ 104-111 on all
datasets). Here each synthetic image is compared with its nearest real training image (lowest MSE);
a PSNR above ``memorization_psnr`` flags a near-copy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import numpy as np
import torch

from common.data.datalists import load_datalist
from common.data.io import record_written

__all__ = ["quality_report", "load_images", "image_transform"]


def image_transform(image_size: int, channels: int = 1) -> Callable:
    """The bundles' image preprocessing without augmentation: load, scale the 0.5-99.5 percentiles to
    [0, 1], resize to ``image_size`` (area). What the generator trains on and is compared with."""
    from monai.transforms import Compose, EnsureTyped, Resized, ScaleIntensityRangePercentilesd

    from common.data.transforms import LoadImage2Dd

    return Compose([LoadImage2Dd("image", in_channels=channels),
                    ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True),
                    Resized("image", (image_size, image_size), mode="area"),
                    EnsureTyped("image", dtype=torch.float32)])


def load_images(datalist_file: str, key: str, transform: Callable) -> torch.Tensor:
    """All images of one split through ``transform`` (which yields ``image`` in [0, 1]): (N, C, S, S)."""
    return torch.stack([torch.as_tensor(transform(d)["image"]).float() for d in load_datalist(datalist_file, key)])


def quality_report(synthetic: torch.Tensor, real: torch.Tensor, out_dir: str, memorization_psnr: float = 40.0,
                   grid: int = 8) -> dict:
    """PSNR/MSE of each synthetic image against its nearest real image; JSON and a PNG grid.

    Args:
        synthetic: (N, C, S, S) in [0, 1].
        real: (M, C, S, S) in [0, 1], the real training images.
        out_dir: where ``quality.json`` and ``samples.png`` go.
        memorization_psnr: PSNR (dB) above which a synthetic image counts as a near-copy.
        grid: images per row of the figure (synthetic row, then real row).

    Returns:
        ``{"mean_psnr", "mean_mse", "near_copies", "count", ...}`` (also written to ``quality.json``).
    """
    s = (synthetic.flatten(1) * 255).double()
    r = (real.flatten(1) * 255).double()
    mse_all = (s.pow(2).sum(1, keepdim=True) - 2 * s @ r.T + r.pow(2).sum(1)[None]) / s.shape[1]
    mse, nearest = mse_all.clamp_min(0).min(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse), torch.full_like(mse, math.inf))
    copies = [int(i) for i in torch.nonzero(psnr > memorization_psnr).flatten()]
    report = {"count": int(s.shape[0]), "reference_count": int(r.shape[0]), "mean_psnr": float(psnr[torch.isfinite(psnr)].mean())
              if torch.isfinite(psnr).any() else math.inf, "mean_mse": float(mse.mean()),
              "memorization_psnr": memorization_psnr, "near_copies": copies,
              "per_image": [{"psnr": float(p), "mse": float(m), "nearest_real": int(n)}
                            for p, m, n in zip(psnr, mse, nearest)]}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "quality.json"), "w") as f:
        json.dump(report, f, indent=1)
    _grid(synthetic[:grid], real[nearest[:grid]], os.path.join(out_dir, "samples.png"))
    record_written(out_dir, "quality.json", "samples.png")
    return report


def _grid(synthetic: torch.Tensor, nearest: torch.Tensor, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = synthetic.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for row, (title, images) in enumerate((("synthetic", synthetic), ("nearest real", nearest))):
        for i in range(n):
            img = images[i].permute(1, 2, 0).numpy()
            axes[row][i].imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1), cmap="gray")
            axes[row][i].axis("off")
        axes[row][0].set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
