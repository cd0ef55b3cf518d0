"""Every exception leaves a UI handler as a gr.Error sentence: engine refusals keep their words (made public:
no server paths, HTML-escaped), bugs are logged on the server and shown only by their type."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from segdemo.errors import is_user_error
from segdemo.ui.words import esc, public

log = logging.getLogger("segdemo.ui")
F = TypeVar("F", bound=Callable[..., Any])


def user_error(msg: str, title: str | None = None) -> gr.Error:
    """A gr.Error for the user: public(), then HTML-escaped (the toast renders HTML)."""
    titled: dict[str, Any] = {"title": title} if title else {}  # else gradio's own default title
    return gr.Error(esc(public(msg), quote=False), **titled)


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if is_user_error(e):  # the engine's vocabulary for mistakes a student can fix (segdemo.errors)
        return user_error(str(e))
    log.exception("unexpected error in a UI handler")
    return gr.Error(
        f"Something unexpected went wrong on the server ({type(e).__name__}). Try again; if it "
        "keeps happening, reload the page."
    )


def user_errors(fn: F) -> F:
    """Wrap a handler so that whatever it raises is a gr.Error (see the module's docstring). Works for sync and
    async functions and generators; the wrapper keeps the handler's signature, which gradio reads."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*a: Any, **k: Any) -> Any:
            try:
                async for item in fn(*a, **k):
                    yield item
            except Exception as e:
                raise _to_gr_error(e) from None

        return agen  # type: ignore[return-value]
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*a: Any, **k: Any) -> Any:
            try:
                yield from fn(*a, **k)
            except Exception as e:
                raise _to_gr_error(e) from None

        return gen  # type: ignore[return-value]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*a: Any, **k: Any) -> Any:
            try:
                return await fn(*a, **k)
            except Exception as e:
                raise _to_gr_error(e) from None

        return coro  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except Exception as e:
            raise _to_gr_error(e) from None

    return plain  # type: ignore[return-value]
