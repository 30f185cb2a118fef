"""Segmentation metrics in physical units, and the per-class report every evaluation writes.

HD95 in mm: MONAI's ``HausdorffDistance`` handler computes in pixels unless given a spacing; here the
spacing comes from each label's own affine (kept by MONAI's MetaTensor through the transforms, so a
resize updates it). An image whose class is in the ground truth but missing from the prediction gets
the image diagonal in mm (the worst finite distance) instead of inf; an image whose ground truth lacks
the class is left out of that class's mean, as ``DiceMetric(ignore_empty=True)`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric

__all__ = ["PhysicalHausdorffDistanceMetric", "HD95Handler", "MetricsReport", "summarise_metric_details"]


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """``HausdorffDistanceMetric`` whose spacing is read from each label's affine (mm)."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:  # type: ignore[override]
        spatial = y.ndim - 2
        if "spacing" not in kwargs and isinstance(y, MetaTensor):
            pix = y.pixdim  # a list of per-item spacings for a batch, one spacing otherwise
            kwargs["spacing"] = ([[float(s) for s in p[:spatial]] for p in pix] if isinstance(pix, (list, tuple))
                                 else [float(s) for s in pix[:spatial]])
        hd = super()._compute_tensor(y_pred, y, **kwargs)
        spacing = kwargs.get("spacing") or [1.0] * spatial
        first = spacing[0] if isinstance(spacing[0], (list, tuple)) else spacing
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(y.shape[2:], first)))
        start = 0 if self.include_background else 1
        gt_present = y[:, start:].flatten(2).any(-1).to(hd.device)
        hd = torch.where(gt_present & ~torch.isfinite(hd), torch.full_like(hd, diagonal), hd)
        return torch.where(gt_present, hd, torch.full_like(hd, float("nan")))


class HD95Handler(IgniteMetricHandler):
    """Ignite handler for the 95th-percentile Hausdorff distance in mm.

    Args:
        include_background: include channel 0.
        reduction: MONAI reduction of the per-image, per-class values.
        output_transform: engine output -> (y_pred, y), both one-hot.
        save_details: keep per-image values in ``engine.state.metric_details``.
    """

    def __init__(self, include_background: bool = False, reduction: str = "mean",
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        metric = PhysicalHausdorffDistanceMetric(include_background=include_background, percentile=95,
                                                 reduction=reduction)
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)


def summarise_metric_details(details: dict[str, torch.Tensor], names: dict[str, str],
                             class_names: Sequence[str]) -> dict:
    """Per-class and mean values from per-image metric buffers.

    Args:
        details: ``engine.state.metric_details``: metric name -> (N images, C classes).
        names: report key (``dice``, ``hd95``, ``iou``) -> metric name in ``details``.
        class_names: the C foreground class names.

    Returns:
        ``{"mean_dice", "mean_hd95", "mean_iou", "per_class": {name: {"dice", "hd95", "iou"}}, "images": N}``.
    """
    report: dict = {"per_class": {c: {} for c in class_names}}
    for key, metric in names.items():
        values = torch.as_tensor(details[metric], dtype=torch.float64)
        if values.shape[-1] != len(class_names):
            raise ValueError(f"{metric} has {values.shape[-1]} classes but class_names has {len(class_names)}")
        per_class = [float(v) for v in values.nanmean(0)]
        for c, v in zip(class_names, per_class):
            report["per_class"][c][key] = v
        finite = [v for v in per_class if not math.isnan(v)]
        report[f"mean_{key}"] = sum(finite) / len(finite) if finite else float("nan")
        report["images"] = int(values.shape[0])
    return report


class MetricsReport:
    """At the end of an evaluation, write per-class Dice / HD95 / IoU to JSON and log a table.

    Args:
        output_file: JSON path.
        class_names: all class names, background first (background is left out of the report).
        names: report key -> metric name (must be attached with ``save_details=True``).
    """

    def __init__(self, output_file: str, class_names: Sequence[str],
                 names: dict[str, str] | None = None) -> None:
        self.output_file = output_file
        self.class_names = list(class_names)[1:]
        self.names = names or {"dice": "val_mean_dice", "hd95": "val_hd95", "iou": "val_mean_iou"}
        self.report: dict = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        names = {k: v for k, v in self.names.items() if v in details}
        self.report = summarise_metric_details(details, names, self.class_names)
        os.makedirs(os.path.dirname(os.path.abspath(self.output_file)), exist_ok=True)
        with open(self.output_file, "w") as f:
            json.dump(self.report, f, indent=1)
        self.logger.info("\n" + format_report(self.report) + f"\n(written to {self.output_file})")


def format_report(report: dict) -> str:
    """A plain-text table of a ``summarise_metric_details`` report."""
    keys = [k for k in ("dice", "hd95", "iou") if f"mean_{k}" in report]
    header = f"{'class':<20}" + "".join(f"{k.upper() + (' mm' if k == 'hd95' else ''):>10}" for k in keys)
    rows = [f"{c:<20}" + "".join(f"{v.get(k, float('nan')):>10.4f}" for k in keys) for c, v in report["per_class"].items()]
    rows.append(f"{'mean':<20}" + "".join(f"{report[f'mean_{k}']:>10.4f}" for k in keys))
    return "\n".join([header, *rows])
