"""Text that a user controls (class names, file names, messages), made safe for the page: one helper each
for HTML and for Markdown, used by every sink (legends, reports, status lines, tables' notes, errors)."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def esc(text, quote: bool = True) -> str:
    """For HTML: gr.HTML and attribute values; quote=False for text only (gr.Error messages, which a toast
    renders as HTML and API clients read as text: an apostrophe needs no escaping there)."""
    return html.escape(str(text), quote=quote)


def md(text) -> str:
    """For gr.Markdown: HTML-escaped, and Markdown's punctuation backslashed, so a file name cannot become
    a tag, a link, an image or emphasis."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", str(text)), quote=False)
