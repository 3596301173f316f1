"""User text (class, file and dataset names, errors that quote them) made inert for the format it is
shown in: it must read as typed, never as Markdown, HTML or a link."""

from __future__ import annotations

import html
import re
from typing import Any

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>&:$=])")


def markdown(text: Any) -> str:
    """Backslash-escape every character CommonMark (and Streamlit's Markdown: emoji shortcodes,
    ``:color[...]`` directives, ``$`` maths) could read, HTML tags and entities included."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def plotly(text: Any) -> str:
    """Entity-escape ``&``, ``<`` and ``>``: Plotly draws a subset of HTML (``<a href>``, ``<b>``,
    ``<br>``, ...) in titles, tick labels, legends, hover and text, and shows entities as the text
    they stand for, so an escaped name reads as typed."""
    return html.escape(str(text), quote=False)
