"""What the Predict tab was given: uploaded file lists (capped), the image to show among them, and what a
picture on the page stands on (so a change that arrived while it was made runs it again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

MAX_FILES = 200  # images (and masks) per request: Predict shows one at a time


def _names(files: Any) -> list[str]:
    return [Path(f).name for f in files or []]


def _made_from(model: Any, ckpt_file: Any, images: Any, masks: Any) -> str:
    """The files and model a picture stands on, as one string (files by their upload paths: a file uploaded
    again under the same name is another upload). The picker and the maps switch are the student's own input,
    which runs the picture again by itself."""
    return repr((str(model), [str(f) for f in [ckpt_file, *(images or []), "|", *(masks or [])] if f]))


def _pick(names: list[str], picked: Any, seen: Any = None) -> str | None:
    """The image to show: the first of those just added (not in `seen`, the names the page had), else the one
    picked while it is still uploaded, else the first. A photo uploaded after an example is what is shown."""
    seen = seen if isinstance(seen, list) else []
    new = [n for n in names if n not in seen]
    if seen and new:
        return new[0]
    return picked if picked in names else (names[0] if names else None)


def _file_list(files: Any, what: str) -> list[str]:
    """Uploaded file paths as a list of strings, at most MAX_FILES; gr.Error for anything else."""
    if not files:
        return []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list | tuple) or not all(isinstance(f, str) for f in files):
        raise gr.Error(f"Send the {what} as a list of files.")
    if len(files) > MAX_FILES:
        raise gr.Error(f"{len(files)} {what} at once is more than {MAX_FILES}; send fewer.")
    return list(files)
