"""Pictures for people: colour masks, overlays, error maps, legends and training curves."""

from __future__ import annotations

import cv2  # comes with albumentations
import numpy as np
from matplotlib.figure import Figure

from segdemo.data.base import IGNORE, ClassSet
from segdemo.escape import esc

ERROR_COLORS = {"correct": (40, 170, 70), "wrong": (220, 40, 40), "missed": (250, 200, 30), "ignored": (90, 90, 90)}


def colorize(mask: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; IGNORE is white."""
    return classes.palette()[mask]


def overlay(
    image: np.ndarray, mask: np.ndarray, classes: ClassSet, alpha: float = 0.5, color: np.ndarray | None = None
) -> np.ndarray:
    """Blend the colour mask (pass `color` if already drawn) over the image; IGNORE pixels show the image alone."""
    if color is None:
        color = colorize(mask, classes)
    # OpenCV's saturating blend: far faster than the same sum in float32 NumPy (bench/README.md, Predictor.predict)
    out = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - float(alpha), color, float(alpha), 0.0)
    ignored = mask == IGNORE
    if ignored.any():
        out[ignored] = image[ignored]
    return out


def error_map(pred: np.ndarray, target: np.ndarray, focus_class: int | None = None) -> np.ndarray:
    """Green: right. Red: predicted here, but wrong (false positive of the predicted class).
    Yellow: a foreground pixel the model missed (predicted background, class 0). Grey: ignored.

    With focus_class, colours are that class's TP (green), FP (red) and FN (yellow).
    """
    out = np.zeros((*pred.shape, 3), np.uint8)
    valid = target != IGNORE
    if focus_class is None:
        right = valid & (pred == target)
        missed = valid & (pred != target) & (pred == 0)
        wrong = valid & (pred != target) & (pred != 0)
    else:
        right = valid & (pred == focus_class) & (target == focus_class)
        wrong = valid & (pred == focus_class) & (target != focus_class)
        missed = valid & (pred != focus_class) & (target == focus_class)
    out[right] = ERROR_COLORS["correct"]
    out[wrong] = ERROR_COLORS["wrong"]
    out[missed] = ERROR_COLORS["missed"]
    out[~valid] = ERROR_COLORS["ignored"]
    return out


def legend_html(classes: ClassSet, shares: list[float] | None = None) -> str:
    """Colour swatches with class names (and pixel shares), as small HTML for the app and reports."""
    items = []
    for i, (name, c) in enumerate(zip(classes.names, classes.colors, strict=True)):
        share = f" {100 * shares[i]:.1f}%" if shares is not None else ""
        items.append(
            f'<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0">'
            f'<span style="width:14px;height:14px;border:1px solid #888;margin-right:5px;'
            f'background:rgb{tuple(int(v) for v in c)}"></span>{esc(name)}{share}</span>'
        )
    return '<div class="segdemo-legend">' + "".join(items) + "</div>"


def curves_figure(history: list[dict]) -> Figure:
    """Loss (train, val) and mIoU per epoch, side by side.

    A bare Figure, not pyplot: pyplot's global state is not thread-safe, and job threads and the UI
    draw at the same time.
    """
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 3))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a1.set_xlabel("epoch")
    a1.set_title("loss")
    a1.legend()
    a2.plot(ep, [h["miou"] for h in history], "o-", color="tab:green")
    a2.set_xlabel("epoch")
    a2.set_title("val mIoU")
    a2.set_ylim(0, 1)
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if ep:
            a.set_xticks(ep if len(ep) <= 12 else ep[:: max(1, len(ep) // 10)])
    fig.tight_layout()
    return fig
