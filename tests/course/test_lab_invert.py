"""Both directions for every lab, like `nbgrader validate --invert`.

* Solutions pass: `make test-notebooks` runs every solutions/*.ipynb under nbval, and each
  solution ends with a hidden `checks.assert_all_passed()`, so a failing check fails nbval.
  The fixtures are not under solutions/, so their solutions are executed here.
* Labs fail exactly where they should: each generated lab, executed in a fresh kernel with
  errors allowed, raises NotImplementedError in exactly its exercise cells, runs every other
  cell without error (cells after an exercise fall back to the reference), and records every
  check as failed.

Parametrised over solutions/*.ipynb (as they appear) plus the fixture notebooks, so it tests
something even before the course has any lab.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from course.notebooks import cell_role, cell_source
from course.sandbox import execute_notebook

from minigpt.paths import ROOT  # noqa: E402
FIXTURE_SOLUTIONS = sorted((ROOT / "tests" / "fixtures" / "notebooks" / "solutions").glob("*.ipynb"))
COURSE_SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
ALL_SOLUTIONS = COURSE_SOLUTIONS + FIXTURE_SOLUTIONS
CELL_TIMEOUT, NOTEBOOK_TIMEOUT = 300, 600  # a lab takes at most 3 minutes on the CI machine

from course import labs as gen  # noqa: E402

CHECK_NAME_RE = re.compile(r"checks\.(?:check|check_equal|check_close|check_true)\(\s*[\"']([^\"']+)[\"']")


def label(path: Path) -> str:
    return str(path.relative_to(ROOT))


def static_check_names(nb: dict) -> set[str]:
    return {m for c in nb["cells"] if c["cell_type"] == "code" for m in CHECK_NAME_RE.findall(cell_source(c))}


def run(nb: dict, name: str, tmp_path: Path):
    folder = tmp_path / "labs"  # run where a learner's copy runs: its own folder, no profile
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(gen.render(nb), encoding="utf-8")
    return execute_notebook(path, cell_timeout=CELL_TIMEOUT, notebook_timeout=NOTEBOOK_TIMEOUT, profile="")


@pytest.mark.parametrize("solution", ALL_SOLUTIONS, ids=label)
def test_solution_follows_the_authoring_conventions(solution):
    nb = json.loads(solution.read_text(encoding="utf-8"))
    lab = gen.make_lab(nb, solution.name)
    sources = [cell_source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(cell_role(c) == "exercise" for c in lab["cells"]), "a lab needs at least one ### BEGIN SOLUTION block"
    assert static_check_names(nb), "a lab needs at least one check with a literal name, e.g. checks.check(\"ex1-...\")"
    assert any("lab_header(" in s or "checks.start_lab(" in s for s in sources), \
        "call course.learner.lab_header(...) (or checks.start_lab) in the first code cell"
    hidden_assert = re.compile(r"### BEGIN HIDDEN\s*\n\s*checks\.assert_all_passed\(\)")
    assert any(hidden_assert.search(s) for s in sources), \
        "end the solution with checks.summary() and a hidden checks.assert_all_passed() (docs/AUTHORING.md)"


@pytest.mark.parametrize("solution", ALL_SOLUTIONS, ids=label)
def test_generated_lab_fails_exactly_at_its_exercises(solution, tmp_path):
    nb = json.loads(solution.read_text(encoding="utf-8"))
    lab = gen.make_lab(nb, solution.name)
    ex = run(lab, solution.name, tmp_path)
    assert ex.status == "completed", f"the lab did not run to the end: {ex.message}"
    exercise_cells = {i + 1 for i, c in enumerate(lab["cells"]) if cell_role(c) == "exercise"}
    ran = {c["index"] + 1 for c in ex.cells}
    errors = {c["index"] + 1: c["error"] for c in ex.cells if c["error"]}
    assert exercise_cells <= ran
    unexpected = {i: e for i, e in errors.items() if i not in exercise_cells}
    assert not unexpected, f"cells that are not exercises raised (use checks.fallback after an exercise): {unexpected}"
    silent = exercise_cells - set(errors)
    assert not silent, (f"exercise cells {sorted(silent)} ran without raising: end an exercise cell with a "
                        f"call of what it defines, so the learner sees NotImplementedError there")
    wrong = {i: e for i, e in errors.items() if e["ename"] != "NotImplementedError"}
    assert not wrong, f"exercise cells raised something else than NotImplementedError: {wrong}"
    recorded = ex.checks()
    assert recorded, "no check recorded anything in the lab"
    passing = [n for n, r in recorded.items() if r["passed"]]
    assert not passing, f"checks that pass on the unsolved lab (they must depend on the exercise): {passing}"
    missing = static_check_names(nb) - set(recorded)
    assert not missing, f"checks that never ran in the lab: {sorted(missing)}"


@pytest.mark.parametrize("solution", FIXTURE_SOLUTIONS, ids=label)
def test_fixture_solution_runs_clean_and_passes_every_check(solution, tmp_path):
    nb = json.loads(solution.read_text(encoding="utf-8"))
    ex = run(nb, solution.name, tmp_path)
    assert ex.status == "completed", ex.message
    assert [c for c in ex.cells if c["error"]] == []
    recorded = ex.checks()
    assert set(recorded) == static_check_names(nb)
    assert all(r["passed"] for r in recorded.values()), recorded
