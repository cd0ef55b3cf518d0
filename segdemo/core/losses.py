"""Losses, declared once in LOSSES: cross-entropy (optionally class-weighted), soft Dice, CE+Dice, and BCE for
one-channel binary tasks. The registry is what config validation, the CLI's --loss, the Train tab's labels and
Compare's ablation read: adding a loss is one entry here (and its test).

All take logits (N, C, H, W) float and targets (N, H, W) int64 with IGNORE pixels excluded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segdemo.data.base import IGNORE
from segdemo.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int], torch.Tensor]


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


def _ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, ignore: int) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, weight=weights, ignore_index=ignore)


def _bce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, ignore: int) -> torch.Tensor:
    valid = target != ignore
    loss = F.binary_cross_entropy_with_logits(logits[:, 0].float(), (target == 1).float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def _dice(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, ignore: int) -> torch.Tensor:
    return soft_dice_loss(logits, target, ignore)


def _ce_dice(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, ignore: int) -> torch.Tensor:
    return _ce(logits, target, weights, ignore) + soft_dice_loss(logits, target, ignore)


@dataclass(frozen=True)
class Loss:
    id: str  # the config's, the CLI's and the /train API's value
    label: str  # the Train tab's choice: what it does in a few words
    fn: LossFn  # (logits, target, class weights or None, ignore index) -> scalar
    weighted: bool = False  # needs median-frequency class weights from the training pixels
    binary: bool = False  # one output channel: two-class data only
    short: str = ""  # Compare's name for it in an ablation ("Dice instead of CE")
    pages: tuple[str, ...] = ("train",)  # where the page offers it (bce: the CLI only)


LOSSES: Registry[Loss] = Registry(
    "loss",
    [
        Loss("ce", "Cross-entropy (CE): every pixel counts the same", _ce, short="CE"),
        Loss("weighted_ce", "Weighted CE: rare classes count more", _ce, weighted=True, short="Weighted CE"),
        Loss("dice", "Dice: overlap per class, small classes count as much", _dice, short="Dice"),
        Loss("ce_dice", "CE + Dice: steady and balanced (default)", _ce_dice, short="CE + Dice"),
        Loss(
            "weighted_ce_dice",
            "Weighted CE + Dice: for rare classes",
            _ce_dice,
            weighted=True,
            short="Weighted CE + Dice",
        ),
        Loss("bce", "Binary cross-entropy: one output channel, two classes", _bce, binary=True, short="BCE", pages=()),
    ],
)
WEIGHTED = tuple(e.id for e in LOSSES if e.weighted)  # the losses that weigh classes by median frequency


def out_channels(loss: str, num_classes: int) -> int:
    """The net's output channels for this loss and data: one for a binary loss, else one per class."""
    return 1 if LOSSES[loss].binary else num_classes


def check_fits(loss: str, num_classes: int) -> str | None:
    """A sentence when the loss cannot train this data (a binary loss on more than two classes), else None."""
    if LOSSES[loss].binary and num_classes != 2:
        others = ", ".join(e.id for e in LOSSES if not e.binary)
        return f"the {loss} loss is for two-class data; this data has {num_classes} classes. Choose {others}"
    return None


class SegLoss(nn.Module):
    """The loss `kind` (an id in LOSSES) as a module; class weights are kept only for a weighted loss."""

    class_weights: torch.Tensor | None  # a buffer: moves with .to(device)

    def __init__(self, kind: str, class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE):
        super().__init__()
        self.kind, self.ignore_index = kind, ignore_index
        self.spec = LOSSES[kind]
        self.register_buffer("class_weights", class_weights if self.spec.weighted else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.spec.fn(logits, target, self.class_weights, self.ignore_index)


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
