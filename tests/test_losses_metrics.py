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


def test_hd95_empty_prediction_gets_the_diagonal_and_absent_class_is_left_out():
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    gt = MetaTensor(_onehot(_square(16, 2, 2, 4)), affine=affine)
    empty = _onehot(torch.zeros(16, 16))
    value = PhysicalHausdorffDistanceMetric(percentile=95)(empty, gt).item()
    assert value == pytest.approx(math.hypot(32, 32))
    absent = MetaTensor(_onehot(torch.zeros(16, 16)), affine=affine)
    assert math.isnan(PhysicalHausdorffDistanceMetric(percentile=95)(_onehot(_square(16, 2, 2, 4)), absent).item())


def test_per_class_summary_ignores_nan():
    details = {"d": torch.tensor([[0.5, float("nan")], [0.7, 0.2]]), "h": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    report = summarise_metric_details(details, {"dice": "d", "hd95": "h"}, ["a", "b"])
    assert report["per_class"]["a"]["dice"] == pytest.approx(0.6)
    assert report["per_class"]["b"]["dice"] == pytest.approx(0.2)
    assert report["mean_dice"] == pytest.approx(0.4)
    assert report["mean_hd95"] == pytest.approx(2.5)
