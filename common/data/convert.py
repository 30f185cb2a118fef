"""Turning a dataset as distributed into our datalist: read, check everything, split, resize, write.

Every dataset converter (``common.data.datasets``) lists its image/mask pairs as ``Case``s; this module
does the rest the same way for all of them:

- reads images (PNG, JPG, BMP, TIF, GIF, NIfTI, DICOM) and masks, and checks *all* cases before writing
  anything: unreadable or truncated files, missing masks, image/mask size mismatches and label values
  outside the class map are collected and reported in one ``DataError`` naming every offending file;
- splits by patient/group with a seed (a fixed test split; the distribution's own test set is kept);
- orders the training cases by a seeded shuffle, so label budgets are nested prefixes (5 ⊂ 10 ⊂ 20);
- resizes images (area/linear) and masks (nearest) to the task size, updating the spacing;
- writes NIfTI files (RGB as H x W x 3) and ``datalist.json`` into the output folder atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from common.data.io import atomic_folder
from common.errors import DataError

__all__ = ["Case", "read_image", "read_mask", "convert_cases", "ValueMap"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".nii", ".nii.gz", ".dcm")
# A mask's raw value -> class index, or a function doing it (None where a value is unknown).
ValueMap = dict[int, int] | Callable[[int], int | None]


@dataclass
class Case:
    """One image and where its label comes from.

    Args:
        name: output file stem (unique).
        image: image file.
        masks: mask files; one, or several that ``combine`` merges (e.g. KidneyUS capsule + regions).
        group: patient or case group: all of a group lands in one split.
        split: a split fixed by the distribution (``training`` or ``test``), else None.
        extra: more files to carry (e.g. DRIVE's field-of-view mask).
    """

    name: str
    image: str
    masks: Sequence[str | None]
    group: str = ""
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _suffix(path: str) -> str:
    low = path.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "F")


def _pil_convert(im, channels: int | None, as_mask: bool):
    """PIL image -> array-ready image: masks keep palette indices (VOC-style label PNGs, DRIVE GIFs);
    images become grey or RGB as asked (16-bit and float grey keep their precision)."""
    if as_mask:
        return im if im.mode in ("P", "L", "I", "I;16", "I;16B", "1") else im.convert("RGB")
    if im.mode in _GREY_MODES and channels != 3:
        return im if im.mode in ("I", "I;16", "I;16B", "F") else im.convert("L")
    rgb = im.convert("RGB")
    return rgb.convert("L") if channels == 1 else rgb


def read_image(path: str, channels: int | None = None, as_mask: bool = False) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a 2D image.

    Args:
        path: PNG/JPG/BMP/TIF/GIF, NIfTI or DICOM file.
        channels: 1 converts colour to grey, 3 converts grey to RGB, None keeps what the file has.
        as_mask: read palette images as their indices (label maps), never converting colours.

    Returns:
        (array (H, W) or (H, W, 3) float32, spacing (rows, cols) in mm; 1.0 where the format has none).
    """
    if not os.path.isfile(path):
        raise DataError(f"'{path}' does not exist")
    suffix = _suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            img = nib.load(path)
            array = np.asarray(img.dataobj, np.float32)
            spacing = tuple(float(s) for s in img.header.get_zooms()[:2])
            array = np.squeeze(array) if array.ndim > 2 and array.shape[2] == 1 else array
        elif suffix == ".dcm":
            import itk

            img = itk.imread(path)
            array = np.squeeze(np.asarray(itk.array_view_from_image(img), np.float32))
            spacing = tuple(float(s) for s in reversed(tuple(img.GetSpacing())[:2]))  # itk: (x, y) -> (rows, cols)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                array = np.asarray(_pil_convert(im, channels, as_mask), np.float32)
            spacing = (1.0, 1.0)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"'{path}' cannot be read as an image ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3]
        if channels == 1:
            array = array.mean(-1)
    elif array.ndim != 2:
        raise DataError(f"'{path}' has shape {array.shape}; expected a 2D image (H x W or H x W x 3)")
    if channels == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if not np.isfinite(array).all():
        raise DataError(f"'{path}' contains NaN or infinite values")
    return array, (spacing[0] or 1.0, spacing[1] or 1.0)


def read_mask(path: str) -> np.ndarray:
    """A single-channel label image as int64 (H, W); a colour mask is an error (grey RGB is accepted)."""
    array, _ = read_image(path, as_mask=True)
    if array.ndim == 3:
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise DataError(f"mask '{path}' is a colour image; expected one label value per pixel")
        array = array[..., 0]
    if not np.array_equal(array, np.round(array)):
        raise DataError(f"mask '{path}' holds non-integer values; expected integer labels")
    return array.astype(np.int64)


def map_values(mask: np.ndarray, value_map: ValueMap, path: str) -> np.ndarray:
    """Raw mask values -> class indices; unknown values are an error naming them and the file."""
    out = np.zeros(mask.shape, np.uint8)
    unknown = []
    for value in np.unique(mask):
        cls = value_map(int(value)) if callable(value_map) else value_map.get(int(value))
        if cls is None:
            unknown.append(int(value))
        else:
            out[mask == value] = cls
    if unknown:
        raise DataError(f"mask '{path}' holds label values {unknown[:10]} outside the class map")
    return out


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    t = F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0]
    return (t.permute(1, 2, 0) if array.ndim == 3 else t[0]).numpy()


def _split(cases: Sequence[Case], test_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    """Case name -> split, whole groups at a time; distribution-fixed test cases stay in test."""
    rng = np.random.default_rng(seed)
    fixed = {c.name: c.split for c in cases if c.split}
    free_groups = sorted({c.group or c.name for c in cases if not c.split})
    order = [free_groups[i] for i in rng.permutation(len(free_groups))]
    has_fixed_test = any(s == "test" for s in fixed.values())
    n_test = 0 if has_fixed_test else max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * (len(order) + sum(s == "training" for s in fixed.values()))))
    group_split = {g: "test" if i < n_test else "validation" if i < n_test + n_val else "training"
                   for i, g in enumerate(order)}
    out = {c.name: fixed.get(c.name) or group_split[c.group or c.name] for c in cases}
    if has_fixed_test and not any(s == "validation" for s in out.values()):
        # Validation comes from the distribution's training set (whole groups).
        train_groups = sorted({c.group or c.name for c in cases if out[c.name] == "training"})
        for g in [train_groups[i] for i in rng.permutation(len(train_groups))][:n_val]:
            for c in cases:
                if (c.group or c.name) == g:
                    out[c.name] = "validation"
    return out


def convert_cases(cases: Sequence[Case], out: str, *, name: str, source: str, classes: Sequence[str],
                  value_map: ValueMap | None, image_size: int, channels: int, combine: Callable | None = None,
                  budgets: Sequence[int] = (), seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  layout: str = "") -> dict:
    """Check every case, then write the dataset (see the module docstring).

    Args:
        cases: the image/mask pairs found.
        out: output folder (replaced only when everything succeeded).
        name: dataset name.
        source: the source folder (for messages and the datalist).
        classes: class names, background first.
        value_map: raw mask value -> class index (for single-mask cases).
        image_size: output side.
        channels: 1 (grey) or 3 (RGB).
        combine: for multi-mask cases, ``(list of int masks, case) -> class-index mask``.
        budgets: nested label budgets to record (those larger than the training split are dropped).
        seed: split and budget-order seed.
        test_fraction: share of groups held out for test (unless the distribution fixes a test set).
        val_fraction: share of groups for validation.
        layout: the expected layout, quoted in errors.

    Returns:
        The datalist written to ``out/datalist.json``.
    """
    hint = f"\nExpected layout under '{source}':\n{layout}" if layout else ""
    if not cases:
        raise DataError(f"no image/mask pairs found under '{source}'.{hint}")
    errors, loaded = [], []
    for case in cases:
        try:
            image, spacing = read_image(case.image, channels)
            missing = [m for m in case.masks if m is None or not os.path.isfile(m)]
            if missing and (combine is None or len(missing) == len(case.masks)):
                raise DataError(f"image '{case.image}' has no mask" + (f" (looked for {missing[0]})" if missing[0] else ""))
            masks = [read_mask(m) if m and os.path.isfile(m) else None for m in case.masks]
            for m, path in zip(masks, case.masks):
                if m is not None and m.shape != image.shape[:2]:
                    raise DataError(f"image '{case.image}' is {image.shape[:2]} but its mask '{path}' is {m.shape}")
            label = combine(masks, case) if combine else map_values(masks[0], value_map, case.masks[0])
            loaded.append((case, image, label, spacing))
        except DataError as e:
            errors.append(e.message)
    if errors:
        shown = "\n  ".join(errors[:50]) + (f"\n  … and {len(errors) - 50} more" if len(errors) > 50 else "")
        raise DataError(f"{len(errors)} problem(s) in '{source}'; nothing was written:\n  {shown}{hint}")
    splits = _split(cases, test_fraction, val_fraction, seed)
    n_train = sum(s == "training" for s in splits.values())
    if not n_train or "validation" not in splits.values():
        raise DataError(f"{len(cases)} image(s) in '{source}' are too few for training, validation and test splits "
                        "(at least 3 cases or patients); add data or lower --test_fraction / --val_fraction.")
    datalist: dict = {"name": name, "source": os.path.abspath(source), "labels": {str(i): c for i, c in enumerate(classes)},
                      "image_size": image_size, "channels": channels, "seed": seed,
                      "budgets": [b for b in budgets if b <= n_train], "training": [], "validation": [], "test": []}
    with atomic_folder(out, datalist) as tmp:
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(tmp, sub))
        for case, image, label, spacing in loaded:
            h, w = label.shape
            new_spacing = (spacing[0] * h / image_size, spacing[1] * w / image_size)
            affine = np.diag([new_spacing[0], new_spacing[1], 1.0, 1.0])
            file = f"{case.name}.nii.gz"
            nib.save(nib.Nifti1Image(_resize(image, image_size, "bilinear").astype(np.float32), affine),
                     os.path.join(tmp, "images", file))
            nib.save(nib.Nifti1Image(_resize(label, image_size, "nearest").astype(np.uint8), affine),
                     os.path.join(tmp, "labels", file))
            item = {"image": f"images/{file}", "label": f"labels/{file}", "source": case.image,
                    "spacing": [round(s, 6) for s in new_spacing]}
            item.update(case.extra)
            datalist[splits[case.name]].append(item)
        rng = np.random.default_rng(seed)
        datalist["training"] = [datalist["training"][i] for i in rng.permutation(len(datalist["training"]))]
    return datalist
