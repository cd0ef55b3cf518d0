"""Listener settings the tabs share."""

from __future__ import annotations

from typing import Any

import gradio as gr

# what gr.update(...) and gr.skip() return: a handler's new settings (or none) for one output
Update = dict[str, Any]
HEAVY = "heavy"  # concurrency id shared by every listener that loads a model or decodes data, public or private


def bump(counter: gr.State, **kw: Any) -> dict[str, Any]:
    """Listener arguments that add one to a gr.State `counter`, so that the one always_last listener on its
    change draws a view instead of the bumping listener drawing it beside that one. Queued: gradio 6.31 fires a
    State's change only for queued events (a queue=False bump went unheard)."""
    return dict(
        fn=lambda n: n + 1,
        inputs=counter,
        outputs=counter,
        api_visibility="private",
        concurrency_limit=None,
        **kw,
    )
