"""User text (class, file and dataset names, errors that quote them) made inert for the format it is
shown in: it must read as typed, never as Markdown, HTML or a link."""

from __future__ import annotations

import re
from typing import Any

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>&:$=])")


def markdown(text: Any) -> str:
    """Backslash-escape every character CommonMark (and Streamlit's Markdown: emoji shortcodes,
    ``:color[...]`` directives, ``$`` maths) could read, HTML tags and entities included."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
