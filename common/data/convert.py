"""Turning a dataset as distributed into our datalist: read, check everything, split, resize, write.

Every dataset converter (``common.data.datasets``) lists its image/mask pairs as ``Case``s; this module
does the rest the same way for all of them:

- reads images (PNG, JPG, BMP, TIF, GIF, NIfTI, DICOM) and masks, and checks *all* cases before writing
  anything: unreadable or truncated files, missing masks, image/mask size mismatches and label values
  outside the class map are collected and reported in one ``DataError`` naming every offending file;
- refuses volumes (a 3-slice NIfTI is not an RGB image), and mask sets without foreground of a class;
- splits by patient/group with a seed (a fixed test split; the distribution's own test set is kept;
  ``val_fraction=0`` keeps no validation split, so every labelled image can be trained on);
- orders the training cases by a seeded shuffle, so label budgets are nested prefixes (5 ⊂ 10 ⊂ 20), and
  says which of the dataset's budgets the training split cannot reach, and why;
- resizes images (area/linear), masks and evaluation masks (nearest) to the task size, updating the
  spacing, and records its unit (``mm`` from NIfTI/DICOM or a given ``spacing``; ``px`` otherwise);
- writes NIfTI files (RGB as H x W x 3) and ``datalist.json`` into the output folder atomically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from common.data.io import atomic_folder, check_output_folder
from common.errors import DataError, first_line
from common.settings import check_image_size

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
        roi: an evaluation mask (non-zero inside; e.g. DRIVE's field of view): metrics count inside it only.
        extra: more fields to record in the datalist item.
    """

    name: str
    image: str
    masks: Sequence[str | None]
    group: str = ""
    split: str | None = None
    roi: str | None = None
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


def _nifti_array(img) -> np.ndarray:
    """A NIfTI image as (H, W) or (H, W, 3): RGB only when stored as RGB (RGB24 or a 5D vector image);
    any other third axis is slices, refused by the caller."""
    if img.get_data_dtype().names:  # RGB24 / RGBA32 structured voxels
        raw = np.asarray(img.dataobj)
        return np.stack([raw[c] for c in ("R", "G", "B")], -1).astype(np.float32).squeeze()
    array = np.asarray(img.dataobj, np.float32)
    if array.ndim == 5 and array.shape[2] == array.shape[3] == 1 and array.shape[4] in (3, 4):
        return array[:, :, 0, 0, :]  # the NIfTI convention for a vector (RGB) image
    return array.reshape(array.shape[:2] + tuple(n for n in array.shape[2:] if n != 1))


def read_image(path: str, channels: int | None = None,
               as_mask: bool = False) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read a 2D image.

    Args:
        path: PNG/JPG/BMP/TIF/GIF, NIfTI or DICOM file.
        channels: 1 converts colour to grey, 3 converts grey to RGB, None keeps what the file has.
        as_mask: read palette images as their indices (label maps), never converting colours.

    Returns:
        (array (H, W) or (H, W, 3) float32, spacing (rows, cols) in mm, or None where the format has none).
    """
    if not os.path.isfile(path):
        raise DataError(f"'{path}' does not exist")
    suffix = _suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            img = nib.load(path)
            array = _nifti_array(img)
            spacing = tuple(float(s) for s in img.header.get_zooms()[:2])
            if array.ndim > 2 and not (img.get_data_dtype().names or len(img.shape) == 5):
                raise DataError(f"'{path}' is a volume of shape {tuple(img.shape)}, not a 2D image; slice it into 2D "
                                "images first (an H x W x 3 NIfTI is read as 3 slices, not as RGB: store RGB as RGB24 "
                                "or PNG)")
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
            spacing = None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"'{path}' cannot be read as an image ({type(e).__name__}: {first_line(e, 120)})") from e
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
    return array, None if spacing is None else (spacing[0] or 1.0, spacing[1] or 1.0)


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
    n_val = 0 if val_fraction <= 0 else max(1, round(val_fraction * (len(order) + sum(s == "training" for s in fixed.values()))))
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


def _class_presence(loaded: list, splits: dict[str, str], classes: Sequence[str], source: str) -> None:
    """Stop when a class has no foreground in the whole set or in training; warn when validation or test
    lacks one (its Dice there is left out, not 1)."""
    present: dict[str, set[int]] = {}
    for case, _, label, _, _ in loaded:
        present.setdefault(splits[case.name], set()).update(int(v) for v in np.unique(label))
    everywhere = set().union(*present.values())
    names = {i: c for i, c in enumerate(classes)}
    absent = [names[i] for i in range(1, len(classes)) if i not in everywhere]
    if absent:
        raise DataError(f"no mask under '{source}' contains {', '.join(absent)}: "
                        + ("every mask is background only. " if len(absent) == len(classes) - 1 else "")
                        + "Check the masks and the class map (--classes name=value) before training on them.")
    missing = [names[i] for i in range(1, len(classes)) if i not in present.get("training", set())]
    if missing:
        raise DataError(f"the training split of '{source}' has no foreground of {', '.join(missing)} (the split "
                        "went by patient/case): add cases with it, or change --seed / --test_fraction.")
    for split in ("validation", "test"):
        lacking = [names[i] for i in range(1, len(classes)) if split in present and i not in present[split]]
        if lacking:
            print(f"WARNING: the {split} split of '{source}' has no {', '.join(lacking)}; its metrics for "
                  f"{'that class' if len(lacking) == 1 else 'those classes'} come from false positives only.",
                  file=sys.stderr)


def convert_cases(cases: Sequence[Case], out: str, *, name: str, source: str, classes: Sequence[str],
                  value_map: ValueMap | None, image_size: int, channels: int, combine: Callable | None = None,
                  budgets: Sequence[int] = (), seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  layout: str = "", spacing: tuple[float, float] | None = None) -> dict:
    """Check every case, then write the dataset (see the module docstring).

    Args:
        cases: the image/mask pairs found.
        out: output folder (replaced only when everything succeeded).
        name: dataset name.
        source: the source folder (for messages and the datalist).
        classes: class names, background first.
        value_map: raw mask value -> class index (for single-mask cases).
        image_size: output side (a positive multiple of 16).
        channels: 1 (grey) or 3 (RGB).
        combine: for multi-mask cases, ``(list of int masks, case) -> class-index mask``.
        budgets: the dataset's nested label budgets; those the training split reaches are recorded, the
            others are reported with the reason.
        seed: split and budget-order seed.
        test_fraction: share of groups held out for test (unless the distribution fixes a test set).
        val_fraction: share of groups for validation; 0 keeps no validation split.
        layout: the expected layout, quoted in errors.
        spacing: pixel spacing (rows, cols) in mm of every source image, for formats that carry none.

    Returns:
        The datalist written to ``out/datalist.json``.
    """
    image_size = check_image_size(image_size)
    check_output_folder(out, [source])  # before the long read: refuse an output that would destroy data
    hint = f"\nExpected layout under '{source}':\n{layout}" if layout else ""
    if not cases:
        raise DataError(f"no image/mask pairs found under '{source}'.{hint}")
    rois = [c.roi for c in cases if c.roi]
    if rois and len(rois) != len(cases):
        absent = [c.image for c in cases if not c.roi][:5]
        raise DataError(f"{len(cases) - len(rois)} image(s) under '{source}' have no evaluation mask while the others "
                        f"do (e.g. {', '.join(absent)}); provide one for every image or for none.")
    errors, loaded = [], []
    for case in cases:
        try:
            image, own_spacing = read_image(case.image, channels)
            missing = [m for m in case.masks if m is None or not os.path.isfile(m)]
            if missing and (combine is None or len(missing) == len(case.masks)):
                raise DataError(f"image '{case.image}' has no mask" + (f" (looked for {missing[0]})" if missing[0] else ""))
            masks = [read_mask(m) if m and os.path.isfile(m) else None for m in case.masks]
            for m, path in zip(masks, case.masks):
                if m is not None and m.shape != image.shape[:2]:
                    raise DataError(f"image '{case.image}' is {image.shape[:2]} but its mask '{path}' is {m.shape}")
            label = combine(masks, case) if combine else map_values(masks[0], value_map, case.masks[0])
            roi = None
            if case.roi:
                roi = read_mask(case.roi) > 0
                if roi.shape != image.shape[:2]:
                    raise DataError(f"image '{case.image}' is {image.shape[:2]} but its evaluation mask '{case.roi}' "
                                    f"is {roi.shape}")
            loaded.append((case, image, label, spacing or own_spacing, roi))
        except DataError as e:
            errors.append(e.message)
    if errors:
        shown = "\n  ".join(errors[:50]) + (f"\n  … and {len(errors) - 50} more" if len(errors) > 50 else "")
        raise DataError(f"{len(errors)} problem(s) in '{source}'; nothing was written:\n  {shown}{hint}")
    splits = _split(cases, test_fraction, val_fraction, seed)
    n_train = sum(s == "training" for s in splits.values())
    if not n_train or (val_fraction > 0 and "validation" not in splits.values()):
        raise DataError(f"{len(cases)} image(s) in '{source}' are too few for training, validation and test splits "
                        "(at least 3 cases or patients); add data or lower --test_fraction / --val_fraction.")
    _class_presence(loaded, splits, classes, source)
    n_val = sum(s == "validation" for s in splits.values())
    unreachable = [b for b in budgets if b > n_train]
    if unreachable:
        print(f"WARNING: label budget(s) {unreachable} cannot be reached: the training split has {n_train} images "
              f"({n_val} went to validation). Use --val_fraction 0 to train on every labelled image (the last epoch's "
              "weights are then kept).", file=sys.stderr)
    units = {"px" if s is None else "mm" for _, _, _, s, _ in loaded}
    if len(units) > 1:
        print(f"WARNING: some images under '{source}' carry a pixel spacing and others do not; HD95 is reported in "
              "pixels for all. Pass --spacing to give every image the same spacing.", file=sys.stderr)
    datalist: dict = {"name": name, "source": os.path.abspath(source), "labels": {str(i): c for i, c in enumerate(classes)},
                      "image_size": image_size, "channels": channels, "seed": seed,
                      "spacing_unit": "mm" if units == {"mm"} else "px",
                      "budgets": [b for b in budgets if b <= n_train], "unreachable_budgets": unreachable,
                      "training": [], "validation": [], "test": []}
    with atomic_folder(out, datalist, sources=[source]) as tmp:
        for sub in ("images", "labels") + (("roi",) if rois else ()):
            os.makedirs(os.path.join(tmp, sub))
        for case, image, label, own_spacing, roi in loaded:
            h, w = label.shape
            pixel = own_spacing or (1.0, 1.0)
            new_spacing = (pixel[0] * h / image_size, pixel[1] * w / image_size)
            affine = np.diag([new_spacing[0], new_spacing[1], 1.0, 1.0])
            file = f"{case.name}.nii.gz"
            nib.save(nib.Nifti1Image(_resize(image, image_size, "bilinear").astype(np.float32), affine),
                     os.path.join(tmp, "images", file))
            nib.save(nib.Nifti1Image(_resize(label, image_size, "nearest").astype(np.uint8), affine),
                     os.path.join(tmp, "labels", file))
            item = {"image": f"images/{file}", "label": f"labels/{file}", "source": case.image,
                    "group": case.group or case.name, "spacing": [round(s, 6) for s in new_spacing]}
            if roi is not None:
                nib.save(nib.Nifti1Image(_resize(roi.astype(np.uint8), image_size, "nearest").astype(np.uint8), affine),
                         os.path.join(tmp, "roi", file))
                item["roi"] = f"roi/{file}"
            item.update(case.extra)
            datalist[splits[case.name]].append(item)
        rng = np.random.default_rng(seed)
        datalist["training"] = [datalist["training"][i] for i in rng.permutation(len(datalist["training"]))]
    return datalist
