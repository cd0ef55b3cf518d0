"""Gradio writes the pictures it sends as a temp file renamed into place (a patch of gradio 6.31's
save_pil_to_cache), so a browser fetching a picture never reads it half-rewritten."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import gradio as gr

from segdemo.atomic import replace_file

log = logging.getLogger("segdemo.ui")

PICTURE_PATCH_GRADIO = "6.31.0"  # the gradio whose save_pil_to_cache the patch below replaces


def picture_patch_mismatch() -> str | None:
    """Why the picture-cache patch may not fit this gradio (another version, or the function it replaces
    changed shape), or None when it was written for exactly this one."""
    from gradio import processing_utils as pu

    if gr.__version__ != PICTURE_PATCH_GRADIO:
        return (
            f"segdemo's picture-cache patch (ui/picture_cache.py) was written for gradio {PICTURE_PATCH_GRADIO}, "
            f"and this is gradio {gr.__version__}: check that processing_utils.save_pil_to_cache still "
            "hashes, names and writes pictures the same way, then update PICTURE_PATCH_GRADIO"
        )
    params = list(inspect.signature(pu.save_pil_to_cache).parameters)
    if params[:4] != ["img", "cache_dir", "name", "format"]:
        return f"gradio's save_pil_to_cache takes {params}, not what segdemo's picture-cache patch replaces"
    return None


def write_pictures_to_cache_atomically() -> None:
    """Make Gradio write the pictures it sends as a temp file renamed into place, as it already does for files.

    Gradio 6.31 saves every output picture under a hash of its bytes with a plain `write_bytes`. When the
    same picture goes out again (the filmstrip's true masks every epoch, thirty students clicking the same
    example), a browser still fetching the first copy can read it mid-rewrite and get a truncated file
    ("Too little data for declared Content-Length": seen in test_app_api). Same paths, same bytes; a picture
    already in the cache is only touched, so `delete_cache` does not age it out.
    """
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "segdemo_atomic", False):
        return
    mismatch = picture_patch_mismatch()
    if mismatch:  # loud, every start: the patch replaces a gradio internal that may have moved on
        log.warning("%s", mismatch)
        warnings.warn(mismatch, RuntimeWarning, stacklevel=2)

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        path = (Path(cache_dir) / pu.hash_bytes(data) / f"{name}.{format}").resolve()
        try:
            if path.stat().st_size == len(data):  # named by its hash: these very bytes are there already
                os.utime(path)
                return str(path)
        except FileNotFoundError:
            pass
        return str(replace_file(path, data, fsync=False))

    save_pil_to_cache.segdemo_atomic = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache
