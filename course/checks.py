"""Exercise checks: one ✔/✘ line for the learner, one record for the grader.

A lab checks each exercise with the functions below. None of them raises (an unsolved
exercise must not stop the notebook): each prints exactly one line that says what to look at,
and appends a record to the results registry:

* in memory (``results()``, ``summary()`` at the end of a notebook), and
* as one JSON object per line in the file named by ``MINIGPT_CHECKS_FILE`` when that variable
  is set — ``make grade`` sets it and reads the file back, so records survive a kernel that dies.

Typical cells of a lab (see docs/AUTHORING.md)::

    from course import checks

    with checks.check("ex1-lora-forward", hint="B starts at zero, so the output equals W x.") as c:
        c.close(lora_forward(x), reference_forward(x), what="LoRA output", rtol=1e-5)

    out = checks.fallback(lambda: lora_forward(x), reference=lambda: reference_forward(x),
                          name="lora_forward")

A record holds the learner's numbers (``got``) beside the value the check compared them with
(``expected``), plus any ``values=`` the author names as the exercise's key numbers.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

from . import hints as _hints  # noqa: E402
from .compare import _compare, _is_number, _one_line, _short, explain_exception, raised_in_cell  # noqa: E402
from .hints import Text  # noqa: E402

CHECKS_FILE_ENV = "MINIGPT_CHECKS_FILE"
PASS_MARK, FAIL_MARK, NOTE_MARK = "✔", "✘", "ℹ"

_RECORDS: list[dict[str, Any]] = []   # every record of this process: checks, fallbacks, env
_state: dict[str, Any] = {"lab": "", "env_written_to": None, "write_warned": False}


# --- the registry ---------------------------------------------------------------------------
def start_lab(lab_id: str, language: str | None = None) -> None:
    """Name the lab the following checks belong to, and the learner's language for hints
    (``learner.lab_header`` calls this)."""
    _state["lab"] = str(lab_id)
    if language is not None:
        _hints.set_language(language)
    _write({"kind": "env", **_environment()})


def current_lab() -> str:
    return _state["lab"]


def reset() -> None:
    """Forget every in-memory record (the JSON file, if any, is left alone)."""
    _RECORDS.clear()
    _state["lab"] = ""
    _hints.reset()


def results(lab: str | None = None, latest: bool = True) -> list[dict[str, Any]]:
    """Check records (not fallbacks), oldest first. ``latest``: only the last record per check,
    since a learner may run a check cell several times."""
    recs = [r for r in _RECORDS if r["kind"] == "check" and (lab is None or r["lab"] == lab)]
    if not latest:
        return [dict(r) for r in recs]
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in recs:
        last.pop((r["lab"], r["name"]), None)  # re-insert so the order is the latest run's
        last[(r["lab"], r["name"])] = r
    return [dict(r) for r in last.values()]


def tally(lab: str | None = None) -> tuple[int, int]:
    """(passed, total) over the latest record of each check."""
    recs = results(lab)
    return sum(r["passed"] for r in recs), len(recs)


def passed(name: str, lab: str | None = None) -> bool:
    """Whether the latest run of check ``name`` passed (False if it has not run). Lets a lab skip
    heavy work that only makes sense once the learner's code is there."""
    lab = _state["lab"] if lab is None else lab
    recs = [r for r in results(lab or None) if r["name"] == name]
    return bool(recs) and recs[-1]["passed"]


def summary(lab: str | None = None) -> None:
    """Print how many checks passed and one line per failed check. Call it in a lab's last cell."""
    lab = _state["lab"] if lab is None else lab
    recs = results(lab or None)
    passed, total = sum(r["passed"] for r in recs), len(recs)
    where = f"lab {lab}" if lab else "this notebook"
    if total == 0:
        print(f"No checks have run in {where} yet.")
        return
    mark = PASS_MARK if passed == total else FAIL_MARK
    todo = sum(r.get("state") == "not_attempted" for r in recs)
    wrong = total - passed - todo
    rest = "".join(f", {n} {w}" for n, w in ((wrong, "wrong"), (todo, "not done yet")) if n)
    print(f"{mark} Checks in {where}: {passed} of {total} passed{rest}.")
    for r in recs:
        if not r["passed"]:
            print(f"  {FAIL_MARK} {r['name']}: {r['message']}")


def assert_all_passed(lab: str | None = None) -> None:
    """Raise AssertionError unless every check ran and passed. For solution notebooks only,
    inside ``### BEGIN HIDDEN`` so that nbval fails when a solution's check fails."""
    lab = _state["lab"] if lab is None else lab
    recs = results(lab or None)
    failed = [r["name"] for r in recs if not r["passed"]]
    if not recs:
        raise AssertionError("No check ran in this notebook; a solution must run its checks.")
    if failed:
        raise AssertionError(f"These checks failed in the solution: {', '.join(failed)}.")


def record(name: str, passed: bool, message: str, *, what: str | None = None, got: Any = None,
           expected: Any = None, values: dict[str, Any] | None = None,
           lab: str | None = None, state: str | None = None, hint_level: int = 0) -> bool:
    """Store one check result, print its ✔/✘ line, and return ``passed``. Never raises.
    ``state``: "passed", "wrong" or "not_attempted" (default: from ``passed``)."""
    try:
        rec = {"kind": "check", "lab": _state["lab"] if lab is None else str(lab),
               "name": str(name), "passed": bool(passed), "message": _one_line(message),
               "state": "passed" if passed else (state or "wrong"), "hint_level": int(hint_level),
               "what": what, "got": _jsonable(got), "expected": _jsonable(expected),
               "values": {str(k): _jsonable(v) for k, v in (values or {}).items()},
               "time": time.time()}
        _RECORDS.append(rec)
        _write(rec)
        label = f"{rec['lab']} {rec['name']}" if rec["lab"] else rec["name"]
        print(f"{PASS_MARK if rec['passed'] else FAIL_MARK} {label}: {rec['message']}")
        return rec["passed"]
    except Exception as exc:  # a check must never stop a notebook
        print(f"{FAIL_MARK} {name}: the check itself failed ({type(exc).__name__}: {exc}).")
        return False


# --- comparisons -------------------------------------------------------------------------------
def _finish(name: str, passed: bool, message: str, hint: Text | None, formula: Text | None,
            depends_on: Any = None, **fields: Any) -> bool:
    """Record a comparison's result: on a wrong answer, name a failed dependency first and add
    the hint of the level this failure has earned (course.hints)."""
    _hints.register(name, hint, formula)
    level = 0
    if not passed:
        message = _blame_dependency(depends_on, message)
        message, level = _hints.on_wrong(name, message)
    return record(name, passed, message, hint_level=level, **fields)


def _blame_dependency(depends_on: Any, message: str) -> str:
    """``depends_on``: a check name, a list of them, or {check name: what it checks}. When one of
    them has not passed, the learner should fix that one first: say so before the numbers."""
    if not depends_on:
        return message
    deps = {depends_on: depends_on} if isinstance(depends_on, str) else (
        dict(depends_on) if isinstance(depends_on, dict) else {d: d for d in depends_on})
    latest = {r["name"]: r for r in results(_state["lab"] or None)}
    for dep, what in deps.items():
        rec = latest.get(dep)
        if rec is None:
            return _hints.frame("depends_not_run", what=f"`{what}`", dep=dep) + ": " + message
        if not rec["passed"]:
            return _hints.frame("depends", what=f"`{what}`", dep=dep) + ": " + message
    return message


def check_equal(name: str, got: Any, expected: Any, *, what: str = "the value", hint: Text | None = None,
                formula: Text | None = None, values: dict[str, Any] | None = None) -> bool:
    """Pass when ``got == expected`` (tensors/arrays: same shape and every element equal)."""
    passed, message = _compare(got, expected, what, close=False)
    return _finish(name, passed, message, hint, formula, what=what, got=got, expected=expected, values=values)


def check_close(name: str, got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 0.0,
                what: str = "the value", hint: Text | None = None, formula: Text | None = None,
                values: dict[str, Any] | None = None) -> bool:
    """Pass when ``|got - expected| <= atol + rtol * |expected|`` for every element (numbers,
    tensors, NumPy arrays, and lists/tuples/dicts of them)."""
    passed, message = _compare(got, expected, what, close=True, rtol=rtol, atol=atol)
    return _finish(name, passed, message, hint, formula, what=what, got=got, expected=expected, values=values)


def check_true(name: str, condition: Any, *, what: str = "the condition", message: str | None = None,
               hint: Text | None = None, formula: Text | None = None,
               values: dict[str, Any] | None = None) -> bool:
    """Pass when ``condition`` is truthy. ``message`` replaces the default text."""
    try:
        passed = bool(condition)
    except Exception as exc:
        passed, message = False, f"{what} could not be read as True/False ({type(exc).__name__}: {exc})"
    text = message or (f"{what} holds" if passed else f"{what} does not hold")
    return _finish(name, passed, text, hint, formula, what=what, values=values)


def hint(name: str) -> None:
    """Print every hint of check ``name``, the formula included (run its check cell first)."""
    level = _hints.show(name)
    if level:
        rec = {"kind": "hint", "lab": _state["lab"], "name": str(name), "level": level, "time": time.time()}
        _RECORDS.append(rec)
        _write(rec)


class Check:
    """The handle ``with check(name) as c`` gives: ``c.equal``, ``c.close``, ``c.true`` compare
    without printing; ``c.values(...)`` adds key numbers. One line is printed when the block ends."""

    def __init__(self, name: str, what: str | None):
        self.name, self.what = name, what
        self.parts: list[tuple[bool, str]] = []
        self.got: Any = None
        self.expected: Any = None
        self._failed_first = False
        self._values: dict[str, Any] = {}

    def equal(self, got: Any, expected: Any, *, what: str | None = None) -> bool:
        return self._part(got, expected, what, close=False)

    def close(self, got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 0.0,
              what: str | None = None) -> bool:
        return self._part(got, expected, what, close=True, rtol=rtol, atol=atol)

    def true(self, condition: Any, *, what: str | None = None, message: str | None = None,
             detail: str | None = None) -> bool:
        """``detail``: the numbers behind a failure, added to its message (not printed on a pass)."""
        what = what or self.what or "the condition"
        try:
            ok = bool(condition)
        except Exception as exc:
            ok, message = False, f"{what} could not be read as True/False ({type(exc).__name__})"
        text = message or (f"{what} holds" if ok else f"{what} does not hold")
        self.parts.append((ok, text if ok or not detail else f"{text}: {detail}"))
        return ok

    def values(self, **key_numbers: Any) -> None:
        self._values.update(key_numbers)

    def _part(self, got: Any, expected: Any, what: str | None, **kw: Any) -> bool:
        what = what or self.what or "the value"
        ok, message = _compare(got, expected, what, **kw)
        self.parts.append((ok, message))
        # the headline numbers: the first failing comparison's, else the first comparison's
        if (self.got is None and self.expected is None) or (not ok and not self._failed_first):
            self.got, self.expected = got, expected
            self._failed_first = not ok
        return ok


@contextmanager
def check(name: str, *, what: str | None = None, hint: Text | None = None, formula: Text | None = None,
          depends_on: Any = None) -> Iterator[Check]:
    """Run the block; any exception in it becomes a failed record with a helpful message.
    A block that finishes without comparing anything passes ("ran without error").

    ``hint`` (level 1: what to look at, never the code) and ``formula`` (level 2) follow
    course.hints; an exercise not attempted yet (its stub raised NotImplementedError, or the
    name it defines does not exist) gets "not done yet" and no hint. ``depends_on`` names
    checks this one relies on (see ``_blame_dependency``)."""
    c = Check(name, what)
    try:
        yield c
    except Exception as exc:  # KeyboardInterrupt still stops the cell (grading relies on it)
        values = {**c._values, "error": f"{type(exc).__name__}: {exc}"}
        todo = _not_attempted(exc)
        if todo is not None:
            _hints.register(name, hint, formula)
            record(name, False, todo, what=what, values=values, state="not_attempted")
        else:
            _finish(name, False, explain_exception(exc), hint, formula, depends_on, what=what, values=values)
        return
    if not c.parts:
        c.parts.append((True, f"{what or 'your code'} ran without error"))
    passed = all(ok for ok, _ in c.parts)
    message = "; ".join(m for ok, m in c.parts if passed or not ok)  # on failure: what failed
    _finish(name, passed, message, hint, formula, depends_on, what=what, got=c.got, expected=c.expected,
            values=c._values)


def _not_attempted(exc: BaseException) -> str | None:
    """The "not done yet" message when ``exc`` says the exercise has not been attempted: a stub's
    NotImplementedError raised in a notebook cell, or a NameError raised by the check cell itself
    (the name the exercise defines does not exist). None for anything else (a bug to report)."""
    where = raised_in_cell(exc)
    if isinstance(exc, NotImplementedError) and where is not None:
        place = f"`{where}`" if where != "<module>" else _hints.frame("not_done_place")
        return _hints.frame("not_done", place=place)
    if isinstance(exc, NameError) and where == "<module>":
        return _hints.frame("not_defined", name=getattr(exc, "name", None) or _short(str(exc), 60))
    return None


# --- fallback -------------------------------------------------------------------------------
def fallback(learner: Callable[[], T], reference: Callable[[], T], *, name: str,
             allow_none: bool = False, check: str | None = None) -> T:
    """Return ``learner()``; if it raises (an unsolved exercise) or returns None, print a note and
    return ``reference()`` instead, so the cells after an exercise always run.

    With ``check`` (a check's name), the learner's result is also replaced while that check has not
    passed: a wrong answer that does not raise would otherwise break the cells after it."""
    why = None
    try:
        result = learner()
        if check is not None and not passed(check):
            why = f"check {check} has not passed, so your result is not used here"
        elif result is not None or allow_none:
            return result
        else:
            why = "your code returned None (a missing `return`?)"
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or isinstance(exc, NameError):
            why = "your exercise is not done yet"
        else:
            why = f"your code raised {type(exc).__name__}: {_short(str(exc), 120)}"
    lab = _state["lab"]
    label = f"{lab} {name}" if lab else name
    print(f"{NOTE_MARK} {label}: using the reference implementation because {why}.")
    rec = {"kind": "fallback", "lab": lab, "name": str(name), "message": why, "time": time.time()}
    _RECORDS.append(rec)
    _write(rec)
    return reference()


# --- messages --------------------------------------------------------------------------------


# --- formatting and JSON ------------------------------------------------------------------------


def _jsonable(x: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a value: small arrays as lists, big ones summarised, NaN as a string."""
    if x is None or isinstance(x, (bool, str)):
        return x if not isinstance(x, str) else _short(x, 500)
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if depth > 3:
        return _short(repr(x), 200)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        try:
            if tuple(x.shape) == ():
                return _jsonable(x.item(), depth + 1)
            size = int(math.prod(tuple(x.shape)))
            if size <= 16:
                flat = x.tolist()
                return _jsonable(flat, depth + 1)
            import numpy as np
            a = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
            return {"shape": list(x.shape), "dtype": str(x.dtype), "sum": _jsonable(float(a.sum())),
                    "abs_max": _jsonable(float(np.abs(a).max()))}
        except Exception:
            return _short(repr(x), 200)
    if isinstance(x, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(x.items())[:50]}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in list(x)[:50]]
    if _is_number(x):
        try:
            return _jsonable(x.item() if hasattr(x, "item") else float(x), depth + 1)
        except Exception:
            pass
    return _short(repr(x), 200)


def _environment() -> dict[str, Any]:
    """Which hardware path this kernel took. Reads torch only if the notebook imported it."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "pid": os.getpid(),
                           "lab": _state["lab"], "time": time.time()}
    torch = sys.modules.get("torch")
    if torch is None:
        env.update(torch=None, cuda_available=None, device="torch not imported")
        return env
    env["torch"] = getattr(torch, "__version__", "?")
    try:
        env["cuda_available"] = bool(torch.cuda.is_available())
        from minigpt.device import describe_device
        env["device"] = describe_device()
    except Exception as exc:
        env.setdefault("cuda_available", None)
        env["device"] = f"unknown ({type(exc).__name__})"
    return env


def _write(rec: dict[str, Any]) -> None:
    """Append one JSON line to $MINIGPT_CHECKS_FILE (opened per record, so a kernel that dies
    later loses nothing already written)."""
    path = os.environ.get(CHECKS_FILE_ENV)
    if not path:
        return
    try:
        lines = []
        if _state["env_written_to"] != path and rec["kind"] != "env":
            lines.append({"kind": "env", **_environment()})
        _state["env_written_to"] = path
        lines.append(rec)
        with open(path, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
    except Exception as exc:
        if not _state["write_warned"]:
            _state["write_warned"] = True
            print(f"{NOTE_MARK} could not write the checks file {path} ({type(exc).__name__}: {exc}).")


def read_checks_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records a kernel wrote to a checks file; a torn last line (kernel killed while
    writing) is skipped."""
    out = []
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
