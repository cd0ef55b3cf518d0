"""What an epoch reports: its record (metrics.jsonl, curves.png, the checkpoints' metrics) and its EpochEnd
event, with the filmstrip and worst images shrunk for browsers."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdemo.core import checkpoint as ckpt
from segdemo.core.evaluate import EvalResult, evaluate_model
from segdemo.core.metrics import SegMetrics, metrics_from_confusion
from segdemo.events import EpochEnd, Preview, epoch_from_record
from segdemo.training import distributed
from segdemo.training.parts import EpochTrain, Parts
from segdemo.training.selection import probe_miou

PREVIEW_MAX_SIDE = 256  # previews travel to browsers every epoch: keep them small
WORST_IMAGES = 4  # lowest-scoring validation images each epoch event carries (none when previews are off)


@dataclass(kw_only=True)
class EpochScores:
    """One epoch's numbers, the same in every process (from counts summed over processes)."""

    metrics: SegMetrics
    confusion: torch.Tensor  # (C, C) int64, rows = ground truth
    train_loss: float
    val_loss: float
    train_images: float  # images trained on in this epoch, all processes together
    train_miou: float | None  # a small split's probe (selection.probe_miou)
    score: float  # what the kept epoch is chosen by


def score_epoch(p: Parts, train: EpochTrain) -> tuple[EvalResult, EpochScores]:
    """The epoch's validation (each process its share, the counts summed) and, on a small split, its probe."""
    w, dev = p.world, p.sp.device
    distributed.share_buffers(p.net, w)
    res = evaluate_model(
        p.net,
        p.splits.val,
        p.cfg,
        p.classes,
        p.loss_fn,
        device=dev,
        batch_size=p.batch_size,
        preview_indices=p.previews_at if w.is_main else [],
        autocast_dtype=p.sp.autocast_dtype,
        channels_last=p.sp.channels_last,
        indices=list(range(w.rank, len(p.splits.val), w.size)) if w.distributed else None,
        # one process sees only its share of the images, so only a single process picks the worst
        worst=WORST_IMAGES if p.cfg.train.preview_images > 0 and not w.distributed else 0,
    )
    # every process computes the same metrics from the summed counts
    assert res.confusion is not None  # evaluate_model always counts
    cm = distributed.sum_all(res.confusion, w, dev)
    sums = distributed.sum_all(
        torch.tensor([res.loss_sum, res.loss_count, train.loss_sum, train.images], dtype=torch.float64), w, dev
    ).tolist()
    m = metrics_from_confusion(cm)
    train_miou = probe_miou(p)
    return res, EpochScores(
        metrics=m,
        confusion=cm,
        train_loss=sums[2] / max(sums[3], 1),
        val_loss=sums[0] / max(sums[1], 1),
        train_images=sums[3],
        train_miou=train_miou,
        score=m.miou if train_miou is None else min(m.miou, train_miou),
    )


def epoch_record(
    s: EpochScores, *, epoch: int, lr: float, seconds: float, train_seconds: float, n_val: int, is_best: bool
) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl (and of the loop state's history)."""
    return {
        "epoch": epoch,
        "train_loss": s.train_loss,
        "val_loss": s.val_loss,
        "miou": s.metrics.miou,
        "pixel_accuracy": s.metrics.pixel_accuracy,
        "lr": lr,
        "seconds": seconds,
        "images_per_s": s.train_images / max(train_seconds, 1e-9),
        "per_class_iou": [None if math.isnan(v) else v for v in s.metrics.iou],
        "val_images": n_val,
        "val_pixels": int(s.confusion.sum()),
        "train_miou": s.train_miou,
        "score": s.score,
        "is_best": is_best,
    }


def checkpoint_metrics(
    s: EpochScores, *, epoch: int, names: tuple[str, ...], n_val: int, selection: str
) -> dict[str, Any]:
    """The newest epoch's validation metrics, saved beside every checkpoint."""
    return {
        "epoch": epoch,
        **s.metrics.to_dict(names),
        "val_loss": s.val_loss,
        "val_images": n_val,
        "val_pixels": int(s.confusion.sum()),
        "train_miou": s.train_miou,
        "score": s.score,
        "selection": selection,
    }


def epoch_event(record: dict[str, Any], *, epochs: int, res: EvalResult, confusion: torch.Tensor) -> EpochEnd:
    """The EpochEnd a watcher gets: the record's numbers, the filmstrip and the worst images."""
    return epoch_from_record(
        record,
        epochs=epochs,
        is_best=record["is_best"],
        previews=[
            Preview(name=n, image=small(im, nearest=False), target=small(t, nearest=True), pred=small(pr, nearest=True))
            for n, im, t, pr in res.previews
        ],
        confusion=confusion.numpy(),
        worst=[
            Preview(
                name=r.name,
                image=small(r.image, nearest=False),
                target=small(r.target, nearest=True),
                pred=small(r.pred, nearest=True),
                miou=r.miou,
            )
            for r in res.worst
        ],
    )


def small(a: np.ndarray, *, nearest: bool) -> np.ndarray:
    """Shrink a preview so its longest side is at most PREVIEW_MAX_SIDE."""
    h, w = a.shape[:2]
    f = max(h, w) / PREVIEW_MAX_SIDE
    if f <= 1:
        return a
    import cv2

    return cv2.resize(a, (round(w / f), round(h / f)), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def draw_curves(path: Path, history: list[dict[str, Any]]) -> None:
    from segdemo.core.viz import curves_figure

    png = io.BytesIO()
    curves_figure(history).savefig(png, format="png", dpi=80)
    ckpt.replace_file(path, png.getvalue(), fsync=False)  # a browser may be reading the old one
