"""What Predict shows in words and numbers: a model's card, the per-class table, the summary line and the
numbers behind them for API clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segdemo.core.checkpoint import read_meta
from segdemo.core.predict import FilePrediction, Prediction
from segdemo.data.base import ClassSet
from segdemo.ui.words import fmt_num, md

SCORED_COLUMNS = ["class", "IoU", "Dice", "share of true pixels"]


def _dict(v: Any) -> dict[str, Any]:
    """A part of a checkpoint's meta that should be a JSON object: itself, else {} (the file is not trusted)."""
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def model_card(path: Path) -> str:
    """What a checkpoint's model learnt from, its classes, its score and its shape, as Markdown."""
    meta = read_meta(path)  # everything below comes from the file: shown through md(), never as markup
    cfg = _dict(meta.get("config"))
    metrics = _dict(meta.get("metrics"))
    classes = _dict(meta.get("classes"))
    names = _list(classes.get("names"))
    m = _dict(cfg.get("model"))
    d = _dict(cfg.get("data"))
    miou = metrics.get("miou")
    n_val, pixels = metrics.get("val_images"), metrics.get("val_pixels")
    on = (
        f" on {int(n_val)} validation image{'s' if n_val != 1 else ''}, {int(pixels):,} labelled pixels"
        if isinstance(n_val, int) and isinstance(pixels, int) and n_val > 0
        else " on its validation images"
    )
    score = (
        f"  \n**Scored** val mIoU **{miou:.3f}**{on} (epoch {md(metrics.get('epoch', '?'))}). A score on other "
        "kinds of images would be different."
        if isinstance(miou, int | float)
        else ""
    )
    up = m.get("upsampling") or ("bilinear" if m.get("bilinear") else "transposed")  # the older name
    shown = ", ".join(md(n) for n in names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
    return (
        f"**Trained on** {_trained_on(meta, d)}.  \n**{len(names)} classes:** {shown}. It can only answer in "
        "these classes: every pixel of any image gets one of them, even where none fits." + score + "  \n"
        f"U-Net width {md(m.get('width'))}, depth {md(m.get('depth'))}, {up} up-sampling; sees images at "
        f"{md(d.get('image_size'))} px."
    )


def per_class_table(classes: ClassSet, p: Prediction, ckpt_metrics: dict | None) -> pd.DataFrame:
    """Per class: scored against the true mask (IoU, Dice, true and predicted shares), or without one the
    predicted share beside the model's IoU on its own validation set."""
    if p.metrics is not None:
        m = p.metrics
        rows = [
            [n, fmt_num(iou), fmt_num(dice), fmt_num(share), fmt_num(pred_share)]
            for n, iou, dice, share, pred_share in zip(
                classes.names, m.iou, m.dice, m.pixel_share, p.pixel_share, strict=True
            )
        ]
        dices = [d for d in m.dice if not np.isnan(d)]
        rows.append(["mean (mIoU)", fmt_num(m.miou), fmt_num(np.mean(dices) if dices else None), "", ""])
        return pd.DataFrame(rows, columns=[*SCORED_COLUMNS, "share of predicted pixels"])
    meta_metrics = ckpt_metrics or {}
    per = {r.get("name"): r for r in meta_metrics.get("per_class", []) if isinstance(r, dict)}
    rows = [
        [n, fmt_num(share), fmt_num(per.get(n, {}).get("iou"))]
        for n, share in zip(classes.names, p.pixel_share, strict=True)
    ]
    rows.append(["mean (mIoU)", "", fmt_num(meta_metrics.get("miou"))])
    return pd.DataFrame(
        rows, columns=["class", "share of predicted pixels", "val IoU (from the checkpoint's validation set)"]
    )


def summary(result: FilePrediction, mask_name: str | None, ckpt_metrics: dict | None, unlike: str | None) -> str:
    """The line above the table: the image's score against its mask, or why it is not scored."""
    warning = f"⚠ **{unlike}**\n\n" if unlike else ""
    name, m = result.name, result.prediction.metrics
    shrunk = ""
    if result.shrunk_from is not None:
        (w, h), (w2, h2) = result.shrunk_from, result.image.shape[1::-1]
        shrunk = f" (shrunk from {w}x{h} to {w2}x{h2} for speed)"
    if m is not None:
        return warning + (
            f"**{md(name)}**{shrunk} against its mask **{md(mask_name)}**: mIoU **{m.miou:.3f}**, "
            f"pixel accuracy {m.pixel_accuracy:.1%}. n/a = the class is neither in the mask nor predicted."
        )
    meta_metrics = ckpt_metrics or {}
    return warning + (
        f"**{md(name)}**{shrunk}: no ground truth, so this image is not scored. The last column is the "
        "model's IoU on its own validation set, from the checkpoint"
        + (f" (epoch {md(meta_metrics['epoch'])})" if "epoch" in meta_metrics else "")
        + "."
    )


def _trained_on(meta: dict, data: dict) -> str:
    """What a checkpoint's model learnt from, in words (from its own meta: shown through md())."""
    on = _dict(meta.get("trained_on"))
    source = on.get("source") or data.get("source") or "?"
    n_tr, n_va = on.get("train_images"), on.get("val_images")
    if source == "builtin":
        n_tr = n_tr if isinstance(n_tr, int) else data.get("builtin_train")
        n_va = n_va if isinstance(n_va, int) else data.get("builtin_val")
        what = "the built-in shapes: synthetic circles, squares and triangles on coloured noise, 128x128 px"
    elif source == "oxford-pet":
        what = "Oxford-IIIT Pet photos of cats and dogs"
    else:
        what = f"a dataset named {md(Path(str(source)).name)}"
    counts = f" ({n_tr} training / {n_va} validation images)" if isinstance(n_tr, int) and isinstance(n_va, int) else ""
    return what + counts


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def details(name: str, classes: ClassSet, p: Prediction, ckpt_metrics: dict | None, probability_maps: bool) -> dict:
    """The numbers behind the table, for API clients (NaN -> None: undefined IoU)."""
    m = p.metrics
    val = {r.get("name"): r.get("iou") for r in (ckpt_metrics or {}).get("per_class", []) if isinstance(r, dict)}
    return {
        "image": name,
        "ground_truth": m is not None,
        "probability_maps": probability_maps,
        "miou": _num(m.miou) if m else None,
        "pixel_accuracy": _num(m.pixel_accuracy) if m else None,
        "checkpoint_val_miou": _num((ckpt_metrics or {}).get("miou")),
        "per_class": [
            {
                "name": n,
                "predicted_share": _num(p.pixel_share[i]),
                "iou": _num(m.iou[i]) if m else None,
                "dice": _num(m.dice[i]) if m else None,
                "true_share": _num(m.pixel_share[i]) if m else None,
                "checkpoint_val_iou": _num(val.get(n)),
            }
            for i, n in enumerate(classes.names)
        ],
    }
