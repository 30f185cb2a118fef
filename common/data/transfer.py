"""The unlabelled transfer set that distillation runs on.

Paper, step 1: the labelled images are augmented (rotation, scaling, affine) to a fixed number of
images. Until the diffusion model supplies synthetic images, this augmented set is the transfer set;
it is written to disk, seeded, so the views are fixed (which is what lets the teacher outputs be cached).
Images are loaded and augmented by the same transforms the bundles use (``common.data.transforms``).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from common.data.datalists import load_datalist, read_datalist_info
from common.data.io import atomic_folder
from common.data.transforms import LoadImage2Dd, random_affine

__all__ = ["make_transfer_set", "TRANSFER_AUGMENTATION"]

# The transfer set's affine views (paper: rotation, scaling, affine): radians, scale and shear terms,
# translation as a fraction of the image side; every axis gets the range.
TRANSFER_AUGMENTATION = {"rotate": 0.26, "scale": 0.15, "shear": 0.1, "translate": 0.05}


def make_transfer_set(datalist_file: str, out: str, size: int = 1000, labels: int = 0, seed: int = 0,
                      augmentation: dict | None = None) -> dict:
    """Write ``size`` images: the labelled training images, then seeded random affine views of them.

    Args:
        datalist_file: the dataset's datalist; its ``training`` images (first ``labels`` of them) are used.
        out: output folder (replaced atomically).
        size: number of images in the transfer set.
        labels: label budget (0: all training images).
        seed: augmentation seed.
        augmentation: ``random_affine`` ranges (default ``TRANSFER_AUGMENTATION``).

    Returns:
        The transfer set's datalist (``training``: ``[{"image": ...}]``), also written to ``out/datalist.json``.
    """
    sources = [{"image": d["image"]} for d in load_datalist(datalist_file, "training", limit=labels or None)]
    channels = int(read_datalist_info(datalist_file).get("channels", 1))
    load = LoadImage2Dd("image", in_channels=channels)
    augment = None
    info = {"name": "transfer", "source": os.path.abspath(datalist_file), "size": size, "labels": labels,
            "seed": seed, "channels": channels, "augmentation": dict(augmentation or TRANSFER_AUGMENTATION),
            "training": []}
    with atomic_folder(out, info, sources=[os.path.dirname(os.path.abspath(datalist_file))], nested_ok=True) as tmp:
        for i in range(size):
            src = sources[i % len(sources)]
            data = load(dict(src))
            image = data["image"]
            if i >= len(sources):  # the originals first, then augmented views
                if augment is None:
                    augment = random_affine("image", image.shape[-1], prob=1.0, **info["augmentation"])
                    augment.set_random_state(seed=seed)
                image = augment(data)["image"]
            name = f"t{i:05d}.nii.gz"
            array = np.asarray(image[0] if channels == 1 else np.moveaxis(np.asarray(image), 0, -1), np.float32)
            nib.save(nib.Nifti1Image(array, np.asarray(image.affine, np.float64)), os.path.join(tmp, name))
            info["training"].append({"image": name, "source": os.path.basename(src["image"])})
    return info
