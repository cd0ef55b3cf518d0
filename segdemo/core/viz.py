"""Pictures for people: colour masks, overlays, error maps, legends and training curves."""

from __future__ import annotations

from collections.abc import Sequence

import cv2  # comes with albumentations
import numpy as np
from matplotlib.figure import Figure

from segdemo.core.metrics import most_confused, row_normalised
from segdemo.data.base import IGNORE, ClassSet
from segdemo.escape import esc

ERROR_COLORS = {"correct": (40, 170, 70), "wrong": (220, 40, 40), "missed": (250, 200, 30), "ignored": (90, 90, 90)}


def colorize(mask: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; IGNORE is white."""
    return np.take(classes.palette(), mask, axis=0)  # the same as palette[mask], about 3x faster


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    classes: ClassSet,
    alpha: float = 0.5,
    color: np.ndarray | None = None,
    hidden: Sequence[int] = (),
) -> np.ndarray:
    """Blend the colour mask (pass `color` if already drawn) over the image; IGNORE pixels, and those of the
    `hidden` class ids, show the image alone."""
    if color is None:
        color = colorize(mask, classes)
    # OpenCV's saturating blend: far faster than the same sum in float32 NumPy (bench/README.md, Predictor.predict)
    out = cv2.addWeighted(np.ascontiguousarray(image), 1.0 - float(alpha), color, float(alpha), 0.0)
    plain = np.zeros(256, np.uint8)  # class id -> 1 where the image shows through
    plain[IGNORE] = 1
    plain[[int(c) for c in hidden if 0 <= int(c) < 256]] = 1
    # OpenCV's table lookup and masked copy: a few hundredths of a ms at 512x512, where NumPy's boolean
    # indexing took ~5 ms, and Predict's opacity slider redraws on every move
    keep = cv2.LUT(np.ascontiguousarray(mask, dtype=np.uint8), plain)
    cv2.copyTo(np.ascontiguousarray(image), keep, out)
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


CONFUSION_MAX_CLASSES = 20  # a bigger table is unreadable on a page; the classes with the most pixels are shown


def _swatch(color) -> str:
    return (
        '<span style="display:inline-block;width:10px;height:10px;border:1px solid #888;margin-right:4px;'
        f'background:rgb{tuple(int(v) for v in color)}"></span>'
    )


def confusion_html(
    cm, classes: ClassSet, what: str = "the validation images", max_classes: int = CONFUSION_MAX_CLASSES
) -> str:
    """The confusion matrix as a small HTML heatmap: rows = true class, columns = predicted, each row as
    shares of that class's pixels (the diagonal green, the rest red, darker = more), class names escaped;
    then the most-confused pairs in words. With more than `max_classes` classes, those with the most true
    pixels are shown (the sentences still cover all of them)."""
    cm = np.asarray(cm, dtype=np.int64)
    names, k = classes.names, classes.num_classes
    share = row_normalised(cm)
    shown = list(range(k))
    note = ""
    if k > max_classes:
        shown = sorted(np.argsort(-cm.sum(1), kind="stable")[:max_classes].tolist())
        note = f" Showing the {max_classes} of {k} classes with the most true pixels."
    head = "".join(
        f'<th title="{esc(names[j])}" style="writing-mode:vertical-rl;transform:rotate(180deg);'
        f'padding:2px;font-weight:normal;max-height:8em;overflow:hidden">{esc(names[j])}</th>'
        for j in shown
    )
    rows = []
    for i in shown:
        cells = []
        for j in shown:
            v = share[i, j]
            if np.isnan(v):
                cells.append('<td style="color:#999;text-align:center">·</td>')
                continue
            rgb = (40, 170, 70) if i == j else (220, 40, 40)
            txt = f"{100 * v:.0f}" if v >= 0.005 else ""
            ink = "#fff" if v > 0.55 else "inherit"
            cells.append(
                f'<td title="{esc(names[i])} taken for {esc(names[j])}: {100 * v:.1f}% ({cm[i, j]} px)" '
                f'style="text-align:center;min-width:2.2em;color:{ink};background:rgba{(*rgb, round(float(v), 3))}">'
                f"{txt}</td>"
            )
        rows.append(
            f'<tr><th style="text-align:left;font-weight:normal;white-space:nowrap">{_swatch(classes.colors[i])}'
            f"{esc(names[i])}</th>{''.join(cells)}</tr>"
        )
    pairs = most_confused(cm)
    words = (
        "<ul style='margin:4px 0 0 1.2em;padding:0'>"
        + "".join(f"<li>{esc(p.sentence(names))}</li>" for p in pairs)
        + "</ul>"
        if pairs
        else "<div>No class is taken for another on more than 1% of its pixels.</div>"
    )
    return (
        '<div class="segdemo-confusion" style="font-size:0.85em">'
        f"<div>Confusion on {esc(what)}: each row is a true class, each column what the model predicted, in % of "
        f"the row's pixels (· = no pixels of that class).{note}</div>"
        '<div style="overflow-x:auto"><table style="border-collapse:collapse;margin-top:4px">'
        f'<tr><th style="text-align:left;vertical-align:bottom;font-weight:normal">true ↓ · predicted →</th>{head}</tr>'
        f"{''.join(rows)}</table></div>"
        f"<div style='margin-top:6px'><b>Most confused</b></div>{words}</div>"
    )


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
