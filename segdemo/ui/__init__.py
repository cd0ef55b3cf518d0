"""The Gradio app: `build_demo()` and `launch()` live in segdemo/ui/app.py and load on first use, so the parts
that need no gradio (run_view, words, pictures) import without it (tests/test_run_view.py)."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any gradio import
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["build_demo", "launch", "CSS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segdemo.ui import app

        return getattr(app, name)
    raise AttributeError(f"module 'segdemo.ui' has no attribute {name!r}")
