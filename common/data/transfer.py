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

__all__ = ["make_transfer_set", "check_unlabelled_folder", "TRANSFER_AUGMENTATION"]

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


def _thumbnail(array: np.ndarray, side: int = 32) -> np.ndarray:
    """An image's content at ``side``², grey, scaled to [0, 1]: equal for the same picture at another size,
    format or intensity scale."""
    grey = torch.from_numpy(np.asarray(array, np.float32).reshape(array.shape[0], array.shape[1], -1).mean(-1))
    small = F.interpolate(grey[None, None], size=(side, side), mode="area")[0, 0].numpy()
    low, high = float(small.min()), float(small.max())
    return (small - low) / (high - low) if high > low else np.zeros_like(small)


def check_unlabelled_folder(datalist_file: str, unlabelled_dir: str, tolerance: float = 0.02) -> int:
    """Check a folder of unlabelled images before any stage uses it: it holds images, each one is readable,
    and none is an image of the dataset's validation or test split (compared by content, at any size or
    format: distilling on them would leak the held-out images into the student). One ``DataError`` naming the
    file otherwise.

    Args:
        datalist_file: the dataset's datalist.
        unlabelled_dir: the folder (``--unlabelled_dir``).
        tolerance: mean absolute difference of two normalised 32² thumbnails below which they are one image.

    Returns:
        The number of images in the folder.
    """
    sources = _unlabelled_sources(datalist_file, 0, unlabelled_dir)
    held = [(split, item["image"], _thumbnail(read_image(item["image"])[0]))
            for split in ("validation", "test") for item in load_datalist(datalist_file, split, allow_empty=True)]
    for src in sources:
        try:
            thumb = _thumbnail(read_image(src["file"])[0])
        except DataError as e:
            raise DataError(f"{e.message}. It is in the unlabelled folder --unlabelled_dir '{unlabelled_dir}': remove "
                            "it or convert it to PNG/NIfTI.") from e
        for split, image, other in held:
            if float(np.abs(thumb - other).mean()) < tolerance:
                raise DataError(f"'{src['file']}' in --unlabelled_dir is the {split} image '{image}' (same content): "
                                f"distilling on it would leak the {split} split into the student. Remove the "
                                f"{split} images from '{unlabelled_dir}', or give a folder of other images.")
    return len(sources)


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
