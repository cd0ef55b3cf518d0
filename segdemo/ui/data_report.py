"""The Train tab's data check: a data config's report (pairs, classes, problems, warnings), a few sample pairs and
the data's shape for a preset's plan, cached per source; and the report as the page shows it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from segdemo.core.config import RunConfig
from segdemo.core.viz import legend_html, overlay
from segdemo.data import open_dataset
from segdemo.data.base import ClassSet, Splits
from segdemo.data.check import CheckReport
from segdemo.data.sources import check_for_page
from segdemo.training import recipes
from segdemo.ui.context import AppContext
from segdemo.ui.pictures import strip
from segdemo.ui.words import esc, md, public, tidy_paths

SAMPLE_MAX_SIDE = 320  # data-check sample pictures: enough to see, small enough to cache
SAMPLES = 6  # training pairs shown
ZIP_PROMPT = (
    "Upload a **.zip** of a folder with `images/` and `masks/` (an image and its mask share a "
    "file name, e.g. `images/cat1.jpg` + `masks/cat1.png`). An optional `classes.json` names the "
    "classes."
)
# (report, classes or None, sample pictures with their names, the data's shape for a plan or None)
Checked = tuple[CheckReport, ClassSet | None, list[tuple[np.ndarray, str]], Any]


def checked_data(ctx: AppContext, cfg: RunConfig) -> Checked:
    """(report, classes or None, sample pictures, DataShape or None) for a data config; cached per source."""

    src = cfg.data.source
    key: tuple = (src, cfg.data.builtin_train, cfg.data.builtin_val, cfg.data.seed)
    if src not in ("builtin",) and Path(src).is_file():
        st = Path(src).stat()
        key += (st.st_size, st.st_mtime_ns)
    hit = ctx.cache_get(key)
    if hit is not None:
        return hit
    work = ctx.scratch("checks")
    try:
        report, checked = check_for_page(cfg.data, work)
        classes, samples, shape = None, [], None
        if report.ok:
            splits = open_dataset(checked, work)
            classes, shape = splits.classes, recipes.DataShape.of(splits)
            samples = _samples(splits)
        label = Path(src).name if src.lower().endswith(".zip") else "the dataset"
        places = ((work / "data", label), (work, "the check folder"))
        report.problems = [tidy_paths(t, *places) for t in report.problems]
        report.warnings = [replace(w, text=tidy_paths(w.text, *places)) for w in report.warnings]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out: Checked = (report, classes, samples, shape)
    ctx.cache_put(key, out, sum(p.nbytes for p, _ in samples) + 4096)
    return out


def _samples(splits: Splits) -> list[tuple[np.ndarray, str]]:
    """A few training pairs, each image beside its mask overlaid (small ones) or just overlaid."""
    out = []
    classes = splits.classes
    for i in range(min(SAMPLES, len(splits.train))):
        image, mask = _shrink_pair(*splits.train.load(i))
        pic = (
            strip(image, overlay(image, mask, classes, 0.5))
            if max(image.shape[:2]) <= 256
            else overlay(image, mask, classes, 0.5)
        )
        out.append((pic, splits.train.name(i)))
    return out


def _shrink_pair(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sample picture for the data check: longest side at most SAMPLE_MAX_SIDE."""
    import cv2

    h, w = image.shape[:2]
    f = max(h, w) / SAMPLE_MAX_SIDE
    if f <= 1:
        return image, mask
    size = (max(1, round(w / f)), max(1, round(h / f)))
    return (
        cv2.resize(image, size, interpolation=cv2.INTER_AREA),
        cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST),
    )


def report_markdown(report: CheckReport) -> str:
    """The report as the page shows it: ready with counts, or the problems to fix; then what is worth knowing."""
    pairs = report.pairs or {}
    if "train" in pairs or "val" in pairs:
        count = (
            " + ".join(
                f"{v} {'training' if k == 'train' else 'validation' if k == 'val' else k}" for k, v in pairs.items()
            )
            + " pairs"
        )
    else:
        count = f"{report.total_pairs} pairs (20% are kept aside for validation)"
    lines = []
    if report.ok:
        lines.append(
            f"**✓ Ready to train:** {count}"
            + (f" · {len(report.class_names)} classes" if report.class_names else "")
            + (f" · masks: {report.encoding}" if report.encoding and report.encoding != "ids" else "")
        )
    else:
        lines.append("**✗ This data cannot be used yet.** Fix the problems below and choose the data again:")
        lines += [f"- {md(public(p))}" for p in report.problems[:12]]
        if len(report.problems) > 12:
            lines.append(f"- … and {len(report.problems) - 12} more")
    if report.warnings:
        lines.append("")
        lines.append("Worth knowing:")
        lines += [f"- {md(public(w.text))}" for w in report.warnings[:8]]
    return "\n".join(lines)


def classes_html(report: CheckReport, classes: ClassSet | None) -> str:
    """The classes' colours and pixel shares, with a word on a class too rare for plain cross-entropy."""
    if classes is None and not report.class_names:
        return ""
    if classes is None:
        classes = ClassSet.default(report.class_names)
    shares = [float(report.pixel_share.get(n, 0.0)) for n in classes.names] if report.pixel_share else None
    note = ""
    if shares and min(shares) < 0.05:
        rare = classes.names[shares.index(min(shares))]
        note = (
            f'<div style="font-size:0.9em;opacity:0.8">"{esc(rare)}" covers under 5% of the pixels: with plain '
            "cross-entropy the net can nearly ignore it; Dice or CE + Dice keeps it in play.</div>"
        )
    return (
        '<div style="font-size:0.9em;opacity:0.8">Classes and their share of the labelled pixels:</div>'
        + legend_html(classes, shares)
        + note
    )
