"""The unlabelled transfer set that distillation runs on.

Paper, step 1: the labelled images are augmented (rotation, scaling, affine) to a fixed number of
images. Until the diffusion model supplies synthetic images, this augmented set is the transfer set;
it is written to disk, seeded, so the views are fixed (which is what lets the teacher outputs be cached).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandAffined

from common.data.datalists import load_datalist
from common.data.io import atomic_folder

__all__ = ["make_transfer_set"]


def make_transfer_set(datalist_file: str, out: str, size: int = 1000, labels: int = 0, seed: int = 0) -> dict:
    """Write ``size`` images: the labelled training images, then seeded random affine views of them.

    Args:
        datalist_file: the dataset's datalist; its ``training`` images (first ``labels`` of them) are used.
        out: output folder (replaced atomically).
        size: number of images in the transfer set.
        labels: label budget (0: all training images).
        seed: augmentation seed.

    Returns:
        The transfer set's datalist (``training``: ``[{"image": ...}]``), also written to ``out/datalist.json``.
    """
    sources = [{"image": d["image"]} for d in load_datalist(datalist_file, "training", limit=labels or None)]
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    augment = RandAffined("image", prob=1.0, rotate_range=0.26, scale_range=0.15, shear_range=0.1,
                          translate_range=0.05, mode="bilinear", padding_mode="zeros")
    augment.set_random_state(seed=seed)
    info = {"name": "transfer", "source": os.path.abspath(datalist_file), "size": size, "labels": labels,
            "seed": seed, "training": []}
    with atomic_folder(out, info) as tmp:
        for i in range(size):
            src = sources[i % len(sources)]
            data = load(dict(src))
            if i >= len(sources):  # the originals first, then augmented views
                data = augment(data)
            name = f"t{i:05d}.nii.gz"
            image = data["image"]
            array = np.asarray(image[0] if image.shape[0] == 1 else np.moveaxis(np.asarray(image), 0, -1), np.float32)
            nib.save(nib.Nifti1Image(array, np.asarray(image.affine, np.float64)), os.path.join(tmp, name))
            info["training"].append({"image": name, "source": os.path.basename(src["image"])})
    return info
