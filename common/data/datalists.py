"""Our datalist format: a MONAI (Decathlon-style) JSON with the dataset's description alongside.

```
{"name": "demo", "labels": {"0": "background", "1": "grey_matter", ...}, "spacing": [1.8, 1.8],
 "image_size": 128, "channels": 1,
 "training": [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}, ...],
 "validation": [...], "test": [...]}
```
Paths are relative to the JSON's folder. The order of ``training`` is the label-budget order: the first
N items are the N-label budget, so smaller budgets nest in larger ones.
"""

from __future__ import annotations

import json
import os
from typing import Any

from monai.data import load_decathlon_datalist

from common.errors import DataError

__all__ = ["load_datalist", "read_datalist_info", "class_names"]

_FIX = "Run `python scripts/prepare_data.py …` to (re)write the dataset, or point dataset_dir at the folder holding datalist.json."


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


def load_datalist(path: str, key: str = "training", limit: int | None = None) -> list[dict[str, Any]]:
    """The items of one split, with absolute paths, checked to exist.

    Args:
        path: the datalist JSON.
        key: ``training``, ``validation`` or ``test``.
        limit: use only the first ``limit`` items (a label budget); ``None`` or 0 for all.

    Returns:
        MONAI data dicts (``image``, ``label`` and any extra fields).
    """
    info = read_datalist_info(path)
    if not info.get(key):
        raise DataError(f"datalist '{path}' has no '{key}' items. {_FIX}")
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key)
    if limit:
        if limit > len(items):
            raise DataError(f"a budget of {limit} labelled images was asked, but '{path}' has only {len(items)} "
                            f"'{key}' items. Lower `labels`.")
        items = items[:limit]
    missing = [item[k] for item in items for k in ("image", "label") if k in item and not os.path.isfile(item[k])]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  … and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise DataError(f"{len(missing)} file(s) listed in '{path}' ({key}) do not exist:\n  {shown}\n{_FIX}")
    return items


def class_names(path: str) -> list[str]:
    """Class names in label-value order (background first) from the datalist's ``labels`` map."""
    labels = read_datalist_info(path).get("labels")
    if not labels:
        raise DataError(f"datalist '{path}' has no 'labels' map (value -> class name). {_FIX}")
    return [labels[k] for k in sorted(labels, key=int)]
