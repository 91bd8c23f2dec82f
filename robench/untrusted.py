"""Text that comes from data (CSV cells, meta.json labels, paths) made safe for where it goes.

A results CSV or a run's meta.json may have been written by anyone, so its strings are treated as
hostile: they never become a path outside the output directory, never trigger matplotlib's mathtext
or rich's console markup, and never put raw HTML, a link or an image into a report. Each target has
its own function here, so every place that draws, prints or names a file after data calls one.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .errors import RobenchError

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
# Markdown's inline syntax: emphasis (`*`; `_` is left alone, so names like worst_case_linf stay readable
# in report.md: at worst it italicizes), code, links and images, autolinks and raw HTML, entities,
# table pipes and the backslash itself. Escaping them makes a cell render as the literal text. (Block syntax
# such as '#' or '-' matters only at the start of a line, where robench never puts data.)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>!|&])")


def slug(name: str, *, max_length: int = 80) -> str:
    """A file-name part made from `name`: letters, digits and `._+=-` only, no leading dot.

    A name that had to change (or was empty) gets a short hash of the original, so two different
    names never share a file: "pgd" stays "pgd", "../../x" becomes "x-1b4d2c...".
    """
    text = str(name)
    cleaned = _SLUG_UNSAFE.sub("-", text).strip("-.")[:max_length] or "unnamed"
    if cleaned == text:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def inside(directory: str | os.PathLike, name: str) -> Path:
    """`directory / name`, checked to lie inside `directory` (no `..`, no absolute part, no link out)."""
    root = Path(directory).resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise RobenchError(f"refused to write {name!r}: it would land outside {directory}")
    return target


def for_figure(text: str) -> str:
    """Text matplotlib draws as written: `$` would otherwise start mathtext (and a bad formula raises)."""
    return str(text).replace("$", r"\$")


def for_console(text: str) -> str:
    """Text rich prints as written: `[...]` would otherwise be read as console markup."""
    from rich.markup import escape

    return escape(str(text).replace("\x1b", "\\x1b"))


def for_markdown(text: str) -> str:
    """Text a markdown renderer shows as written: no emphasis, link, image, autolink or raw HTML.

    Newlines become spaces so a cell stays in its table row.
    """
    flat = re.sub(r"[\r\n\t]+", " ", str(text))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def for_code_span(text: str) -> str:
    """Text for inside a markdown code span (`...`): shown literally; a backtick would end the span."""
    return re.sub(r"[\r\n\t]+", " ", str(text)).replace("`", "'")
