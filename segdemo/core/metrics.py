"""Confusion matrix over a whole split, then per-class IoU, Dice, pixel accuracy and mIoU.

Rule for absent classes: a class with no pixels in the ground truth AND none predicted has an
undefined IoU (NaN) and is left out of the mean. A class absent from the ground truth but predicted
somewhere scores IoU 0 (those are all false positives) and counts. Ignored pixels count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segdemo.data.base import IGNORE


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE
) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction.

    pred, target: integer tensors of the same shape; target pixels equal to ignore_index are skipped.
    """
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"target holds labels outside 0..{num_classes - 1}")
    return (
        torch.bincount(t * num_classes + p.clamp(0, num_classes - 1), minlength=num_classes**2)
        .reshape(num_classes, num_classes)
        .cpu()
    )


@dataclass
class SegMetrics:
    iou: list[float]  # per class; NaN where undefined (see the module docstring)
    dice: list[float]
    pixel_share: list[float]  # fraction of valid ground-truth pixels per class
    pixel_accuracy: float
    miou: float  # mean of the defined IoUs

    def to_dict(self, names: list[str] | tuple[str, ...] | None = None) -> dict:
        names = list(names) if names is not None else [str(i) for i in range(len(self.iou))]
        clean = lambda v: None if np.isnan(v) else round(float(v), 6)  # noqa: E731 - JSON has no NaN
        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "per_class": [
                {"name": n, "iou": clean(i), "dice": clean(d), "pixel_share": clean(s)}
                for n, i, d, s in zip(names, self.iou, self.dice, self.pixel_share, strict=True)
            ],
        }


def metrics_from_confusion(cm: torch.Tensor | np.ndarray) -> SegMetrics:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(gt + pred > 0, 2 * tp / (gt + pred), np.nan)
    total = cm.sum()
    defined = ~np.isnan(iou)
    return SegMetrics(
        iou=iou.tolist(),
        dice=dice.tolist(),
        pixel_share=(gt / total).tolist() if total else [0.0] * len(gt),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        miou=float(iou[defined].mean()) if defined.any() else float("nan"),
    )


class ConfusionMeter:
    """Accumulates one confusion matrix over every batch of a split."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one batch (or one image); returns its own counts (e.g. to score that image alone)."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.cm += cm
        return cm

    def compute(self) -> SegMetrics:
        return metrics_from_confusion(self.cm)


# -- where it fails: the confusion read as shares and sentences ---------------------------------------


def row_normalised(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """(K, K) float64: each ground-truth row divided by its pixel count, so row t, column p is the share of
    class t's pixels predicted as p. A class with no ground-truth pixels has a row of NaN (nothing to share)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / rows, np.nan)


@dataclass(frozen=True)
class ConfusedPair:
    true: int  # class id in the ground truth
    predicted: int  # the class the model took it for
    share: float  # of the true class's pixels
    pixels: int

    def sentence(self, names) -> str:
        """ "Pole is taken for Building 41% of the time" (plain text: escape it for HTML or Markdown)."""
        return f"{names[self.true]} is taken for {names[self.predicted]} {self.share:.0%} of the time"


def most_confused(cm: torch.Tensor | np.ndarray, k: int = 5, min_share: float = 0.01) -> list[ConfusedPair]:
    """The k off-diagonal cells with the largest row share (at least `min_share`), largest first; ties go to
    the pair with more pixels. Shares, not counts: a small class wholly taken for another is the news, even
    when the big classes' few percent are more pixels."""
    cm = np.asarray(cm, dtype=np.int64)
    share = row_normalised(cm)
    np.fill_diagonal(share, np.nan)
    t, p = np.nonzero(np.nan_to_num(share, nan=0.0) >= max(min_share, 1e-12))
    order = sorted(zip(t.tolist(), p.tolist(), strict=True), key=lambda tp: (-share[tp], -cm[tp]))
    return [ConfusedPair(a, b, float(share[a, b]), int(cm[a, b])) for a, b in order[:k]]


def confusion_to_dict(cm: torch.Tensor | np.ndarray, names, k: int = 5) -> dict:
    """The confusion for JSON: counts and row shares (rows = ground truth, columns = prediction, in `names`
    order; null where a class has no ground-truth pixels) and the most-confused pairs in words."""
    shares = row_normalised(cm)
    return {
        "classes": list(names),
        "counts": np.asarray(cm, dtype=np.int64).tolist(),
        "row_normalised": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in shares],
        "most_confused": [
            {
                "true": names[c.true],
                "predicted": names[c.predicted],
                "share": round(c.share, 6),
                "pixels": c.pixels,
                "sentence": c.sentence(names),
            }
            for c in most_confused(cm, k)
        ],
    }


def image_miou(cm: torch.Tensor | np.ndarray) -> float:
    """One image's mIoU from its own confusion: the split's rule (classes neither in its truth nor predicted
    are left out), so an image showing only background and one shape is scored on those two. NaN when the
    image has no counted pixels."""
    return metrics_from_confusion(cm).miou
