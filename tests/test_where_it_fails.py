"""Where a model fails: row-normalised confusion, the most-confused pairs in words, each image's own mIoU and
the worst images found in one pass, error maps, the confusion heatmap's HTML, and colours for many classes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segdemo.core.evaluate import evaluate_model
from segdemo.core.metrics import (
    confusion_matrix,
    confusion_to_dict,
    image_miou,
    most_confused,
    row_normalised,
)
from segdemo.core.viz import ERROR_COLORS, confusion_html, error_map
from segdemo.data.base import IGNORE, ArraySource, ClassSet
from segdemo.events import EpochEnd, Preview
from segdemo.palette import HAND_PICKED, distinct_colors, to_lab
from segdemo.server.jobs import Job
from tests.conftest import tiny_config

# the 3x3 masks of test_metrics.py: cm = [[2, 1, 0], [1, 2, 0], [0, 1, 1]] (rows = truth)
T = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, IGNORE]])
P = torch.tensor([[0, 1, 1], [0, 1, 0], [2, 1, 2]])
CAMVID3 = ["Building", "Pole", "Road"]


def test_rows_are_shares_of_the_true_class():
    share = row_normalised(confusion_matrix(P, T, 4))
    # truth 0 has 3 pixels (2 right, 1 as 1), truth 1 has 3, truth 2 has 2; class 3 has none: a NaN row
    assert share[:3] == pytest.approx(np.array([[2 / 3, 1 / 3, 0, 0], [1 / 3, 2 / 3, 0, 0], [0, 1 / 2, 1 / 2, 0]]))
    assert np.isnan(share[3]).all()
    assert np.nansum(share, axis=1)[:3] == pytest.approx([1, 1, 1])


def test_most_confused_pairs_in_words():
    # 100 Pole pixels: 41 taken for Building, 59 right; 1000 Road pixels: 50 taken for Building (more pixels,
    # smaller share); Building always right
    cm = np.array([[500, 0, 0], [41, 59, 0], [50, 0, 950]])
    pairs = most_confused(cm)
    assert [(p.true, p.predicted) for p in pairs] == [(1, 0), (2, 0)]
    assert pairs[0].sentence(CAMVID3) == "Pole is taken for Building 41% of the time"
    assert pairs[0].pixels == 41 and pairs[1].share == pytest.approx(0.05)
    assert most_confused(cm, k=1) == pairs[:1]
    assert most_confused(cm, min_share=0.1) == pairs[:1]  # Road's 5% is below the floor
    assert most_confused(np.diag([5, 6, 7])) == []  # nothing confused
    # the 3x3 masks: truth 2 is taken for 1 half the time, then the two 1/3 cells
    assert [(p.true, p.predicted) for p in most_confused(confusion_matrix(P, T, 3))] == [(2, 1), (0, 1), (1, 0)]


def test_confusion_as_json():
    doc = confusion_to_dict(np.array([[500, 0, 0], [41, 59, 0], [0, 0, 0]]), CAMVID3)
    assert doc["classes"] == CAMVID3 and doc["counts"][1] == [41, 59, 0]
    assert doc["row_normalised"][1] == [0.41, 0.59, 0.0] and doc["row_normalised"][2] == [None, None, None]
    assert doc["most_confused"][0]["sentence"] == "Pole is taken for Building 41% of the time"


def test_one_images_miou_uses_the_splits_rule():
    # the 3x3 masks: IoUs 1/2, 2/5, 1/2 (test_metrics.py)
    assert image_miou(confusion_matrix(P, T, 4)) == pytest.approx(1.4 / 3)  # class 3: absent, left out
    assert image_miou(confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2), 3)) == 1.0  # all background, right
    assert math.isnan(image_miou(confusion_matrix(P, torch.full((3, 3), IGNORE), 3)))  # nothing counted


class AlwaysBackground(torch.nn.Module):
    """A real model that answers class 0 everywhere: the scores of each image are then known by hand."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        torch.nn.init.zeros_(self.conv.weight)
        self.conv.bias.data = torch.tensor([1.0, 0.0])

    def forward(self, x):
        return self.conv(x)


class CountingSource(ArraySource):
    """Pairs in memory that count how often each is read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.loads = [0] * len(self)

    def load(self, i):
        self.loads[i] += 1
        return super().load(i)


def test_worst_images_come_from_the_same_single_pass():
    # image k: its top k rows are class 1, the rest background. Predicting background everywhere scores
    # IoU_0 = (16 - k) / 16 and IoU_1 = 0, so mIoU (16 - k) / 32; image 0 (all background) scores 1.0
    masks = []
    for k in range(8):
        m = np.zeros((16, 16), np.uint8)
        m[:k] = 1
        masks.append(m)
    masks.append(np.full((16, 16), IGNORE, np.uint8))  # nothing to score: never among the worst
    images = [np.full((16, 16, 3), 100, np.uint8)] * len(masks)
    src = CountingSource(images, masks, [f"img{k}" for k in range(len(masks))])
    cfg = tiny_config()
    cfg.data.image_size = 16
    classes = ClassSet.default(["background", "thing"])
    res = evaluate_model(AlwaysBackground(), src, cfg, classes, batch_size=3, worst=3, preview_indices=[0])
    assert [w.name for w in res.worst] == ["img7", "img6", "img5"]
    assert [w.miou for w in res.worst] == pytest.approx([9 / 32, 10 / 32, 11 / 32])
    assert res.worst[0].pred.shape == (16, 16) and (res.worst[0].pred == 0).all()
    assert np.array_equal(res.worst[0].target, masks[7])
    assert src.loads == [1] * len(masks)  # every image read once: no second pass for the worst
    # the split's matrix is the sum of the images' own
    assert res.confusion.tolist() == [[sum(256 - 16 * k for k in range(8)), 0], [16 * sum(range(8)), 0]]
    assert evaluate_model(AlwaysBackground(), src, cfg, classes, worst=0).worst == []
    assert len(evaluate_model(AlwaysBackground(), src, cfg, classes, worst=20).worst) == 8  # all that have pixels


def test_error_map_colours_right_wrong_missed_and_ignored():
    target = np.array([[0, 1], [2, IGNORE]], np.uint8)
    pred = np.array([[0, 2], [0, 1]], np.uint8)
    e = error_map(pred, target)
    # (0,0) right; (0,1) truth 1 predicted 2: wrong class; (1,0) truth 2 predicted background: missed
    assert tuple(e[0, 0]) == ERROR_COLORS["correct"] and tuple(e[0, 1]) == ERROR_COLORS["wrong"]
    assert tuple(e[1, 0]) == ERROR_COLORS["missed"] and tuple(e[1, 1]) == ERROR_COLORS["ignored"]
    # for one class: its true positives, false positives and false negatives
    f = error_map(pred, target, focus_class=2)
    assert tuple(f[0, 1]) == ERROR_COLORS["wrong"] and tuple(f[1, 0]) == ERROR_COLORS["missed"]
    assert tuple(f[0, 0]) == (0, 0, 0)  # neither predicted nor true class 2


def test_confusion_html_escapes_names_and_says_the_pairs():
    names = ["Building", "<img src=x onerror=alert(1)>", "Road"]
    html = confusion_html(np.array([[500, 0, 0], [41, 59, 0], [0, 0, 0]]), ClassSet.default(names))
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt; is taken for Building 41% of the time" in html
    assert ">59<" in html and ">41<" in html  # row shares in %, not counts
    # many classes: a readable table of the biggest ones, the sentences over all of them
    k = 30
    cm = np.diag(np.arange(1, k + 1) * 10)
    cm[0, 1] = 10  # class 0 (10 px right) is taken for class 1 half the time
    big = confusion_html(cm, ClassSet.default([f"c{i}" for i in range(k)]), max_classes=8)
    assert "Showing the 8 of 30 classes" in big and ">c29<" in big and ">c3<" not in big
    assert "c0 is taken for c1 50% of the time" in big


def test_default_colours_stay_distinct_beyond_twenty_classes():
    assert distinct_colors(20) == HAND_PICKED  # the first 20 keep their colours (older runs look the same)
    assert distinct_colors(40)[:20] == HAND_PICKED and distinct_colors(100)[:40] == distinct_colors(40)
    for n in (40, 100, 254):
        colors = ClassSet.default([f"c{i}" for i in range(n)]).colors
        assert len(set(colors)) == n
        lab = to_lab(np.array(colors))
        d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        # CIELAB distance 10 is plainly different at a glance (2.3 is the smallest a trained eye sees);
        # the old palette repeated itself from class 21 on (distance 0)
        assert d.min() > 10, n
        assert np.linalg.norm(lab - to_lab(np.array([255, 255, 255])), axis=1).min() > 10  # never "ignored" white


def _epoch(n: int, with_pictures: bool) -> EpochEnd:
    pic = Preview(
        name="a", image=np.zeros((4, 4, 3), np.uint8), target=np.zeros((4, 4), np.uint8),
        pred=np.zeros((4, 4), np.uint8), miou=0.5,
    )  # fmt: skip
    return EpochEnd(
        epoch=n, epochs=3, train_loss=1.0, val_loss=1.0, miou=0.5, pixel_accuracy=0.5, per_class_iou=[0.5],
        lr=1e-3, seconds=1.0, images_per_s=10.0, is_best=False,
        previews=[pic] if with_pictures else [],
        confusion=np.eye(2, dtype=np.int64) if with_pictures else None,
        worst=[pic] if with_pictures else [],
    )  # fmt: skip


def test_a_job_keeps_pictures_and_confusion_of_the_newest_epoch_only(tmp_path: Path):
    job = Job("j", "owner", tiny_config(), tmp_path)
    for n in (1, 2, 3):
        job._append(_epoch(n, True))
    kept = [(bool(e.previews), e.confusion is not None, bool(e.worst)) for e in job.events]
    assert kept == [(False, False, False), (False, False, False), (True, True, True)]
    job._append(_epoch(4, False))  # an epoch without pictures leaves the last ones in place
    assert job.events[2].confusion is not None and job.events[2].worst


def test_kept_predictions_are_bounded_and_only_their_owner_finds_them():
    from segdemo.errors import UserError
    from segdemo.server.tokens import OwnerTokens
    from segdemo.ui.views import View, ViewCache

    tokens = OwnerTokens(b"x" * 32)
    a, b = tokens.issue(), tokens.issue()
    classes = ClassSet.default(["bg", "fg"])
    pic = np.zeros((10, 10, 3), np.uint8)  # 300 bytes + a 100-byte mask: 400 bytes a view
    cache = ViewCache(max_bytes=1500, per_owner=2)
    ids = [cache.put(a, View(pic, np.zeros((10, 10), np.uint8), None, classes)) for _ in range(3)]
    with pytest.raises(UserError, match="no longer kept"):
        cache.get(a, ids[0])  # a browser keeps its newest two
    assert cache.get(a, ids[2]).mask.shape == (10, 10)
    with pytest.raises(UserError, match="no longer kept"):
        cache.get(b, ids[2])  # another browser: the same words as a made-up id
    for _ in range(2):
        cache.put(b, View(pic, np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), classes))  # 500 bytes
    assert len(cache) == 3  # 2 x 400 + 2 x 500 > 1500: the oldest went
    with pytest.raises(UserError):
        cache.get(a, ids[1])
    left, right = cache.get(a, ids[2]).pair(0.5)
    assert left is pic and right.shape == (10, 10, 3)  # no truth: the image beside the prediction
    # kept at display size: a big photo shrinks, its masks by nearest neighbour (class ids stay ids)
    big = View.for_display(
        np.zeros((3000, 1500, 3), np.uint8), np.full((3000, 1500), 3, np.uint8), np.full((3000, 1500), 255, np.uint8),
        classes,
    )  # fmt: skip
    assert big.image.shape == (1024, 512, 3) and big.mask.shape == big.target.shape == (1024, 512)
    assert set(np.unique(big.mask)) == {3} and set(np.unique(big.target)) == {255}
