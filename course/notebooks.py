"""The course's notebook conventions: what marks an exercise, a hidden block and an answer in a
solution notebook (course/labs.py turns them into a lab; course/grading.py reads them back).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any


SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN", "### END HIDDEN"
ANSWER_RE = re.compile(r"\A\s*<!--\s*ANSWER:\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*-->[ \t]*\n?")


ANSWER_PROMPT = "*Write your answer here.*"


STUB_COMMENT = "# YOUR CODE HERE"


STUB_RAISE = 'raise NotImplementedError("Exercise not done yet: write your code here and delete this line.")'


NOTEBOOK_NAME_RE = re.compile(r"(\d{2})-[a-z0-9][a-z0-9-]*\.ipynb")


META_KEY = "minigpt"  # cell metadata: {"role": "exercise"} or {"role": "answer", "answer": id}


def cell_source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def answer_id(cell: dict[str, Any]) -> str | None:
    """The id of a written-answer cell (markdown starting with <!-- ANSWER: id -->), else None."""
    if cell.get("cell_type") != "markdown":
        return None
    m = ANSWER_RE.match(cell_source(cell))
    if m:
        return m.group(1)
    meta = cell.get("metadata", {}).get(META_KEY, {})
    return meta.get("answer") if meta.get("role") == "answer" else None


def answer_text(cell: dict[str, Any]) -> str:
    """A written-answer cell's text without its marker."""
    return ANSWER_RE.sub("", cell_source(cell), count=1).strip()


def cell_role(cell: dict[str, Any]) -> str | None:
    return cell.get("metadata", {}).get(META_KEY, {}).get("role")


def lab_id_of(path: Path) -> str | None:
    m = NOTEBOOK_NAME_RE.fullmatch(path.name)
    return m.group(1) if m else None


CHECK_CALL_RE = re.compile(r"checks\.check(?:_equal|_close|_true)?\(\s*[\"']([^\"']+)[\"']")


def exercise_cells_of_checks(nb: dict[str, Any]) -> dict[str, list[str]]:
    """Which exercise cells (by cell id) each check of a lab tests: the exercise cells since the
    previous exercise's checks. Checks named ``exN-...`` share exercise N's cells, so a second
    check of the same exercise (ex1-zero-init-no-op after ex1-lora-layer) tests the same cells."""
    out: dict[str, list[str]] = {}
    pending: list[str] = []
    by_exercise: dict[str, list[str]] = {}
    for cell in nb.get("cells", []):
        src = cell_source(cell)
        if cell_role(cell) == "exercise" or SOLUTION_BEGIN in src:
            pending.append(cell.get("id", ""))
            continue
        for name in CHECK_CALL_RE.findall(src):
            key = name.split("-", 1)[0]
            if key not in by_exercise:
                by_exercise[key], pending = pending, []
            out[name] = by_exercise[key]
    return out
