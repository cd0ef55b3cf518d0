"""The page's words for engine messages and numbers: sentences, server paths cut away, durations, metrics.
No gradio here: the run view and its unit tests use them too."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from segdemo.escape import esc, md  # noqa: F401  (the UI's one way to put user text into HTML/Markdown)

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/'\"`,;:()]+)+/([^\s/'\"`,;:()]*)")


def sentence(msg: str) -> str:
    """Engine messages are lower-case clauses; the page shows them as sentences."""
    msg = str(msg).strip()
    if not msg:
        return "Something went wrong."
    first = msg.split(" ", 1)[0]
    if first.isalpha():  # "the loss became nan" -> "The loss...", but never "Cat.png" for "cat.png"
        msg = msg[0].upper() + msg[1:]
    return msg if msg[-1] in ".!?" else msg + "."


def public(msg: str) -> str:
    """An engine message as the page may show it: a sentence, with server folders cut to their last part
    (`/home/app/.cache/segdemo/oxford-pet` -> `oxford-pet`): a visitor has no business with the server's
    layout, and a student needs only the name."""
    return sentence(_ABSOLUTE_PATH.sub(r"\1", str(msg)))


def tidy_paths(text: str, *places: tuple[Path | str, str]) -> str:
    """Server folders mean nothing to a student (and are nobody's business): `folder/x` becomes `x`, and
    `folder` alone becomes its label, e.g. the temp folder a zip was unpacked into -> "mydata.zip"."""
    for folder, label in places:
        f = str(folder).rstrip("/")
        text = text.replace(f + "/", "").replace(f, label)
    return text


def fmt_duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_num(v: object, digits: int = 4) -> str:
    """A metric for a table; undefined (None/NaN) shows as n/a."""
    if v is None:
        return "n/a"
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if np.isnan(f) else f"{f:.{digits}f}"


def safe_stem(name: str) -> str:
    stem = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"
