"""The five datasets of the paper, and any folder of images + masks, as distributed.

Each entry finds the image/mask pairs in a dataset's public layout and says how mask values become
classes; ``common.data.convert.convert_cases`` does the checking and writing. Sizes, budgets and
classes follow the paper (PAPER.md, datasets table).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from common.data.convert import IMAGE_SUFFIXES, Case, ValueMap, convert_cases, map_values, read_mask
from common.errors import DataError

__all__ = ["DatasetSpec", "DATASETS", "prepare_dataset", "parse_classes"]

# Binary masks: background 0, foreground 255 (or 1).
BINARY: dict[int, int] = {0: 0, 1: 1, 255: 1}


@dataclass
class DatasetSpec:
    """How to read one dataset as distributed."""

    classes: list[str]
    image_size: int
    channels: int
    budgets: list[int]
    layout: str
    find: Callable[[str], list[Case]]
    value_map: ValueMap | None = None
    combine: Callable | None = None
    options: dict = field(default_factory=dict)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    return base[:-7] if base.lower().endswith(".nii.gz") else os.path.splitext(base)[0]


def _images(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*"))
                  if os.path.isfile(p) and p.lower().endswith(IMAGE_SUFFIXES))


# DRIVE (Staal et al. 2004): training/images/21_training.tif, training/1st_manual/21_manual1.gif,
# training/mask/21_training_mask.gif (field of view); test/ likewise with NN_test.tif.
def _find_drive(src: str) -> list[Case]:
    cases = []
    for split, folder in (("training", "training"), ("test", "test")):
        for image in _images(os.path.join(src, folder, "images")):
            number = _stem(image).split("_")[0]
            manual = os.path.join(src, folder, "1st_manual", f"{number}_manual1.gif")
            fov = os.path.join(src, folder, "mask", f"{_stem(image)}_mask.gif")
            # The field of view is the evaluation mask: DRIVE's vessel metrics are computed inside it.
            cases.append(Case(f"drive_{number}", image, [manual], group=number, split=split,
                              roi=fov if os.path.isfile(fov) else None))
    return cases


# PH2 (Mendonça et al. 2015): "PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp" and
# "IMD002_lesion/IMD002_lesion.bmp".
def _find_ph2(src: str) -> list[Case]:
    root = os.path.join(src, "PH2 Dataset images") if os.path.isdir(os.path.join(src, "PH2 Dataset images")) else src
    cases = []
    for case_dir in sorted(glob.glob(os.path.join(root, "IMD*"))):
        cid = os.path.basename(case_dir)
        image = os.path.join(case_dir, f"{cid}_Dermoscopic_Image", f"{cid}.bmp")
        if os.path.isfile(image):
            cases.append(Case(cid, image, [os.path.join(case_dir, f"{cid}_lesion", f"{cid}_lesion.bmp")], group=cid))
    return cases


# CHAOS MR (Kavur et al. 2021): Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm and T2SPIR/Ground/*.png;
# Ground grey values 63 / 126 / 189 / 252 (official ranges 55-70, 110-135, 175-200, 240-255).
def _chaos_value(v: int) -> int | None:
    for cls, (lo, hi) in enumerate(((0, 0), (55, 70), (110, 135), (175, 200), (240, 255))):
        if lo <= v <= hi:
            return cls
    return None


def _dicom_slice(path: str) -> tuple[int, float]:
    """(InstanceNumber, distance between slices in mm) from a DICOM header."""
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = getattr(header, "SpacingBetweenSlices", None) or getattr(header, "SliceThickness", None) or 1.0
    return int(getattr(header, "InstanceNumber", 0) or 0), float(spacing)


def _find_chaos(src: str) -> list[Case]:
    root = os.path.join(src, "Train_Sets", "MR") if os.path.isdir(os.path.join(src, "Train_Sets", "MR")) else src
    cases = []
    for patient in sorted(glob.glob(os.path.join(root, "*", "T2SPIR")), key=lambda p: p.split(os.sep)[-2]):
        pid = patient.split(os.sep)[-2]
        dicoms = glob.glob(os.path.join(patient, "DICOM_anon", "*.dcm"))
        grounds = sorted(glob.glob(os.path.join(patient, "Ground", "*.png")))
        try:
            headers = {d: _dicom_slice(d) for d in dicoms}
            dicoms = sorted(dicoms, key=lambda d: headers[d][0])  # paired with Ground PNGs by instance order
        except Exception as e:
            raise DataError(f"CHAOS patient {pid}: cannot read the DICOM headers in '{patient}/DICOM_anon' ({e})") from e
        if len(dicoms) != len(grounds):
            raise DataError(f"CHAOS patient {pid}: {len(dicoms)} DICOM slices but {len(grounds)} Ground masks in "
                            f"'{patient}'; they are paired by instance order and must match one to one")
        for i, (dcm, ground) in enumerate(zip(dicoms, grounds)):
            # slice order and spacing let evaluation stack each patient's slices into a volume (3D Dice/HD95)
            cases.append(Case(f"chaos_{pid}_{i:03d}", dcm, [ground], group=pid,
                              extra={"slice": i, "slice_spacing": headers[dcm][1]}))
    return cases


# KidneyUS (Singla et al. 2023): a folder of PNG images (the image archive, e.g. kidneyUS_images_*/) and
# the repository's labels/reviewed_masks_1/capsule/<name>.png (1 = capsule) and
# labels/reviewed_masks_1/regions/<name>.png (1 = central echo complex, 2 = medulla, 3 = cortex).
def _find_kidneyus(src: str, sonographer: int = 1) -> list[Case]:
    masks = os.path.join(src, "labels", f"reviewed_masks_{sonographer}")
    folders = [d for d in sorted(glob.glob(os.path.join(src, "*"))) if os.path.isdir(d) and os.path.basename(d) != "labels"]
    images = [p for d in folders for p in _images(d) if p.lower().endswith(".png")]
    cases = []
    for image in images:
        name = os.path.basename(image)
        capsule, regions = os.path.join(masks, "capsule", name), os.path.join(masks, "regions", name)
        cases.append(Case(f"kidneyus_{_stem(image)}", image, [capsule, regions], group=_stem(image)))
    return cases


def _combine_kidneyus(masks: list, case: Case) -> np.ndarray:
    capsule, regions = masks
    shape = (capsule if capsule is not None else regions).shape
    label = np.zeros(shape, np.uint8)
    if capsule is not None:
        label = map_values(capsule, {0: 0, 1: 1, 255: 1}, case.masks[0])
    if regions is not None:
        inner = map_values(regions, {0: 0, 1: 2, 2: 3, 3: 4}, case.masks[1])
        label[inner > 0] = inner[inner > 0]
    return label


# Autooral (Jiang et al. 2024; github.com/wurenkai/HF-UNet-and-Autooral-dataset): the public release
# layout is not documented in the repository; we read images/<name>.(jpg|png) with masks/<name>.png
# (ulcer 255), the layout of its segmentation task. Other layouts: use `folder`.
def _find_pairs(src: str, image_dir: str = "images", mask_dirs: tuple[str, ...] = ("labels", "masks")) -> list[Case]:
    mask_dir = next((os.path.join(src, m) for m in mask_dirs if os.path.isdir(os.path.join(src, m))),
                    os.path.join(src, mask_dirs[0]))
    masks = {_stem(p): p for p in _images(mask_dir)}
    cases, seen = [], {}
    for image in _images(os.path.join(src, image_dir)):
        stem = _stem(image)
        if stem in seen:
            raise DataError(f"two images share the name '{stem}': '{seen[stem]}' and '{image}'; names must be unique")
        seen[stem] = image
        cases.append(Case(stem, image, [masks.get(stem) or os.path.join(mask_dir, f"{stem}.png")], group=stem))
    return cases


DATASETS: dict[str, DatasetSpec] = {
    "kidneyus": DatasetSpec(
        classes=["background", "capsule", "central_echo_complex", "medulla", "cortex"], image_size=512, channels=1,
        budgets=[80, 160, 234], find=_find_kidneyus, combine=_combine_kidneyus,
        layout="  <image folder>/*.png\n  labels/reviewed_masks_1/capsule/<name>.png\n  labels/reviewed_masks_1/regions/<name>.png"),
    "autooral": DatasetSpec(
        classes=["background", "ulcer"], image_size=256, channels=3, budgets=[100, 200, 300], find=_find_pairs,
        value_map=BINARY, layout="  images/<name>.jpg|png\n  masks/<name>.png  (ulcer 255)"),
    "chaos": DatasetSpec(
        classes=["background", "liver", "right_kidney", "left_kidney", "spleen"], image_size=256, channels=1,
        budgets=[100, 200, 296], find=_find_chaos, value_map=_chaos_value,
        layout="  Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm\n  Train_Sets/MR/<id>/T2SPIR/Ground/*.png"),
    "ph2": DatasetSpec(
        classes=["background", "lesion"], image_size=512, channels=3, budgets=[40, 80, 160], find=_find_ph2,
        value_map=BINARY,
        layout="  PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp\n"
               "  PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp"),
    "drive": DatasetSpec(
        classes=["background", "vessel"], image_size=512, channels=3, budgets=[5, 10, 20], find=_find_drive,
        value_map=BINARY,
        layout="  training/images/NN_training.tif, training/1st_manual/NN_manual1.gif, training/mask/NN_training_mask.gif\n"
               "  test/images/NN_test.tif, test/1st_manual/NN_manual1.gif, test/mask/NN_test_mask.gif"),
}


def parse_classes(text: str) -> tuple[list[str], dict[int, int]]:
    """``"liver=1,tumour=2"`` -> (["background", "liver", "tumour"], {0: 0, 1: 1, 2: 2}).

    Mask values are mapped to class indices in the order given; value 0 is background unless named.
    """
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not re.fullmatch(r"[\w\- ]+=\d+", part):
            raise DataError(f"--classes expects name=value pairs separated by commas, got '{part}'")
        name, value = part.split("=")
        pairs.append((name.strip(), int(value)))
    names = ([] if any(v == 0 for _, v in pairs) else ["background"]) + [n for n, _ in pairs]
    offset = len(names) - len(pairs)
    value_map = {} if offset == 0 else {0: 0}
    value_map.update({v: i + offset for i, (_, v) in enumerate(pairs)})
    return names, value_map


# Lossy (JPEG) masks: compression adds many rare values around the real labels (254, 253, 1, 2 … around
# 255 and 0). A value is "rare" below this share of all mask pixels.
RARE_SHARE = 0.002
MAX_RARE_VALUES = 4


def _check_lossless(counts: dict[int, int], files: dict[int, list[str]]) -> None:
    total = sum(counts.values())
    rare = sorted(v for v, n in counts.items() if n < RARE_SHARE * total)
    if len(rare) <= MAX_RARE_VALUES:
        return
    named = sorted({f for v in rare for f in files[v]})
    raise DataError(f"the masks hold {len(counts)} different values, {len(rare)} of them rare (e.g. {rare[:8]}): "
                    "this is the pattern of lossy (JPEG) compression, not of label maps. Name the real classes with "
                    "--classes name=value,… or export the masks losslessly (PNG). Files with rare values: "
                    + ", ".join(named[:5]) + (f" … (+{len(named) - 5} more)" if len(named) > 5 else ""))


def _detect_classes(cases: list[Case]) -> tuple[list[str], dict[int, int]]:
    counts: dict[int, int] = {}
    files: dict[int, list[str]] = {}
    for case in cases:
        if case.masks[0] and os.path.isfile(case.masks[0]):
            try:
                mask = read_mask(case.masks[0])
            except DataError:
                continue  # reported with the others by convert_cases
            for v, n in zip(*np.unique(mask, return_counts=True)):
                counts[int(v)] = counts.get(int(v), 0) + int(n)
                files.setdefault(int(v), []).append(case.masks[0])
    _check_lossless(counts, files)
    values = set(counts)
    ordered = sorted(values | {0})
    print(f"label values found: {ordered} -> classes {list(range(len(ordered)))} "
          "(name them with --classes name=value,...)")
    return ["background"] + [f"class_{v}" for v in ordered[1:]], {v: i for i, v in enumerate(ordered)}


def prepare_dataset(dataset: str, src: str, out: str, *, image_size: int | None = None, classes: str = "",
                    channels: int | None = None, seed: int = 0, test_fraction: float = 0.2,
                    val_fraction: float = 0.1, spacing: tuple[float, float] | None = None) -> dict:
    """Convert ``src`` (a dataset as distributed, or ``folder``: images/ + labels/) into ``out``.

    Args:
        dataset: ``kidneyus``, ``autooral``, ``chaos``, ``ph2``, ``drive`` or ``folder``.
        src: the source folder.
        out: output folder (left untouched on any error).
        image_size: output side (default: the paper's size; 256 for ``folder``).
        classes: ``folder`` only: ``name=value,...``; default: the values found, reported.
        channels: 1 or 3 (default: the dataset's; ``folder``: 3 if the first image is colour).
        seed: split seed.
        test_fraction: share of groups held out for test (when the distribution has no test set).
        val_fraction: share of groups for validation; 0 keeps no validation split (train on every labelled
            image; the last epoch's weights are kept).
        spacing: ``folder`` only: pixel spacing (rows, cols) in mm for images whose format carries none.

    Returns:
        The datalist written.
    """
    if not os.path.isdir(src):
        raise DataError(f"source folder '{src}' does not exist")
    if dataset == "folder":
        cases = _find_pairs(src, "images", ("labels", "masks"))
        names, value_map = parse_classes(classes) if classes else _detect_classes(cases)
        if channels is None and cases:
            from common.data.convert import read_image

            channels = 3 if read_image(cases[0].image)[0].ndim == 3 else 1
        spec = DatasetSpec(classes=names, image_size=256, channels=channels or 1, budgets=[], find=_find_pairs,
                           value_map=value_map, layout="  images/<name>.<ext>\n  labels/<name>.<ext>  (same names)")
    elif dataset in DATASETS:
        spec = DATASETS[dataset]
        cases = spec.find(src)
    else:
        raise DataError(f"unknown dataset '{dataset}'; choose one of {sorted(DATASETS) + ['folder']}")
    return convert_cases(cases, out, name=dataset, source=src, classes=spec.classes, value_map=spec.value_map,
                         combine=spec.combine, image_size=spec.image_size if image_size is None else image_size,
                         channels=channels or spec.channels, budgets=spec.budgets, seed=seed,
                         test_fraction=test_fraction, val_fraction=val_fraction, layout=spec.layout, spacing=spacing)
