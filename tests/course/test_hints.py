"""Hints in two levels (course/hints.py): the level-1 hint of a check points at what to look at and
never gives the solution away; the formula (level 2) comes only after two failures or on request."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from minigpt.paths import ROOT  # noqa: E402

import course.checks as checks  # noqa: E402
from course import hints  # noqa: E402

CHECK_FUNCTIONS = {"check", "check_equal", "check_close", "check_true"}
COURSE = sorted((ROOT / "solutions").glob("*.ipynb"))
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "notebooks" / "solutions").glob("*.ipynb"))
NOTEBOOKS = COURSE + FIXTURES
MIN_LINE = 15          # a solution line this long (whitespace-normalised) must not appear in a hint


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _solution_lines(nb: dict) -> list[str]:
    """Whitespace-normalised lines of every ``### BEGIN SOLUTION ... ### END SOLUTION`` block."""
    found = []
    for src in _code_cells(nb):
        inside = False
        for line in src.splitlines():
            mark = line.strip()
            if mark.startswith("### BEGIN SOLUTION"):
                inside = True
            elif mark.startswith("### END SOLUTION"):
                inside = False
            elif inside and len(_norm(line)) >= MIN_LINE:
                found.append(_norm(line))
    return found


def _expression(line: str) -> str:
    """The computed part of a solution line, spaces removed: after `return`, or after the `=` of
    an assignment (not a comparison)."""
    line = line.split("#", 1)[0].strip()
    if line.startswith("return "):
        line = line[len("return "):]
    else:
        m = re.match(r"^[\w.\[\], ]+?(?:[-+*/]?=)(?!=)(.*)$", line)
        line = m.group(1) if m else line
    return line.replace(" ", "")


def _literal(node: ast.AST | None):
    return None if node is None else ast.literal_eval(node)


def _checks(nb: dict) -> list[dict]:
    """Every check call of the notebook: its name, hint and formula (as literals)."""
    found = []
    for src in _code_cells(nb):
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.split("\n"))
        for node in ast.walk(ast.parse(code)):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name not in CHECK_FUNCTIONS:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            check_name = _literal(node.args[0]) if node.args and isinstance(node.args[0], ast.Constant) else None
            found.append({"name": check_name, "hint": _literal(kw.get("hint")),
                          "formula": _literal(kw.get("formula"))})
    return found


def _texts(t) -> dict[str, str]:
    if t is None:
        return {}
    if isinstance(t, str):
        return {"en": t}
    return dict(t)


def _is_exercise(name) -> bool:
    return isinstance(name, str) and re.match(r"ex\d", name) is not None


def test_the_solutions_are_found():
    assert [p.name[:2] for p in COURSE] == ["01", "02", "03", "04", "05"]
    assert len(FIXTURES) == 2


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.name)
def test_every_exercise_check_has_a_hint_and_a_formula_in_both_languages(path):
    exercises = [c for c in _checks(_load(path)) if _is_exercise(c["name"])]
    assert exercises, f"{path.name}: no exercise check found"
    for c in exercises:
        for level in ("hint", "formula"):
            t = c[level]
            assert isinstance(t, dict), f"{path.name} {c['name']}: {level}= must be {{'en': ..., 'es': ...}}"
            for lang in ("en", "es"):
                assert isinstance(t.get(lang), str) and t[lang].strip(), f"{path.name} {c['name']}: {level}[{lang!r}]"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_level_1_hint_contains_a_line_of_the_solution(path):
    nb = _load(path)
    solution = _solution_lines(nb)
    assert solution, f"{path.name}: no solution block found"
    for c in _checks(nb):
        for lang, text in _texts(c["hint"]).items():
            hint = _norm(text)
            leaked = [line for line in solution if line in hint]
            assert not leaked, f"{path.name} {c['name']} hint[{lang!r}] gives the solution away: {leaked}"
            # nor the expression of a solution line ("return r * d_in + d_out * r" -> "r * d_in + d_out * r"),
            # spaces ignored, so a hint cannot hand over the formula by quoting only its right-hand side
            squeezed = hint.replace(" ", "")
            exprs = [e for e in (_expression(line) for line in solution) if len(e) >= 10]
            leaked = [e for e in exprs if e in squeezed]
            assert not leaked, f"{path.name} {c['name']} hint[{lang!r}] quotes a solution expression: {leaked}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_level_1_hint_is_not_the_formula(path):
    for c in _checks(_load(path)):
        hint, formula = _texts(c["hint"]), _texts(c["formula"])
        if not hint or not formula:
            continue
        for lang in set(hint) | set(formula):
            assert _norm(hint.get(lang, "")) != _norm(formula.get(lang, "")), f"{path.name} {c['name']} ({lang})"


# --- course.checks prints the levels --------------------------------------------------------------
@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.delenv(checks.CHECKS_FILE_ENV, raising=False)
    checks.reset()
    hints.set_language("en")
    yield
    checks.reset()
    hints.set_language("en")


def test_a_wrong_answer_shows_the_hint_first_and_the_formula_the_second_time(capsys):
    kw = dict(what="the count", hint="Look at the shape of B.", formula="r * d_in + d_out * r")
    assert not checks.check_equal("t-count", 5, 6, **kw)
    first = capsys.readouterr().out
    assert "Hint: Look at the shape of B." in first
    assert "r * d_in + d_out * r" not in first
    assert "checks.hint('t-count')" in first
    assert not checks.check_equal("t-count", 5, 6, **kw)
    second = capsys.readouterr().out
    assert "Hint: Look at the shape of B." in second
    assert "Formula: r * d_in + d_out * r" in second


def test_a_context_check_shows_the_hint_but_not_the_formula_on_a_first_failure(capsys):
    with checks.check("t-block", hint={"en": "Mind the unit.", "es": "Cuidado con la unidad."},
                      formula={"en": "bytes = 4 * n", "es": "bytes = 4 * n"}) as c:
        c.equal(3, 4, what="bytes")
    out = capsys.readouterr().out
    assert "Hint: Mind the unit." in out and "4 * n" not in out


def test_a_passing_check_shows_no_hint(capsys):
    assert checks.check_equal("t-ok", 6, 6, hint="Look at B.", formula="r * d")
    out = capsys.readouterr().out
    assert "Look at B." not in out and "r * d" not in out


def test_checks_hint_prints_the_formula(capsys):
    checks.check_equal("t-ask", 6, 6, hint="Look at the shape of B.", formula="r * d_in + d_out * r")
    capsys.readouterr()
    checks.hint("t-ask")
    out = capsys.readouterr().out
    assert "Look at the shape of B." in out and "Formula: r * d_in + d_out * r" in out


def test_checks_hint_on_a_check_that_has_not_run(capsys):
    checks.hint("t-never")
    assert "t-never" in capsys.readouterr().out


def test_the_not_done_frame_exists_in_both_languages():
    for lang in hints.LANGUAGES:
        text = hints.frame("not_done", lang, place="x")
        assert "x" in text and "NotImplementedError" in text
    assert hints.frame("not_done", "en", place="x") != hints.frame("not_done", "es", place="x")


def test_in_spanish_a_wrong_check_prints_pista(capsys):
    checks.start_lab("01", language="es")
    checks.check_equal("t-es", 1, 2, hint={"en": "Look at B.", "es": "Mira B."},
                       formula={"en": "B = 0", "es": "B = 0"})
    out = capsys.readouterr().out
    assert "Pista: Mira B." in out and "Look at B." not in out
    assert "B = 0" not in out
