"""Which epoch's checkpoint a run keeps: the highest validation mIoU, or on a small validation split the
highest lower of validation mIoU and the mIoU of a fixed sample of training photos (the probe)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from segdemo.core.evaluate import evaluate_model
from segdemo.core.metrics import metrics_from_confusion
from segdemo.training import distributed

if TYPE_CHECKING:
    from segdemo.training.parts import Parts
    from segdemo.training.resume import LoopState

# Fewer validation photos than this are too few to pick a checkpoint by alone: on one photo that lacks a class,
# a model that paints everything one class scores 1.0. Then a fixed sample of up to TRAIN_PROBE training photos
# is scored too (no augmentation) and the epoch kept is the one whose lower of the two mIoUs is highest.
SMALL_VAL = 30
TRAIN_PROBE = 32


def selection_words(n_val: int, small: bool) -> str:
    """How a run picks the checkpoint it keeps, in words for the page and the CLI."""
    if not small:
        return ""  # the plain rule: the highest validation mIoU
    return (
        f"only {n_val} validation photo{'s' if n_val != 1 else ''}: too few to judge a model alone, so the "
        "checkpoint kept is the epoch whose lower of validation mIoU and training-photo mIoU is highest "
        "(a model that paints everything one class cannot win it)"
    )


def probe_indices(n: int, k: int = TRAIN_PROBE) -> list[int]:
    """Up to k indices spread evenly over 0..n-1: the training photos a small-split run also scores."""
    m = min(n, k)
    return sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)})


def probe_miou(p: Parts) -> float | None:
    """A small validation split's second signal: the mIoU of the fixed training-photo sample (eval mode,
    no augmentation), its counts summed over processes like the validation's. None on a large split."""
    if not p.train_probe:
        return None
    w = p.world
    res = evaluate_model(
        p.net,
        p.splits.train,
        p.cfg,
        p.classes,
        device=p.sp.device,
        batch_size=p.batch_size,
        autocast_dtype=p.sp.autocast_dtype,
        channels_last=p.sp.channels_last,
        indices=p.train_probe[w.rank :: w.size] if w.distributed else p.train_probe,
    )
    assert res.confusion is not None  # evaluate_model always counts
    return metrics_from_confusion(distributed.sum_all(res.confusion, w, p.sp.device)).miou


def beats_kept(state: LoopState, *, score: float, val_loss: float) -> bool:
    """Whether this epoch replaces the kept one. A tie goes to the lower val loss: a few scribbled validation
    pixels are all right after one epoch, and the kept epoch must not stay there while the net goes on
    learning the rest of each photo."""
    return (
        state.best_score is None
        or score > state.best_score
        or (score == state.best_score and val_loss < (state.best_val_loss or math.inf))
    )
