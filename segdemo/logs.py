"""Where the engine's logs go. Engine modules only call `logging.getLogger(__name__)`; the entry points
(the CLI, the app's launch()) decide here where records end up: stderr, a run folder's train.log, or both.

Everything segdemo logs is under the "segdemo" logger, so these handlers never pick up (or change) the
logging of gradio, uvicorn or httpx.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = "segdemo"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OneLine(logging.Formatter):
    """The CLI's default stderr: "warning: message", one line."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _without_traceback(record: logging.LogRecord) -> bool:
    # a record with a traceback is a bug the CLI reports in its own words, pointing to the log file
    return not record.exc_info


def _install(handler: logging.Handler, level: int, key: str) -> logging.Handler:
    """Add a handler to the segdemo logger once per key (a second launch() in one process adds nothing)."""
    logger = logging.getLogger(ROOT)
    for h in logger.handlers:
        if getattr(h, "segdemo_key", None) == key:
            return h
    handler.segdemo_key = key  # type: ignore[attr-defined]
    handler.setLevel(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler


def log_to_stderr(level: int = logging.INFO, *, tracebacks: bool = True) -> logging.Handler:
    """Engine records at `level` and above on stderr (the first call in a process decides); with
    tracebacks=False one line each, and records that carry a traceback are left to the log file."""
    handler = logging.StreamHandler(sys.stderr)
    if tracebacks:
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler.setFormatter(_OneLine())
        handler.addFilter(_without_traceback)
    return _install(handler, level, "stderr")


def log_to_file(path: str | Path, level: int = logging.DEBUG) -> logging.Handler:
    """Append engine records (tracebacks included) to a file, e.g. a run folder's train.log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    return _install(handler, level, f"file:{path.resolve()}")


def remove(handler: logging.Handler) -> None:
    logging.getLogger(ROOT).removeHandler(handler)
    handler.close()


class ErrorSeen(logging.Handler):
    """Remembers whether anything at ERROR or above was logged (a bug's traceback went to the log)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True
