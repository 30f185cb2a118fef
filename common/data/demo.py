"""The embedded default dataset: real brain MRI shipped inside nilearn's wheel.

The MNI152 2009a symmetric template (Fonov et al. 2009/2011), T1 with grey- and white-matter
probability maps, 197x233x189 at 1 mm. Axial slices become 2D images; each pixel's class is the most
probable of background (1 - GM - WM), grey matter and white matter. Nothing is downloaded.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from common.data.io import atomic_folder
from common.errors import DataError
from common.settings import check_image_size

__all__ = ["MNI_FILES", "mni_paths", "block_split", "prepare_demo"]

MNI_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
CLASSES = ["background", "grey_matter", "white_matter"]
# The demo dataset's side and channels (its bundles are generated with them: scripts/make_bundles.py).
IMAGE_SIZE = 128
CHANNELS = 1


def mni_paths() -> dict[str, str]:
    """Paths of the template files inside the installed nilearn."""
    import nilearn

    folder = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    paths = {k: os.path.join(folder, f) for k, f in MNI_FILES.items()}
    absent = [p for p in paths.values() if not os.path.isfile(p)]
    if absent:
        raise DataError(f"nilearn does not ship {absent}; install the pinned nilearn: pip install -r requirements.txt")
    return paths


def block_split(n: int, block: int, fractions: tuple[float, float], gap: int, seed: int) -> list[str]:
    """Assign n ordered slices to splits by contiguous blocks, dropping slices at split borders.

    Args:
        n: number of slices, in anatomical order.
        block: slices per block.
        fractions: (test, validation) fractions of the blocks; the rest is training.
        gap: slices dropped at the start of a block whose predecessor is in another split, so that no
            slice has a direct neighbour in another split.
        seed: seed of the block shuffle.

    Returns:
        One of ``"test"``, ``"validation"``, ``"training"`` or ``""`` (dropped) per slice.
    """
    n_blocks = -(-n // block)
    order = np.random.default_rng(seed).permutation(n_blocks)
    n_test = max(1, round(fractions[0] * n_blocks))
    n_val = max(1, round(fractions[1] * n_blocks))
    split_of_block = {}
    for rank, b in enumerate(order):
        split_of_block[b] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
    splits = [split_of_block[i // block] for i in range(n)]
    out = list(splits)
    for i in range(1, n):
        if splits[i] != splits[i - 1]:
            for j in range(i, min(i + gap, n)):
                out[j] = ""
    return out


def _square(a: np.ndarray, fill: float) -> np.ndarray:
    side = max(a.shape)
    pad = [((side - s) // 2, side - s - (side - s) // 2) for s in a.shape]
    return np.pad(a, pad, constant_values=fill)


def prepare_demo(out: str, image_size: int = IMAGE_SIZE, stride: int = 2, block: int = 6, min_brain: float = 0.05,
                 gap: int = 1, seed: int = 0) -> dict:
    """Write the demo dataset (NIfTI 2D slices + ``datalist.json``) to ``out``.

    Args:
        out: output folder (replaced atomically; nothing half-written on error).
        image_size: side of the square output slices.
        stride: keep every ``stride``-th axial slice.
        block: slices per held-out block.
        min_brain: keep slices whose grey + white matter cover at least this fraction.
        gap: slices dropped between blocks of different splits.
        seed: split seed.

    Returns:
        The datalist dict that was written.
    """
    image_size = check_image_size(image_size)
    paths = mni_paths()
    t1, gm, wm = (np.asarray(nib.load(paths[k]).get_fdata(dtype=np.float32)) for k in ("t1", "gm", "wm"))
    spacing_in = float(nib.load(paths["t1"]).header.get_zooms()[0])
    probs = np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm])
    label = probs.argmax(0).astype(np.uint8)
    brain = (label > 0).mean(axis=(0, 1))
    zs = [z for z in range(0, t1.shape[2], stride) if brain[z] >= min_brain]
    splits = block_split(len(zs), block, (0.2, 0.1), gap, seed)
    side = max(t1.shape[:2])
    spacing = spacing_in * side / image_size
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    datalist: dict = {"name": "demo", "description": "Axial slices of the MNI152 2009a template (nilearn), "
                      "grey/white matter from its tissue probability maps",
                      "labels": {str(i): c for i, c in enumerate(CLASSES)}, "spacing": [spacing, spacing],
                      "spacing_unit": "mm", "image_size": image_size, "channels": CHANNELS, "training": [], "validation": [], "test": []}
    with atomic_folder(out, datalist) as tmp:
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "labels"))
        for z, split in zip(zs, splits):
            if not split:
                continue
            img = torch.from_numpy(_square(t1[:, :, z], float(t1.min())))[None, None]
            lab = torch.from_numpy(_square(label[:, :, z], 0).astype(np.float32))[None, None]
            img = F.interpolate(img, size=(image_size, image_size), mode="area")[0, 0].numpy()
            lab = F.interpolate(lab, size=(image_size, image_size), mode="nearest")[0, 0].numpy().astype(np.uint8)
            name = f"mni_z{z:03d}.nii.gz"
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), os.path.join(tmp, "images", name))
            nib.save(nib.Nifti1Image(lab, affine), os.path.join(tmp, "labels", name))
            datalist[split].append({"image": f"images/{name}", "label": f"labels/{name}", "slice": z})
        # Budget order: a seeded shuffle, so the first N training slices spread over the brain.
        rng = np.random.default_rng(seed)
        datalist["training"] = [datalist["training"][i] for i in rng.permutation(len(datalist["training"]))]
    return datalist
