"""A PNG a person can look at: test images, their ground truth, and each model's prediction."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from common.data.datalists import class_names, load_datalist
from common.data.io import read_prediction

__all__ = ["save_prediction_grid"]


def save_prediction_grid(datalist_file: str, predictions: dict[str, str], out_png: str, n: int = 4) -> str:
    """One row per test image: the image, the ground truth, then each model's label map.

    Args:
        datalist_file: the dataset's datalist (its ``test`` split).
        predictions: column title -> folder of ``<image name>_seg.nii.gz`` files (an inference bundle's output).
        out_png: where to write the figure.
        n: number of test images (spread over the split).

    Returns:
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = load_datalist(datalist_file, "test")
    picks = [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)]
    names = class_names(datalist_file)
    columns = ["image", "ground truth", *predictions]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.4 * len(columns), 2.4 * len(picks)), squeeze=False)
    for row, item in zip(axes, picks):
        stem = os.path.basename(item["image"]).split(".")[0]
        maps = [np.asarray(nib.load(item["image"]).dataobj, np.float32), np.asarray(nib.load(item["label"]).dataobj)]
        maps += [read_prediction(folder, item["image"]) for folder in predictions.values()]
        for col, (ax, title, m) in enumerate(zip(row, columns, maps)):
            m = np.squeeze(m)  # shown as stored: rows down, columns across
            if col == 0:
                ax.imshow((m - m.min()) / (np.ptp(m) or 1.0), cmap="gray")  # grey (H, W) or RGB (H, W, 3)
            else:
                ax.imshow(m, cmap="viridis", vmin=0, vmax=len(names) - 1, interpolation="nearest")
            ax.set_title(title if ax is axes[0][col] else "", fontsize=9)
            ax.axis("off")
        row[0].text(-0.05, 0.5, stem, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=7)
    fig.suptitle("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(names)), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
