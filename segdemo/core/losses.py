"""Losses: cross-entropy (optionally class-weighted), soft Dice, CE+Dice, and BCE for one-channel binary tasks.

All take logits (N, C, H, W) float and targets (N, H, W) int64 with IGNORE pixels excluded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segdemo.data.base import IGNORE


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes of soft Dice, computed over the whole batch; ignored pixels weigh 0.

    Classes absent from both target and prediction score Dice 1 (the eps smoothing), so they
    neither help nor hurt; this is what keeps Dice useful on rare classes.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


WEIGHTED = ("weighted_ce", "weighted_ce_dice")  # the losses that weigh classes by median frequency


class SegLoss(nn.Module):
    """One of: ce, weighted_ce, dice, ce_dice, weighted_ce_dice, bce (the last expects logits (N, 1, H, W))."""

    def __init__(self, kind: str, class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE):
        super().__init__()
        self.kind, self.ignore_index = kind, ignore_index
        self.register_buffer("class_weights", class_weights if kind in WEIGHTED else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            valid = target != self.ignore_index
            loss = F.binary_cross_entropy_with_logits(logits[:, 0].float(), (target == 1).float(), reduction="none")
            return (loss * valid).sum() / valid.sum().clamp(min=1)
        ce = lambda w=None: F.cross_entropy(logits.float(), target, weight=w, ignore_index=self.ignore_index)  # noqa: E731
        if self.kind == "ce":
            return ce()
        if self.kind == "weighted_ce":
            return ce(self.class_weights)
        if self.kind == "dice":
            return soft_dice_loss(logits, target, self.ignore_index)
        if self.kind == "ce_dice":
            return ce() + soft_dice_loss(logits, target, self.ignore_index)
        if self.kind == "weighted_ce_dice":
            return ce(self.class_weights) + soft_dice_loss(logits, target, self.ignore_index)
        raise ValueError(f"unknown loss {self.kind!r}")


def class_weights_from_counts(pixel_counts: np.ndarray) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus): weight_c = median(freq) / freq_c.

    Rare classes weigh more; a class with no pixels gets the largest weight seen, not infinity.
    """
    counts = np.asarray(pixel_counts, np.float64)
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    w = np.ones_like(freq)
    if present.any():
        w[present] = np.median(freq[present]) / freq[present]
        w[~present] = w[present].max()
    return torch.tensor(w, dtype=torch.float32)
