"""Our datalist format: a MONAI (Decathlon-style) JSON with the dataset's description alongside.

```
{"name": "demo", "labels": {"0": "background", "1": "grey_matter", ...}, "spacing": [1.8, 1.8],
 "spacing_unit": "mm", "image_size": 128, "channels": 1,
 "training": [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}, ...],
 "validation": [...], "test": [{"image": ..., "label": ..., "roi": "roi/a.nii.gz"}, ...]}
```
Paths (``image``, ``label`` and the optional evaluation mask ``roi``) are relative to the JSON's folder
and must stay inside it, unless the datalist sets ``"allow_external_paths": true``. The order of
``training`` is the label-budget order: the first N items are the N-label budget, so smaller budgets
nest in larger ones. ``validation`` may be empty (``prepare_data.py --val_fraction 0``): training then
keeps the last epoch's weights. ``spacing_unit`` is ``mm`` when the source images carried a physical
spacing and ``px`` when they did not; HD95 is reported in that unit.
"""

from __future__ import annotations

import json
import os
from typing import Any

from common.errors import DataError

__all__ = ["load_datalist", "validation_items", "read_datalist_info", "class_names", "spacing_unit", "has_split", "PATH_KEYS"]

_FIX = "Run `python scripts/prepare_data.py …` to (re)write the dataset, or point dataset_dir at the folder holding datalist.json."
# Item keys holding file paths.
PATH_KEYS = ("image", "label", "roi")


def read_datalist_info(path: str) -> dict[str, Any]:
    """The datalist JSON as a dict (one clear error when it is missing or not JSON)."""
    if not os.path.isfile(path):
        raise DataError(f"datalist not found: '{path}'. {_FIX}")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"datalist '{path}' is not readable JSON ({e}). {_FIX}") from e
    if not isinstance(info, dict):
        raise DataError(f"datalist '{path}' must be a JSON object with 'training'/'validation'/'test' lists. {_FIX}")
    return info


def has_split(path: str, key: str) -> bool:
    """Whether the datalist has any ``key`` items (e.g. a validation split)."""
    return bool(read_datalist_info(path).get(key))


def _resolve(folder: str, value: str, path: str, allow_external: bool) -> str:
    full = os.path.normpath(os.path.join(folder, value))
    if not allow_external:
        real_folder, real = os.path.realpath(folder), os.path.realpath(full)
        if os.path.commonpath([real_folder, real]) != real_folder:
            raise DataError(f"datalist '{path}' lists '{value}', which is outside the dataset folder '{folder}'. "
                            "Datalist entries must stay inside their dataset; set \"allow_external_paths\": true in the "
                            "datalist to allow other locations on purpose.")
    return full


def load_datalist(path: str, key: str = "training", limit: int | None = None,
                  allow_empty: bool = False) -> list[dict[str, Any]]:
    """The items of one split, with absolute paths, checked to exist and to stay in the dataset folder.

    Args:
        path: the datalist JSON.
        key: ``training``, ``validation`` or ``test``.
        limit: use only the first ``limit`` items (a label budget); ``None`` or 0 for all.
        allow_empty: return ``[]`` for a missing or empty split instead of raising (validation may be empty).

    Returns:
        MONAI data dicts (``image``, ``label`` and any extra fields).
    """
    info = read_datalist_info(path)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise DataError(f"labels must be 0 (all) or a positive number of training images, got {limit!r}.")
    raw = info.get(key)
    if not raw:
        if allow_empty:
            return []
        raise DataError(f"datalist '{path}' has no '{key}' items. {_FIX}")
    if not isinstance(raw, list) or not all(isinstance(item, dict) and "image" in item for item in raw):
        raise DataError(f"datalist '{path}': '{key}' must be a list of {{\"image\": ..., \"label\": ...}} items. {_FIX}")
    folder = os.path.dirname(os.path.abspath(path))
    allow_external = bool(info.get("allow_external_paths", False))
    items = [{k: _resolve(folder, v, path, allow_external) if k in PATH_KEYS and isinstance(v, str) else v
              for k, v in item.items()} for item in raw]
    if limit:
        if limit > len(items):
            held = ", ".join(f"{len(info.get(s) or [])} {s}" for s in ("validation", "test"))
            raise DataError(f"a budget of {limit} labelled images was asked, but '{path}' has only {len(items)} "
                            f"'{key}' items ({held} held out). Lower `labels`, or rewrite the dataset with "
                            "`prepare_data.py … --val_fraction 0` to train on every labelled image.")
        items = items[:limit]
    missing = [item[k] for item in items for k in PATH_KEYS if isinstance(item.get(k), str) and not os.path.isfile(item[k])]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  … and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise DataError(f"{len(missing)} file(s) listed in '{path}' ({key}) do not exist:\n  {shown}\n{_FIX}")
    return items


def validation_items(path: str, val_labels: int | None = None) -> list[dict[str, Any]]:
    """The validation split's items that a run may use: all of them (``val_labels`` None), none (0: no model
    selection, no early stopping; the last weights are kept) or the first ``val_labels``. Every mask used
    here is a label too: summaries count them beside the training budget.

    Args:
        path: the datalist JSON.
        val_labels: None, 0 or a positive number of validation images.

    Returns:
        MONAI data dicts, as ``load_datalist``.
    """
    items = load_datalist(path, "validation", allow_empty=True)
    if val_labels is None:
        return items
    if not isinstance(val_labels, int) or isinstance(val_labels, bool) or val_labels < 0:
        raise DataError(f"val_labels must be 0 (no validation) or a number of validation images, got {val_labels!r}.")
    if val_labels > len(items):
        raise DataError(f"{val_labels} validation images were asked (val_labels), but '{path}' has {len(items)}. "
                        f"Lower val_labels, or rewrite the dataset with `prepare_data.py … --val_fraction` to hold "
                        "more out.")
    return items[:val_labels]


def class_names(path: str) -> list[str]:
    """Class names in label-value order (background first) from the datalist's ``labels`` map."""
    labels = read_datalist_info(path).get("labels")
    if not labels:
        raise DataError(f"datalist '{path}' has no 'labels' map (value -> class name). {_FIX}")
    return [labels[k] for k in sorted(labels, key=int)]


def spacing_unit(path: str) -> str:
    """The unit of the images' spacing, hence of HD95: ``mm`` or ``px`` (``px`` when not recorded)."""
    return str(read_datalist_info(path).get("spacing_unit", "px"))
