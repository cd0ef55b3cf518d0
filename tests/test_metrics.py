"""Metrics on 3x3 masks whose answers were computed by hand (see the comments)."""

import math

import numpy as np
import pytest
import torch

from segdemo.core.metrics import ConfusionMeter, confusion_matrix, metrics_from_confusion
from segdemo.data.base import IGNORE

T = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, IGNORE]])
P = torch.tensor([[0, 1, 1], [0, 1, 0], [2, 1, 2]])


def test_confusion_matrix_by_hand():
    # pairs (gt, pred): (0,0) (0,1) (1,1) (0,0) (1,1) (1,0) (2,2) (2,1); the IGNORE pixel is skipped
    cm = confusion_matrix(P, T, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 2, 0], [0, 1, 1]]


def test_iou_dice_accuracy_by_hand():
    m = metrics_from_confusion(confusion_matrix(P, T, 3))
    # class 0: tp 2, gt 3, pred 3 -> IoU 2/4, Dice 4/6; class 1: tp 2, gt 3, pred 4 -> 2/5, 4/7;
    # class 2: tp 1, gt 2, pred 1 -> 1/2, 2/3
    assert m.iou == pytest.approx([0.5, 0.4, 0.5])
    assert m.dice == pytest.approx([4 / 6, 4 / 7, 2 / 3])
    assert m.pixel_accuracy == pytest.approx(5 / 8)
    assert m.miou == pytest.approx((0.5 + 0.4 + 0.5) / 3)
    assert m.pixel_share == pytest.approx([3 / 8, 3 / 8, 2 / 8])


def test_absent_class_rule():
    # 4 classes: class 3 never appears nor is predicted -> NaN, left out of the mean
    m = metrics_from_confusion(confusion_matrix(P, T, 4))
    assert math.isnan(m.iou[3]) and m.miou == pytest.approx(1.4 / 3)
    # class 2 predicted where the ground truth has none -> IoU 0, and it counts
    t = torch.tensor([[0, 0], [1, 1]])
    p = torch.tensor([[0, 2], [1, 1]])
    m = metrics_from_confusion(confusion_matrix(p, t, 3))
    assert m.iou == pytest.approx([0.5, 1.0, 0.0])
    assert m.miou == pytest.approx(0.5)


def test_one_matrix_over_the_split_not_a_mean_of_batches():
    # batch A: a big image, all right; batch B: one pixel of class 1, wrong
    meter = ConfusionMeter(2)
    meter.update(torch.zeros(10, 10, dtype=torch.long), torch.zeros(10, 10, dtype=torch.long))
    meter.update(torch.tensor([[0]]), torch.tensor([[1]]))
    m = meter.compute()
    # class 0: tp 100, gt 100, pred 101 -> 100/101; class 1: tp 0, union 1 -> 0
    assert m.iou == pytest.approx([100 / 101, 0.0])
    per_batch_mean = np.mean([1.0, 0.0])  # what averaging per-batch mIoUs would claim
    assert m.miou != pytest.approx(per_batch_mean)


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)


def test_to_dict_has_no_nan():
    d = metrics_from_confusion(confusion_matrix(P, T, 4)).to_dict(["a", "b", "c", "d"])
    assert d["per_class"][3]["iou"] is None and d["per_class"][0]["name"] == "a"
