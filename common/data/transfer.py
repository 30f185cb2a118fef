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
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from common.data.convert import IMAGE_SUFFIXES, read_image
from common.data.datalists import load_datalist, read_datalist_info
from common.data.io import atomic_folder
from common.data.transforms import LoadImage2Dd, random_affine
from common.errors import DataError

__all__ = ["make_transfer_set", "TRANSFER_AUGMENTATION"]

# The transfer set's affine views (paper: rotation, scaling, affine): radians, scale and shear terms,
# translation as a fraction of the image side; every axis gets the range.
TRANSFER_AUGMENTATION = {"rotate": 0.26, "scale": 0.15, "shear": 0.1, "translate": 0.05}


def _unlabelled_sources(datalist_file: str, labels: int, unlabelled_dir: str | None) -> list[dict]:
    """Images without masks: a folder of them, or the training images beyond the label budget."""
    if unlabelled_dir:
        if not os.path.isdir(unlabelled_dir):
            raise DataError(f"unlabelled image folder '{unlabelled_dir}' not found. Give a folder of images "
                            f"({', '.join(IMAGE_SUFFIXES)}).")
        files = sorted(os.path.join(unlabelled_dir, f) for f in os.listdir(unlabelled_dir)
                       if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(unlabelled_dir, f)))
        if not files:
            raise DataError(f"'{unlabelled_dir}' holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return [{"file": f} for f in files]
    training = load_datalist(datalist_file, "training")
    if not labels or labels >= len(training):
        raise DataError("an unlabelled transfer set needs images without labels: below the full label budget "
                        f"(--labels N < {len(training)}) the training images beyond the first N are used with their "
                        "masks dropped; with every label in use, give a folder of unlabelled images (--unlabelled_dir).")
    return [{"image": d["image"]} for d in training[labels:]]


def _read_unlabelled(path: str, channels: int, size: int | None) -> MetaTensor:
    """An image file as the bundles' loader gives it: (C, H, W) float32, resized to the dataset's side."""
    array, spacing = read_image(path, channels=channels)
    image = torch.from_numpy(array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0).copy()).float()
    rows, cols = spacing or (1.0, 1.0)
    if size and tuple(image.shape[-2:]) != (size, size):
        rows, cols = rows * image.shape[-2] / size, cols * image.shape[-1] / size
        image = F.interpolate(image[None], size=(size, size), mode="area")[0]
    return MetaTensor(image, affine=torch.diag(torch.tensor([rows, cols, 1.0, 1.0], dtype=torch.float64)))


def make_transfer_set(datalist_file: str, out: str, size: int = 1000, labels: int = 0, seed: int = 0,
                      augmentation: dict | None = None, source: str = "labelled",
                      unlabelled_dir: str | None = None) -> dict:
    """Write ``size`` images: the source images, then seeded random affine views of them.

    Args:
        datalist_file: the dataset's datalist.
        out: output folder (replaced atomically).
        size: number of images in the transfer set.
        labels: label budget (0: all training images).
        seed: augmentation seed.
        augmentation: ``random_affine`` ranges (default ``TRANSFER_AUGMENTATION``).
        source: ``labelled``: the first ``labels`` training images; ``unlabelled``: images nobody labelled,
            from ``unlabelled_dir`` (any format the converters read, resized to the dataset's side) or,
            without it, the training images beyond the label budget with their masks dropped.
        unlabelled_dir: folder of unlabelled images, for ``source="unlabelled"``.

    Returns:
        The transfer set's datalist (``training``: ``[{"image": ...}]``), also written to ``out/datalist.json``.
    """
    if source not in ("labelled", "unlabelled"):
        raise DataError(f"unknown transfer source '{source}': use 'labelled' or 'unlabelled'.")
    if source == "unlabelled":
        sources = _unlabelled_sources(datalist_file, labels, unlabelled_dir)
    else:
        sources = [{"image": d["image"]} for d in load_datalist(datalist_file, "training", limit=labels or None)]
    dataset = read_datalist_info(datalist_file)
    channels = int(dataset.get("channels", 1))
    load = LoadImage2Dd("image", in_channels=channels)
    augment = None
    info = {"name": "transfer", "source": os.path.abspath(datalist_file), "size": size, "labels": labels,
            "seed": seed, "channels": channels, "augmentation": dict(augmentation or TRANSFER_AUGMENTATION),
            "images": source, "unlabelled_dir": os.path.abspath(unlabelled_dir) if unlabelled_dir else "",
            "training": []}
    with atomic_folder(out, info, sources=[os.path.dirname(os.path.abspath(datalist_file))], nested_ok=True) as tmp:
        for i in range(size):
            src = sources[i % len(sources)]
            data = {"image": _read_unlabelled(src["file"], channels, dataset.get("image_size"))} if "file" in src \
                else load(dict(src))
            image = data["image"]
            if i >= len(sources):  # the originals first, then augmented views
                if augment is None:
                    augment = random_affine("image", image.shape[-1], prob=1.0, **info["augmentation"])
                    augment.set_random_state(seed=seed)
                image = augment(data)["image"]
            name = f"t{i:05d}.nii.gz"
            array = np.asarray(image[0] if channels == 1 else np.moveaxis(np.asarray(image), 0, -1), np.float32)
            nib.save(nib.Nifti1Image(array, np.asarray(image.affine, np.float64)), os.path.join(tmp, name))
            info["training"].append({"image": name, "source": os.path.basename(src.get("image") or src["file"])})
    return info
