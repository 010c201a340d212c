"""Relative links in notebooks and Markdown: find them, check they resolve, and rewrite them for a
copy that lives in another folder (``make start`` copies labs/ into learners/<name>/labs/, two
levels deeper, where ``../theory/02-lora.md`` would point at learners/<name>/theory/).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

# [text](target) and ![alt](target); the target stops at whitespace or ")"
LINK_RE = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _is_relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith(("#", "/"))


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, without their #fragment."""
    return [m.group(2).split("#", 1)[0] for m in LINK_RE.finditer(text)
            if _is_relative(m.group(2)) and m.group(2).split("#", 1)[0]]


def markdown_of(path: Path) -> str:
    """A Markdown file's text, or the markdown cells of a notebook joined."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return text
    cells = json.loads(text).get("cells", [])
    return "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "markdown")


def broken_links(path: Path, placed_in: Path | None = None) -> list[str]:
    """Relative links of ``path`` that do not resolve when the file sits in ``placed_in``
    (default: its own folder)."""
    folder = placed_in or path.parent
    # normpath first: the folder of a copy may not exist yet (a learner not started)
    return [t for t in relative_links(markdown_of(path)) if not Path(os.path.normpath(folder / t)).exists()]


def rewrite_notebook_links(nb: dict[str, Any], written_for: Path, placed_in: Path) -> int:
    """Point the relative links of ``nb``'s markdown cells, written for a notebook in folder
    ``written_for``, at the same files from ``placed_in``. Returns how many links changed."""
    changed = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal changed
        target = m.group(2)
        if not _is_relative(target):
            return m.group(0)
        path, _, frag = target.partition("#")
        new = Path(os.path.relpath(written_for / path, placed_in)).as_posix() + (f"#{frag}" if frag else "")
        changed += new != target
        return m.group(1) + new + m.group(3)

    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        new = LINK_RE.sub(fix, text)
        if new != text:
            cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
    return changed
