"""Segmentation metrics that charge false positives, in physical units, and the per-class report every
evaluation writes.

Images whose ground truth lacks a class follow nnU-Net and the Metrics Reloaded recommendations:

| ground truth | prediction | Dice, IoU | HD95 |
|---|---|---|---|
| has the class | has it | computed | computed |
| has the class | lacks it | 0 | the image diagonal (the worst finite distance) |
| lacks the class | has it | 0 | the image diagonal |
| lacks the class | lacks it | left out (``both_empty="exclude"``) or 1 (``"one"``) | left out, or 0 |

So a false-positive kidney on a slice without a kidney costs Dice, where ``DiceMetric(ignore_empty=True)``
would make it free. The report counts, per class, the images that fell into each row.

HD95 distances come from each label's own affine (kept by MONAI's MetaTensor through the transforms, so
a resize updates it): millimetres where the source carried a spacing, pixels where it did not (PNG, JPG,
...). The dataset's ``spacing_unit`` says which; reports print it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU

__all__ = ["VolumeMetrics", "EmptyAwareDiceMetric", "EmptyAwareIoUMetric", "PhysicalHausdorffDistanceMetric", "ImageCaseMetric",
           "DiceHandler", "IoUHandler", "HD95Handler", "CaseCountHandler", "MetricsReport",
           "summarise_metric_details", "score_label_maps", "format_report", "BOTH_EMPTY", "CASES"]

BOTH_EMPTY = ("exclude", "one")
# ImageCaseMetric codes, per image and class.
CASES = {0: "both_empty", 1: "false_positive_images", 2: "missed_images", 3: "present_in_both"}


def _presence(y_pred: torch.Tensor, y: torch.Tensor, include_background: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction has the class, ground truth has the class), each (N, C) bool."""
    start = 0 if include_background else 1
    return y_pred[:, start:].flatten(2).any(-1), y[:, start:].flatten(2).any(-1)


def _check_both_empty(both_empty: str) -> str:
    if both_empty not in BOTH_EMPTY:
        raise ValueError(f"both_empty must be one of {BOTH_EMPTY}, got '{both_empty}'")
    return both_empty


class _BothEmptyRule:
    """Mixin for MONAI's overlap metrics run with ``ignore_empty=False`` (false positive -> 0, both empty ->
    1): images where both are empty become NaN (left out) unless ``both_empty="one"``."""

    def __init__(self, include_background: bool = False, reduction: str = "mean", both_empty: str = "exclude") -> None:
        super().__init__(include_background=include_background, reduction=reduction, ignore_empty=False)
        self.both_empty = _check_both_empty(both_empty)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = super()._compute_tensor(y_pred, y)
        if self.both_empty == "exclude":
            pred, gt = _presence(y_pred, y, self.include_background)
            value = torch.where(~pred & ~gt, torch.full_like(value, float("nan")), value)
        return value


class EmptyAwareDiceMetric(_BothEmptyRule, DiceMetric):
    """Dice per image and class: 0 for a false positive on an image without the class; images where both
    are empty are left out (NaN) or score 1 (``both_empty="one"``)."""


class EmptyAwareIoUMetric(_BothEmptyRule, MeanIoU):
    """IoU per image and class, with the same empty-image rule as ``EmptyAwareDiceMetric``."""


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """``HausdorffDistanceMetric`` whose spacing is read from each label's affine, and which gives the image
    diagonal (the worst finite distance) wherever exactly one of prediction and ground truth has the class.

    Args:
        both_empty: ``exclude`` (NaN where neither has the class) or ``one`` (distance 0 there).
        kwargs: as ``HausdorffDistanceMetric``.
    """

    def __init__(self, *args, both_empty: str = "exclude", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.both_empty = _check_both_empty(both_empty)

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
        pred, gt = (p.to(hd.device) for p in _presence(y_pred, y, self.include_background))
        hd = torch.where(pred ^ gt, torch.full_like(hd, diagonal), hd)
        empty = float("nan") if self.both_empty == "exclude" else 0.0
        return torch.where(~pred & ~gt, torch.full_like(hd, empty), hd)


class ImageCaseMetric(CumulativeIterationMetric):
    """Which empty-image case each image and class fell into (codes in ``CASES``), for the report."""

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        self.include_background = include_background

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pred, gt = _presence(y_pred, y, self.include_background)
        return (pred.long() + 2 * gt.long()).float()

    def aggregate(self):  # type: ignore[override]
        """The number of (image, class) pairs with a false positive on an image without the class."""
        return (self.get_buffer() == 1).sum().float()


def _handler(metric, output_transform: Callable, save_details: bool) -> dict:
    return {"metric_fn": metric, "output_transform": output_transform, "save_details": save_details}


class DiceHandler(IgniteMetricHandler):
    """Ignite handler of ``EmptyAwareDiceMetric`` (mean over images and classes, NaN left out).

    Args:
        include_background: include channel 0.
        both_empty: ``exclude`` or ``one`` (see the module docstring).
        output_transform: engine output -> (y_pred, y), both one-hot.
        save_details: keep per-image values in ``engine.state.metric_details``.
    """

    def __init__(self, include_background: bool = False, both_empty: str = "exclude",
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        super().__init__(**_handler(EmptyAwareDiceMetric(include_background, both_empty=both_empty),
                                    output_transform, save_details))


class IoUHandler(IgniteMetricHandler):
    """Ignite handler of ``EmptyAwareIoUMetric`` (arguments as ``DiceHandler``)."""

    def __init__(self, include_background: bool = False, both_empty: str = "exclude",
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        super().__init__(**_handler(EmptyAwareIoUMetric(include_background, both_empty=both_empty),
                                    output_transform, save_details))


class HD95Handler(IgniteMetricHandler):
    """Ignite handler for the 95th-percentile Hausdorff distance in the dataset's spacing unit.

    Args:
        include_background: include channel 0.
        both_empty: ``exclude`` or ``one`` (see the module docstring).
        reduction: MONAI reduction of the per-image, per-class values.
        output_transform: engine output -> (y_pred, y), both one-hot.
        save_details: keep per-image values in ``engine.state.metric_details``.
    """

    def __init__(self, include_background: bool = False, both_empty: str = "exclude", reduction: str = "mean",
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        metric = PhysicalHausdorffDistanceMetric(include_background=include_background, percentile=95,
                                                 reduction=reduction, both_empty=both_empty)
        super().__init__(**_handler(metric, output_transform, save_details))


class CaseCountHandler(IgniteMetricHandler):
    """Records ``ImageCaseMetric`` per image for the report; its value is the number of false-positive
    (image, class) pairs."""

    def __init__(self, include_background: bool = False, output_transform: Callable = lambda x: x) -> None:
        super().__init__(**_handler(ImageCaseMetric(include_background), output_transform, True))


def summarise_metric_details(details: dict[str, torch.Tensor], names: dict[str, str],
                             class_names: Sequence[str], unit: str = "mm") -> dict:
    """Per-class and mean values from per-image metric buffers.

    Args:
        details: ``engine.state.metric_details``: metric name -> (N images, C classes).
        names: report key (``dice``, ``hd95``, ``iou``, and ``cases`` for ``ImageCaseMetric``) -> metric name
            in ``details``.
        class_names: the C foreground class names.
        unit: the unit of HD95 (``mm`` or ``px``), recorded in the report.

    Returns:
        ``{"mean_dice", "mean_hd95", "mean_iou", "hd95_unit", "images",
        "per_class": {name: {"dice", "hd95", "iou", "images": {case: count}}},
        "per_image": {"dice": [[per class] per image in evaluation order], ...}}`` (``None`` where a
        value is left out), for paired tests between models evaluated on the same images.
    """
    report: dict = {"per_class": {c: {} for c in class_names}, "hd95_unit": unit}
    for key, metric in names.items():
        values = torch.as_tensor(details[metric], dtype=torch.float64)
        if values.shape[-1] != len(class_names):
            raise ValueError(f"{metric} has {values.shape[-1]} classes but class_names has {len(class_names)}")
        report["images"] = int(values.shape[0])
        if key == "cases":
            for c, column in zip(class_names, values.T):
                report["per_class"][c]["images"] = {name: int((column == code).sum()) for code, name in CASES.items()}
            continue
        report.setdefault("per_image", {})[key] = [[None if math.isnan(v) else round(float(v), 6) for v in row]
                                                   for row in values]
        per_class = [float(v) for v in values.nanmean(0)]
        for c, v in zip(class_names, per_class):
            report["per_class"][c][key] = v
        finite = [v for v in per_class if not math.isnan(v)]
        report[f"mean_{key}"] = sum(finite) / len(finite) if finite else float("nan")
    return report


def score_label_maps(pairs: Iterable[tuple], class_names: Sequence[str], spacing: Sequence[float], unit: str = "mm",
                     both_empty: str = "exclude") -> dict:
    """The report an evaluation bundle writes, for label maps made elsewhere (another tool's predictions).

    Args:
        pairs: (prediction, ground truth) integer label maps of one image each, in evaluation order.
        class_names: all class names, background first.
        spacing: the pixel spacing HD95 is measured in (``unit``).
        both_empty: ``exclude`` or ``one`` (see the module docstring).
    """
    n = len(class_names)
    metrics = {"dice": EmptyAwareDiceMetric(both_empty=both_empty), "iou": EmptyAwareIoUMetric(both_empty=both_empty),
               "hd95": PhysicalHausdorffDistanceMetric(include_background=False, percentile=95, both_empty=both_empty),
               "cases": ImageCaseMetric()}
    for pred, label in pairs:
        onehot = [torch.nn.functional.one_hot(torch.as_tensor(m).long(), n).movedim(-1, 0)[None].float()
                  for m in (pred, label)]
        for name, metric in metrics.items():
            metric(*onehot, **({"spacing": [float(s) for s in spacing]} if name == "hd95" else {}))
    return summarise_metric_details({k: m.get_buffer() for k, m in metrics.items()}, {k: k for k in metrics},
                                    list(class_names)[1:], unit)


class VolumeMetrics:
    """Dice and HD95 per volume: each group of slices (``group`` in the datalist, e.g. a CHAOS patient)
    stacked in ``slice`` order, with ``slice_spacing`` as the third spacing. That is how users of 3D data
    compare; per-slice means weigh a thin slice of liver like the whole organ.

    It runs only when some group holds several slices, and leaves its report in
    ``engine.state.volume_report`` for ``MetricsReport`` (attach it first).

    Args:
        class_names: all class names, background first.
        both_empty: ``exclude`` or ``one`` (see the module docstring).
    """

    def __init__(self, class_names: Sequence[str], both_empty: str = "exclude") -> None:
        self.class_names = list(class_names)[1:]
        self.both_empty = _check_both_empty(both_empty)
        self.slices: dict[str, list] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.slices.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or not isinstance(output, list):
            return
        for item, out in zip(batch, output):
            group = item.get("group")
            if group is None:
                continue
            label = out["label"]
            spacing = [float(v) for v in label.pixdim[:2]] if isinstance(label, MetaTensor) else [1.0, 1.0]
            self.slices.setdefault(str(group), []).append(
                (float(item.get("slice", len(self.slices.get(str(group), [])))), out["pred"].argmax(0).to(torch.uint8),
                 label.argmax(0).to(torch.uint8), spacing + [float(item.get("slice_spacing", 1.0))]))

    def __call__(self, engine: Engine) -> None:
        volumes = {g: sorted(s, key=lambda x: x[0]) for g, s in self.slices.items() if len(s) > 1}
        if not volumes:
            return
        n = len(self.class_names) + 1
        dice = EmptyAwareDiceMetric(both_empty=self.both_empty)
        hd95 = PhysicalHausdorffDistanceMetric(include_background=False, percentile=95, both_empty=self.both_empty)
        for group, slices in sorted(volumes.items()):
            onehot = [torch.nn.functional.one_hot(torch.stack([s[k] for s in slices], -1).long(), n)
                      .permute(3, 0, 1, 2)[None].float() for k in (1, 2)]
            dice(onehot[0], onehot[1])
            hd95(onehot[0], onehot[1], spacing=slices[0][3])
        details = {"dice": dice.get_buffer(), "hd95": hd95.get_buffer()}
        report = summarise_metric_details(details, {"dice": "dice", "hd95": "hd95"}, self.class_names)
        report["volumes"] = report.pop("images")
        report["groups"] = sorted(volumes)
        engine.state.volume_report = report


class MetricsReport:
    """At the end of an evaluation, write per-class Dice / HD95 / IoU (and the empty-image counts) to JSON
    and log a table.

    Args:
        output_file: JSON path.
        class_names: all class names, background first (background is left out of the report).
        names: report key -> metric name (must be attached with ``save_details=True``).
        unit: HD95 unit (the dataset's ``spacing_unit``: ``mm`` or ``px``).
    """

    def __init__(self, output_file: str, class_names: Sequence[str], names: dict[str, str] | None = None,
                 unit: str = "mm") -> None:
        self.output_file = output_file
        self.class_names = list(class_names)[1:]
        self.names = names or {"dice": "val_mean_dice", "hd95": "val_hd95", "iou": "val_mean_iou", "cases": "val_cases"}
        self.unit = unit
        self.report: dict = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        names = {k: v for k, v in self.names.items() if v in details}
        self.report = summarise_metric_details(details, names, self.class_names, self.unit)
        volume = getattr(engine.state, "volume_report", None)
        if volume:
            self.report["per_volume"] = {**volume, "hd95_unit": self.unit}
        os.makedirs(os.path.dirname(os.path.abspath(self.output_file)), exist_ok=True)
        with open(self.output_file, "w") as f:
            json.dump(self.report, f, indent=1)
        self.logger.info("\n" + format_report(self.report) + f"\n(written to {self.output_file})")


def format_report(report: dict) -> str:
    """A plain-text table of a ``summarise_metric_details`` report, with the empty-image counts."""
    keys = [k for k in ("dice", "hd95", "iou") if f"mean_{k}" in report]
    unit = report.get("hd95_unit", "mm")
    header = f"{'class':<20}" + "".join(f"{k.upper() + (' ' + unit if k == 'hd95' else ''):>10}" for k in keys)
    counted = any("images" in v for v in report["per_class"].values())
    if counted:
        header += "  images: with class / false-positive / missed / both empty (left out)"
    rows = []
    for c, v in report["per_class"].items():
        row = f"{c:<20}" + "".join(f"{v.get(k, float('nan')):>10.4f}" for k in keys)
        if "images" in v:
            n = v["images"]
            row += (f"  {n['present_in_both'] + n['missed_images']} / {n['false_positive_images']} / "
                    f"{n['missed_images']} / {n['both_empty']}")
        rows.append(row)
    rows.append(f"{'mean':<20}" + "".join(f"{report[f'mean_{k}']:>10.4f}" for k in keys))
    volume = report.get("per_volume")
    if volume:
        rows.append(f"per volume ({volume['volumes']} volumes, slices stacked): mean Dice {volume['mean_dice']:.4f}, "
                    f"mean HD95 {volume['mean_hd95']:.2f} {unit}")
    return "\n".join([header, *rows])
