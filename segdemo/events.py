"""Typed events the trainer emits; the CLI prints them, the app streams them, tests assert on them.
Each is built with keyword arguments only (kw_only): a dozen numbers in a row are easy to swap unseen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(kw_only=True)
class Started:
    run_dir: str
    device: str
    precision: str  # what "auto" chose, and why, e.g. "fp32 + channels_last (measured 1.2x)"
    epochs: int
    start_epoch: int  # > 1 when resuming
    n_train: int
    n_val: int
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    parameters: int
    notes: list[str] = field(default_factory=list)  # the data's own sentences: how it was split, ...
    warnings: list[str] = field(default_factory=list)  # ... and what makes its score thin: classes on few photos
    selection: str = ""  # a small split's rule for the checkpoint kept, in words ("" : the highest val mIoU)


@dataclass(kw_only=True)
class Progress:
    """Sent after every training batch, so a progress bar or an ETA can move between epochs (the app
    redraws at most once a second; the CLI redraws its bar each time)."""

    epoch: int
    batch: int
    n_batches: int
    loss: float
    images_per_s: float


@dataclass(kw_only=True)
class Preview:
    """One validation image of the filmstrip: the picture at its own size, NOT resized to the training size,
    with its true mask and the prediction at that size (as evaluation scores them); all three shrunk
    together so the longest side is at most segdemo/training/report.py's PREVIEW_MAX_SIDE."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    target: np.ndarray  # (H, W) uint8 class ids, IGNORE kept
    pred: np.ndarray  # (H, W) uint8 class ids
    miou: float | None = None  # this image's own mIoU, for the worst-images strip (metrics.image_miou)


@dataclass(kw_only=True)
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float | None]  # None where undefined (class absent and never predicted)
    lr: float
    seconds: float  # this epoch's wall time, training + validation
    images_per_s: float  # training images per second in this epoch
    is_best: bool
    previews: list[Preview] = field(default_factory=list)
    # where it fails: the split's (C, C) int64 counts, rows = ground truth (metrics.row_normalised, most_confused),
    # and its lowest-scoring validation images, lowest first. Like previews, only the newest epoch keeps them
    # in a job's history (jobs.Job), and a run restored after a restart has neither.
    confusion: np.ndarray | None = None
    worst: list[Preview] = field(default_factory=list)
    # what the score stands on: validation photos and labelled pixels (per class, rows of the confusion)
    val_images: int = 0
    val_pixels: int = 0
    # a small validation split: the mIoU of a fixed sample of training photos (no augmentation), and the
    # score the kept checkpoint is chosen by (the lower of the two); on a large split score is the val mIoU
    train_miou: float | None = None
    score: float | None = None


@dataclass(kw_only=True)
class Done:
    reason: str  # "finished", "stopped" or "time_limit"
    epochs_done: int
    best_miou: float | None
    best_epoch: int | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    seconds: float
    selection: str = ""  # how best_epoch was chosen, in words


@dataclass(kw_only=True)
class Failed:
    message: str  # one sentence for the user: what went wrong and what to change
    detail: str = ""  # exception type and text, for the log


Event = Started | Progress | EpochEnd | Done | Failed


def epoch_from_record(r: dict[str, Any], *, epochs: int, **more: Any) -> EpochEnd:
    """An epoch's metrics.jsonl record as its EpochEnd (the trainer's event, and a restored run's history);
    `more`: what the record does not hold (pictures, the confusion) or what the caller decides (is_best)."""
    fields: dict[str, Any] = dict(
        epoch=r["epoch"],
        epochs=epochs,
        train_loss=r["train_loss"],
        val_loss=r["val_loss"],
        miou=r["miou"],
        pixel_accuracy=r["pixel_accuracy"],
        per_class_iou=r["per_class_iou"],
        lr=r["lr"],
        seconds=r["seconds"],
        images_per_s=r["images_per_s"],
        is_best=bool(r.get("is_best", False)),
        val_images=int(r.get("val_images") or 0),
        val_pixels=int(r.get("val_pixels") or 0),
        train_miou=r.get("train_miou"),
        score=r.get("score"),
    )
    return EpochEnd(**{**fields, **more})


def kept_epoch(epochs: list[EpochEnd]) -> EpochEnd | None:
    """The epoch whose checkpoint a run kept (the last flagged is_best): on a small split that is not the
    highest val mIoU, so no page may pick it by max(miou)."""
    flagged = [e for e in epochs if e.is_best]
    return flagged[-1] if flagged else (epochs[-1] if epochs else None)


def stands_on(e: EpochEnd) -> str:
    """What a validation score stands on, in words: "1 validation photo, 1,421 labelled pixels"."""
    if not e.val_images:
        return ""
    return f"{e.val_images} validation photo{'s' if e.val_images != 1 else ''}, {e.val_pixels:,} labelled pixels"
