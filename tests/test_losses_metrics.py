import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss

from common.engines import PhysicalHausdorffDistanceMetric, summarise_metric_details


def test_seg_loss_is_02_ce_plus_08_dice_by_hand():
    # 1 image, 2 classes, 2 pixels: logits per pixel and the target classes.
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[0, 1]]]])  # (1, 1, 1, 2)
    p0 = math.exp(2) / (math.exp(2) + 1)  # softmax prob of class 0, pixel 0
    p1 = math.exp(1) / (math.exp(1) + 1)  # softmax prob of class 1, pixel 1
    ce = -(math.log(p0) + math.log(p1)) / 2
    # Dice per class (smooth 1e-5 on both sides, MONAI's default), averaged over the classes.
    probs = {0: [p0, 1 - p1], 1: [1 - p0, p1]}
    onehot = {0: [1, 0], 1: [0, 1]}
    dice_loss = np.mean([1 - (2 * sum(a * b for a, b in zip(probs[c], onehot[c])) + 1e-5)
                         / (sum(probs[c]) + sum(onehot[c]) + 1e-5) for c in (0, 1)])
    loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8)(logits, target)
    assert loss.item() == pytest.approx(0.2 * ce + 0.8 * dice_loss, rel=1e-5)


def _square(size, top, left, side):
    m = torch.zeros(size, size)
    m[top:top + side, left:left + side] = 1
    return m


def _onehot(fg):
    return torch.stack([1 - fg, fg])[None]


def test_hd95_is_in_millimetres_from_the_label_affine():
    gt = _square(32, 8, 8, 10)
    pred = _square(32, 8, 11, 10)  # shifted 3 columns (second spatial axis)
    affine = torch.diag(torch.tensor([2.0, 0.5, 1.0, 1.0]))
    y = MetaTensor(_onehot(gt), affine=affine)
    metric = PhysicalHausdorffDistanceMetric(include_background=False, percentile=95)
    hd_mm = metric(_onehot(pred), y)
    assert hd_mm.item() == pytest.approx(3 * 0.5, rel=1e-4)
    y_rows = MetaTensor(_onehot(_square(32, 5, 8, 10)), affine=affine)  # shifted 3 rows: 2 mm each
    assert PhysicalHausdorffDistanceMetric(percentile=95)(_onehot(gt), y_rows).item() == pytest.approx(6.0, rel=1e-4)
    in_pixels = PhysicalHausdorffDistanceMetric(percentile=95)(_onehot(pred), _onehot(gt))  # no affine: pixels
    assert in_pixels.item() == pytest.approx(3.0, rel=1e-4)


def test_hd95_empty_prediction_gets_the_diagonal_and_false_positive_too():
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    gt = MetaTensor(_onehot(_square(16, 2, 2, 4)), affine=affine)
    empty = _onehot(torch.zeros(16, 16))
    value = PhysicalHausdorffDistanceMetric(percentile=95)(empty, gt).item()
    assert value == pytest.approx(math.hypot(32, 32))
    absent = MetaTensor(_onehot(torch.zeros(16, 16)), affine=affine)
    # A prediction of a class the image does not have is the worst case too, not "left out".
    assert PhysicalHausdorffDistanceMetric(percentile=95)(_onehot(_square(16, 2, 2, 4)), absent).item() == \
        pytest.approx(math.hypot(32, 32))
    assert math.isnan(PhysicalHausdorffDistanceMetric(percentile=95)(empty, absent).item())
    assert PhysicalHausdorffDistanceMetric(percentile=95, both_empty="one")(empty, absent).item() == 0.0


def _batch(*pairs):
    """(y_pred, y) one-hot batches from (prediction mask, ground-truth mask) pairs."""
    return torch.cat([_onehot(p) for p, _ in pairs]), torch.cat([_onehot(g) for _, g in pairs])


def test_a_false_positive_image_lowers_dice_and_iou():
    from common.engines import EmptyAwareDiceMetric, EmptyAwareIoUMetric, ImageCaseMetric

    hit, empty = _square(16, 2, 2, 4), torch.zeros(16, 16)
    good = (hit, hit)  # Dice 1
    false_positive = (hit, empty)  # the class predicted on an image without it
    both_empty = (empty, empty)
    y_pred, y = _batch(good, false_positive, both_empty)
    dice = EmptyAwareDiceMetric()(y_pred, y)[:, 0]
    assert dice[0] == 1.0 and dice[1] == 0.0 and math.isnan(dice[2])
    iou = EmptyAwareIoUMetric()(y_pred, y)[:, 0]
    assert iou[0] == 1.0 and iou[1] == 0.0 and math.isnan(iou[2])
    assert EmptyAwareDiceMetric(both_empty="one")(y_pred, y)[2, 0] == 1.0
    # MONAI's default (ignore_empty=True) makes the false positive free: mean 1.0 instead of 0.5.
    from monai.metrics import DiceMetric

    assert torch.nanmean(DiceMetric(include_background=False)(y_pred, y)).item() == 1.0
    assert torch.nanmean(dice).item() == 0.5
    missed = (empty, hit)
    cases = ImageCaseMetric()(*_batch(good, false_positive, both_empty, missed))[:, 0].tolist()
    assert cases == [3, 1, 0, 2]


def test_report_counts_the_empty_image_cases_and_says_the_unit():
    from common.engines import format_report

    details = {"d": torch.tensor([[1.0], [0.0], [float("nan")], [0.0]]), "c": torch.tensor([[3.0], [1.0], [0.0], [2.0]]),
               "h": torch.tensor([[1.0], [9.0], [float("nan")], [9.0]])}
    report = summarise_metric_details(details, {"dice": "d", "hd95": "h", "cases": "c"}, ["lesion"], unit="px")
    assert report["per_class"]["lesion"]["images"] == {"both_empty": 1, "false_positive_images": 1, "missed_images": 1,
                                                       "present_in_both": 1}
    assert report["mean_dice"] == pytest.approx(1 / 3) and report["hd95_unit"] == "px"
    text = format_report(report)
    assert "HD95 px" in text and "HD95 mm" not in text and "2 / 1 / 1 / 1" in text


def test_per_class_summary_ignores_nan():
    details = {"d": torch.tensor([[0.5, float("nan")], [0.7, 0.2]]), "h": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    report = summarise_metric_details(details, {"dice": "d", "hd95": "h"}, ["a", "b"])
    assert report["per_class"]["a"]["dice"] == pytest.approx(0.6)
    assert report["per_class"]["b"]["dice"] == pytest.approx(0.2)
    assert report["mean_dice"] == pytest.approx(0.4)
    assert report["mean_hd95"] == pytest.approx(2.5)


def test_metrics_inside_the_evaluation_mask_only():
    """DRIVE: vessels predicted outside the field of view do not count; those inside do."""
    from common.data import MaskOutsideROId
    from common.engines import EmptyAwareDiceMetric

    gt = _square(16, 4, 4, 4)
    pred = gt.clone()
    pred[:, 14:] = 1  # false vessels in the two right-most columns, outside the field of view
    roi = torch.ones(1, 16, 16)
    roi[:, :, 12:] = 0
    whole = EmptyAwareDiceMetric()(_onehot(pred), _onehot(gt)).item()
    masked = MaskOutsideROId(["pred", "label"])({"pred": _onehot(pred)[0], "label": _onehot(gt)[0], "roi": roi})
    assert whole < 0.6
    assert EmptyAwareDiceMetric()(masked["pred"][None], masked["label"][None]).item() == 1.0
    assert masked["pred"].sum(0).eq(1).all()  # still one-hot
    inside = pred.clone()
    inside[0:2, 0:2] = 1  # a false vessel inside the field of view still costs
    masked = MaskOutsideROId(["pred", "label"])({"pred": _onehot(inside)[0], "label": _onehot(gt)[0], "roi": roi})
    assert EmptyAwareDiceMetric()(masked["pred"][None], masked["label"][None]).item() < 1.0


def test_volume_metrics_stack_each_patients_slices():
    """CHAOS-style evaluation: per volume, a false-positive slice costs its pixels, not a whole slice's Dice."""
    from types import SimpleNamespace

    from common.engines import VolumeMetrics

    hit, empty = _square(8, 2, 2, 2), torch.zeros(8, 8)
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    volume = VolumeMetrics(["background", "organ"])
    engine = SimpleNamespace(state=SimpleNamespace())
    # Patient p: slice 1 found, slice 0 has a false positive; given out of order (slice index sorts them).
    for group, index, pred, gt in (("p", 1, hit, hit), ("p", 0, hit, empty), ("single", 0, hit, hit)):
        engine.state.batch = [{"group": group, "slice": torch.tensor(index), "slice_spacing": 5.0}]
        engine.state.output = [{"pred": _onehot(pred)[0], "label": MetaTensor(_onehot(gt)[0], affine=affine)}]
        volume.collect(engine)
    volume(engine)
    report = engine.state.volume_report
    assert report["volumes"] == 1 and report["groups"] == ["p"]  # a one-slice group is not a volume
    assert report["per_class"]["organ"]["dice"] == pytest.approx(2 * 4 / (8 + 4))  # per slice it would be 0.5
    # The false positive sits one slice (5 mm) away from the true organ.
    assert report["per_class"]["organ"]["hd95"] == pytest.approx(5.0)
