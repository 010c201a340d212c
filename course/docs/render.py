"""Rewrite the generated regions of the theory files from the figures of this package.

A theory file never holds a hand-typed figure. It marks each one with a pair of HTML comments, which
JupyterLab's Markdown renderer does not show:

    A 7B model needs <!-- gen:llama-7b.full.gib -->104.32 GiB<!-- /gen --> of model state.

``python -m course.docs`` (``make docs``) recomputes every region of ``theory/``, ``theory/es/`` and
``solutions/0N-*-ref.md`` and rewrites it; ``--check`` rewrites nothing, lists the stale regions and
exits 1. ``tests/course/test_theory.py`` runs the check, so a stale number fails ``make test``.
"""
from __future__ import annotations

import argparse
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

from minigpt.paths import ROOT

from . import drills, lab05, theory01, theory02, theory03, theory04
from ..traces import store

REGION = re.compile(r"<!-- gen:(?P<name>[\w.:+/-]+) -->(?P<body>.*?)<!-- /gen -->", re.S)
LANGS = ("en", "es")
# One module per theory file, then lab 05's results and the drills: each adds its own names.
_SOURCES = (theory01, theory02, theory03, theory04, lab05)
TABLES: dict[str, Callable[[str], str]] = {k: v for m in _SOURCES if hasattr(m, "TABLES") for k, v in m.TABLES.items()}


@lru_cache(maxsize=None)
def figures() -> dict[str, str]:
    """Every inline figure, by name; the same text in both languages."""
    f: dict[str, str] = {}
    for m in (*_SOURCES, drills):
        new = m.figures() if m is not drills else drills.drill_figures()
        clash = sorted(set(f) & set(new))
        assert not clash, f"{m.__name__} redefines {clash}: a figure has one source"
        f.update(new)
    return f


def render(name: str, lang: str) -> str:
    """The text of one generated region."""
    if name in TABLES:
        return TABLES[name](lang)
    figs = figures()
    if name not in figs:
        raise KeyError(f"No generator named {name!r}; add it to the course/docs module of its theory file (figures() or TABLES) "
                       f"or fix the marker's name.")
    return figs[name]


def lang_of(path: Path) -> str:
    return "es" if "es" in Path(path).parts[-2:-1] else "en"


def regenerate_text(text: str, lang: str) -> str:
    """Every ``<!-- gen:NAME -->...<!-- /gen -->`` region of ``text`` with its body recomputed.
    A generated table goes on its own lines between the markers; an inline figure stays inline."""
    def sub(m: re.Match) -> str:
        body = render(m.group("name"), lang)
        if "\n" in body or m.group("name").startswith("table."):
            body = f"\n{body}\n"
        return f"<!-- gen:{m.group('name')} -->{body}<!-- /gen -->"
    return REGION.sub(sub, text)


def doc_files(root: Path = ROOT) -> list[Path]:
    """The files whose regions `make docs` rewrites: theory (both languages) and drill solutions."""
    files = sorted((root / "theory").glob("*.md")) + sorted((root / "theory" / "es").glob("*.md"))
    files += sorted((root / "solutions").glob("0[0-9]-*-ref.md"))
    return files


def check(files: Optional[Iterable[Path]] = None) -> list[str]:
    """Names of the files whose generated regions are stale (empty list: all up to date)."""
    stale = []
    for p in files or doc_files():
        text = p.read_text(encoding="utf-8")
        if regenerate_text(text, lang_of(p)) != text:
            stale.append(str(p.relative_to(ROOT)))
    return stale


def write(files: Optional[Iterable[Path]] = None) -> list[str]:
    """Rewrite every generated region; returns the files that changed. Also refreshes traces.json."""
    changed = []
    for p in files or doc_files():
        text = p.read_text(encoding="utf-8")
        new = regenerate_text(text, lang_of(p))
        if new != text:
            p.write_text(new, encoding="utf-8")
            changed.append(str(p.relative_to(ROOT)))
    store().write()
    return changed


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course.docs", description=(
        "Recompute every generated figure and table of theory/ and solutions/0N-*-ref.md."))
    ap.add_argument("--check", action="store_true", help="rewrite nothing; list stale files and exit 1 if any")
    ap.add_argument("--list", action="store_true", help="print every figure name and its value")
    args = ap.parse_args(argv)
    if args.list:
        for k, v in figures().items():
            print(f"{k:32s} {v}")
        return 0
    if args.check:
        stale = check()
        for s in stale:
            print(f"stale: {s}")
        if stale:
            print("Generated figures are out of date: run `make docs` and commit the result.")
        return 1 if stale else 0
    changed = write()
    print("\n".join(f"rewrote {c}" for c in changed) or "all generated regions were up to date")
    if store().recomputed:
        why = f" (code changed: {', '.join(store().changed)})" if store().changed else ""
        print(f"recomputed {len(store().recomputed)} trace(s){why}; theory/traces.json refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
