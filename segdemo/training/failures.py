"""How a run that cannot go on ends: a Failed event with one sentence for the user, and the log's detail."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from segdemo.errors import UserError
from segdemo.events import Failed

log = logging.getLogger(__name__)
OUT_OF_MEMORY = "ran out of memory in this epoch; choose a smaller batch size or image size and start again"


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError on a GPU; on a CPU the allocator raises a plain RuntimeError that says so."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError | MemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


def failure(e: BaseException, run_dir: Path) -> Failed:
    """The run's Failed event for what stopped it: the user's own sentence for a UserError, no traceback; a
    plain one for running out of memory; and for a bug, its traceback in the log."""
    detail = f"{type(e).__name__}: {e}"
    if isinstance(e, UserError):  # the user's to fix
        log.info("training run in %s refused: %s", run_dir, e)
        return Failed(message=str(e), detail=detail)
    if is_out_of_memory(e):
        log.warning("training run in %s ran out of memory", run_dir, exc_info=True)
        return Failed(message=OUT_OF_MEMORY, detail=detail)
    log.exception("training run in %s failed", run_dir)
    return Failed(message=f"training failed unexpectedly ({type(e).__name__}); the log has details", detail=detail)
