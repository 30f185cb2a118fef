"""Transforms MONAI does not have: checks that stop bad samples with a clear error."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import MapTransform

from common.errors import DataError

__all__ = ["ValidateSampled"]


def _source(data: Mapping[Hashable, Any], key: str) -> str:
    value = data.get(key)
    meta = getattr(value, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in memory>"))


class ValidateSampled(MapTransform):
    """Check one loaded image/label pair: same spatial size, label values in ``0..num_classes-1``.

    Put it right after ``EnsureChannelFirstd`` (before any resizing), so the error names the files.

    Args:
        keys: the image key and the label key, in that order.
        num_classes: number of classes including background.
    """

    def __init__(self, keys: tuple[str, str] = ("image", "label"), num_classes: int = 2) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key = keys
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, label = d.get(self.image_key), d.get(self.label_key)
        if label is None:
            return d
        if image is not None and tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise DataError(f"image '{_source(d, self.image_key)}' is {tuple(image.shape[1:])} but its mask "
                            f"'{_source(d, self.label_key)}' is {tuple(label.shape[1:])}; masks must match their "
                            "image pixel for pixel. Re-export the mask at the image's size.")
        values = torch.unique(torch.as_tensor(label))
        bad = [int(v) if v == v.round() else float(v) for v in values
               if v != v.round() or v < 0 or v >= self.num_classes]
        if bad:
            raise DataError(f"mask '{_source(d, self.label_key)}' holds label values {bad[:10]} outside "
                            f"0..{self.num_classes - 1} (num_classes={self.num_classes}). Map the values to class "
                            "indices when preparing the data, or set num_classes.")
        return d
