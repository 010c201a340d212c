#!/usr/bin/env python
"""Write labs/NN-<name>.ipynb from solutions/NN-<name>.ipynb, the single source.

    make generate-labs                         write every lab
    python course/labs.py --check    exit 1 and say which labs are stale, missing or orphaned
    python course/labs.py --prune    also delete labs that have no solution

In a solution notebook (conventions in course/grading.py, guide in docs/AUTHORING.md):
* code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes ``# YOUR CODE HERE`` and
  ``raise NotImplementedError(...)`` at the indentation of the BEGIN line; the cell is marked
  as an exercise in its metadata;
* code between ``### BEGIN HIDDEN`` and ``### END HIDDEN`` is dropped (and the cell with it,
  if nothing else is left): solution-only lines such as ``checks.assert_all_passed()``;
* a markdown cell starting with ``<!-- ANSWER: <id> -->`` keeps the marker and gets the prompt
  "*Write your answer here.*" instead of the reference answer;
* lines that are only an nbval marker (``# NBVAL_CHECK_OUTPUT`` ...) are dropped;
* every output and execution count is cleared.

Output is deterministic: plain JSON with sorted keys, indent 1, a trailing newline — the same
layout Jupyter writes, so opening and saving a lab does not reformat it.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from course.notebooks import (ANSWER_PROMPT, ANSWER_RE, HIDDEN_BEGIN, HIDDEN_END, META_KEY,
                             NOTEBOOK_NAME_RE, SOLUTION_BEGIN, SOLUTION_END, STUB_COMMENT, STUB_RAISE,
                             answer_id, answer_text, cell_source)

from minigpt.paths import ROOT  # noqa: E402
DROPPED_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")


class AuthoringError(ValueError):
    """A solution notebook breaks a convention; the message says where and what to change."""


def _lines(text: str) -> list[str]:
    """Jupyter's on-disk form of a source: a list of lines, each but the last ending in \\n."""
    return text.splitlines(keepends=True)


def transform_code(source: str, where: str) -> tuple[str, bool, bool]:
    """(lab source, has an exercise, had hidden lines) for one code cell's source."""
    out: list[str] = []
    mode = None  # None | "solution" | "hidden"
    exercise = hidden = False
    for lineno, line in enumerate(source.splitlines(keepends=True), 1):
        marker = line.strip()
        if marker in (SOLUTION_BEGIN, HIDDEN_BEGIN):
            if mode is not None:
                raise AuthoringError(f"{where}, line {lineno}: {marker} inside an open {mode} block; "
                                     f"close the first block before opening another.")
            mode = "solution" if marker == SOLUTION_BEGIN else "hidden"
            if mode == "solution":
                indent = line[: len(line) - len(line.lstrip())]
                out += [f"{indent}{STUB_COMMENT}\n", f"{indent}{STUB_RAISE}\n"]
                exercise = True
            else:
                hidden = True
            continue
        if marker in (SOLUTION_END, HIDDEN_END):
            expected = SOLUTION_END if mode == "solution" else HIDDEN_END if mode == "hidden" else None
            if marker != expected:
                raise AuthoringError(f"{where}, line {lineno}: {marker} without a matching BEGIN line.")
            mode = None
            continue
        if mode is not None:
            continue
        if marker.startswith("# NBVAL_") and marker[2:].replace("_", "").isalnum():
            continue
        out.append(line)
    if mode is not None:
        raise AuthoringError(f"{where}: a {mode} block is never closed; add its ### END line.")
    text = "".join(out)
    # a stub that ended the source keeps no trailing newline, as Jupyter stores sources
    return (text[:-1] if text.endswith("\n") and not source.endswith("\n") else text), exercise, hidden


def make_lab(solution: dict[str, Any], name: str) -> dict[str, Any]:
    """The lab notebook (a new dict) for the solution notebook ``solution`` named ``name``."""
    m = NOTEBOOK_NAME_RE.fullmatch(name)
    if not m:
        raise AuthoringError(f"solutions/{name}: name solution notebooks NN-lowercase-words.ipynb, "
                             f"e.g. 03-memory-footprint.ipynb.")
    if solution.get("nbformat") != 4:
        raise AuthoringError(f"solutions/{name}: save it as nbformat 4 (any recent Jupyter does).")
    cells, answers = [], set()
    for index, cell in enumerate(solution.get("cells", [])):
        where = f"solutions/{name}, cell {index + 1}"
        new = {"cell_type": cell["cell_type"],
               "id": cell.get("id") or hashlib.sha1(f"{name}:{index}".encode()).hexdigest()[:8],
               "metadata": {k: copy.deepcopy(v) for k, v in cell.get("metadata", {}).items()
                            if k not in DROPPED_CELL_METADATA and k != META_KEY}}
        src = cell_source(cell)
        if cell["cell_type"] == "code":
            src, exercise, hidden = transform_code(src, where)
            if hidden and not src.strip():
                continue  # the whole cell was solution-only
            if exercise:
                new["metadata"][META_KEY] = {"role": "exercise"}
            new.update(execution_count=None, outputs=[])
        elif cell["cell_type"] == "markdown":
            if SOLUTION_BEGIN in src or HIDDEN_BEGIN in src:
                raise AuthoringError(f"{where}: solution markers belong in code cells; for a written "
                                     f"answer start a markdown cell with <!-- ANSWER: <id> -->.")
            aid = answer_id(cell) if ANSWER_RE.match(src) else None
            if aid:
                if aid in answers:
                    raise AuthoringError(f"{where}: the answer id {aid!r} is used twice; give each answer its own id.")
                if not answer_text(cell):
                    raise AuthoringError(f"{where}: the answer cell {aid!r} has no reference answer under its marker.")
                answers.add(aid)
                src = f"<!-- ANSWER: {aid} -->\n{ANSWER_PROMPT}"
                new["metadata"][META_KEY] = {"role": "answer", "answer": aid}
            if "attachments" in cell:
                new["attachments"] = copy.deepcopy(cell["attachments"])
        new["source"] = _lines(src)
        cells.append(new)
    metadata = {k: copy.deepcopy(v) for k, v in solution.get("metadata", {}).items() if k != META_KEY}
    metadata[META_KEY] = {"lab": m.group(1), "generated_from": f"solutions/{name}"}
    return {"cells": cells, "metadata": metadata, "nbformat": 4,
            "nbformat_minor": max(5, int(solution.get("nbformat_minor", 5)))}


def render(nb: dict[str, Any]) -> str:
    """The exact text written to disk (same layout as nbformat.write)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False, separators=(",", ": ")) + "\n"


def expected_labs(solutions_dir: Path) -> dict[str, str]:
    """{lab file name: text} for every solution notebook."""
    out, ids = {}, {}
    for path in sorted(Path(solutions_dir).glob("*.ipynb")):
        try:
            solution = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AuthoringError(f"solutions/{path.name} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        lab = make_lab(solution, path.name)
        lid = lab["metadata"][META_KEY]["lab"]
        if lid in ids:
            raise AuthoringError(f"solutions/{path.name} and solutions/{ids[lid]} share the number {lid}; "
                                 f"give each lab its own two-digit number.")
        ids[lid] = path.name
        out[path.name] = render(lab)
    return out


def problems(solutions_dir: Path, labs_dir: Path) -> list[str]:
    """One sentence per lab that is stale, missing, or has no solution; [] when labs/ is current."""
    want = expected_labs(solutions_dir)
    found = {p.name: p for p in sorted(Path(labs_dir).glob("*.ipynb"))} if Path(labs_dir).is_dir() else {}
    out = []
    for name, text in want.items():
        if name not in found:
            out.append(f"labs/{name} is missing: run make generate-labs.")
        elif found[name].read_text(encoding="utf-8") != text:
            out.append(f"labs/{name} is stale (solutions/{name} changed, or the lab was edited by hand): "
                       f"run make generate-labs.")
    for name in found:
        if name not in want:
            out.append(f"labs/{name} has no solutions/{name}: delete the lab (make generate-labs PRUNE=1) "
                       f"or add its solution.")
    return out


def generate(solutions_dir: Path, labs_dir: Path, prune: bool = False) -> tuple[list[str], list[str]]:
    """Write every lab whose text changed; with ``prune`` delete labs without a solution.
    Returns (written, orphans left or removed)."""
    want = expected_labs(solutions_dir)
    labs_dir = Path(labs_dir)
    labs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in want.items():
        target = labs_dir / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(name)
    orphans = [p.name for p in sorted(labs_dir.glob("*.ipynb")) if p.name not in want]
    if prune:
        for name in orphans:
            (labs_dir / name).unlink()
    return written, orphans


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report stale/missing/orphan labs")
    p.add_argument("--prune", action="store_true", help="delete labs that have no solution")
    p.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    p.add_argument("--labs", type=Path, default=ROOT / "labs")
    a = p.parse_args(argv)
    try:
        if a.check:
            found = problems(a.solutions, a.labs)
            for line in found:
                print(line)
            if not found:
                print(f"labs/ is up to date with solutions/ ({len(list(a.solutions.glob('*.ipynb')))} notebooks).")
            return 1 if found else 0
        written, orphans = generate(a.solutions, a.labs, prune=a.prune)
    except AuthoringError as exc:
        print(exc)
        return 1
    total = len(list(a.solutions.glob("*.ipynb")))
    print(f"{len(written)} lab(s) written, {total - len(written)} already up to date"
          + (f": {', '.join(written)}" if written else "."))
    if orphans:
        verb = "Deleted" if a.prune else "These labs have no solution (make generate-labs PRUNE=1 deletes them):"
        print(f"{verb} {', '.join(orphans)}")
        return 0 if a.prune else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
