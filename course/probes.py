"""Marks from the grader (issue 20, parts 1 and 3): after a learner's notebook has run, the grader
asks the same kernel to evaluate the learner's exercise objects on inputs drawn from a seed chosen
at grading time (course/probe_kernel.py, sent as one extra cell), computes the references in its
own process from the solution's exercise cells on the same inputs, and decides each check itself.

The kernel only ever reports its own outputs; a check passes only when the in-notebook check passed
*and* the grader's verdict agrees, so nothing a notebook prints, writes or patches adds a mark.
The same run reports facts the flags are made of: a replaced function behind ``course.checks``, an
answer that *is* a package object or only calls one, the solution's code defined outside its
exercise cell. The table of probes: course/probe_table.py.
"""
from __future__ import annotations

import ast
import json
import secrets
import types
from pathlib import Path
from typing import Any

from . import probe_kernel as pk
from .notebooks import SOLUTION_BEGIN, cell_role, cell_source
from .probe_table import NOTEBOOK_DECIDED, PROBES, Probe

KERNEL_SOURCE = Path(pk.__file__).read_text(encoding="utf-8")


def probes_for(solution: Path | None) -> tuple[dict[str, Probe], dict[str, str]]:
    """The probes of a lab, and the checks it leaves to the notebook (with why), by solution name."""
    if solution is None:
        return {}, {}
    return dict(PROBES.get(solution.stem, {})), dict(NOTEBOOK_DECIDED.get(solution.stem, {}))


def _spec(probes: dict[str, Probe]) -> dict[str, Any]:
    return {name: {"obj": list(p.obj), "inputs": p.inputs, "call": p.call} for name, p in probes.items()}


def new_seed() -> int:
    return secrets.randbits(48)


def probe_cell(probes: dict[str, Probe], seed: int, token: str) -> str:
    """The cell the grader runs in the learner's kernel after the notebook: the harness is exec'd
    into a namespace of its own, so neither the notebook's names nor its patches of a module reach it."""
    spec = json.dumps(_spec(probes))
    return (f"exec(compile({KERNEL_SOURCE!r}, '<grader-probe>', 'exec'), __grader_probe := {{}})\n"
            f"print({token!r} + __import__('json').dumps(__grader_probe['evaluate']("
            f"globals(), __import__('json').loads({spec!r}), {seed}, True)))\n"
            "del __grader_probe\n")


# --- the grader's side: the solution's code, in this process ----------------------------------------
def _exercise_nodes(nb: dict[str, Any]) -> list[ast.stmt]:
    """Every top-level def, class, assignment and import of the notebook's exercise cells, and the
    imports of its other code cells whose names the exercises use."""
    exercise, other = [], []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell_source(cell)
        try:   # IPython's own lines (%magic, !shell) are not Python
            tree = ast.parse("\n".join("" if ln.lstrip()[:1] in ("%", "!") else ln for ln in src.splitlines()))
        except SyntaxError:
            continue
        (exercise if SOLUTION_BEGIN in src or cell_role(cell) == "exercise" else other).append(tree)
    keep = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)
    nodes = [n for t in exercise for n in t.body if isinstance(n, keep)]
    used = {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}
    imports = [n for t in other for n in t.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and any((a.asname or a.name).split(".")[0] in used for a in n.names)]
    return imports + nodes


def solution_namespace(solution_nb: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The solution's exercise objects, built here (never in a learner's kernel), one statement at a
    time so that one that needs the notebook's state only loses its own name."""
    ns: dict[str, Any] = {"__name__": "__grader_solution__", **given}
    for node in _exercise_nodes(solution_nb):
        try:
            exec(compile(ast.Module([node], []), "<solution>", "exec"), ns)  # noqa: S102 (the course's own)
        except Exception:
            continue
    return ns


def references(solution_nb: dict[str, Any], probes: dict[str, Probe], seed: int) -> tuple[dict[str, Any], dict]:
    """The solution's results on the probes' inputs, and its objects' fingerprints."""
    givens: dict[str, Any] = {}
    for p in probes.values():
        givens.update(p.given)
    ns = solution_namespace(solution_nb, givens)
    harness: dict[str, Any] = {}
    exec(compile(KERNEL_SOURCE, "<grader-probe>", "exec"), harness)  # the very text the kernel ran
    out = harness["evaluate"](ns, _spec(probes), seed, False)["probes"]
    prints = {n: pk.fingerprint(ns[n]) for p in probes.values() for n in p.obj if n in ns}
    return out, prints


def source_fingerprint(source: str, name: str) -> str | None:
    """The fingerprint of ``name`` as defined in ``source`` (a learner's exercise cell), compiled
    here and never run."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            code = compile(ast.Module([node], []), "<cell>", "exec")
            body = next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name)
            if isinstance(node, ast.FunctionDef):
                return pk.code_fingerprint(body)
            return pk.code_fingerprint({c.co_name: c for c in body.co_consts if isinstance(c, types.CodeType)})
    return None


# --- verdicts ----------------------------------------------------------------------------------------
def _same(a: Any, b: Any, p: Probe) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], p) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, p) for x, y in zip(a, b))
    numbers = (int, float)
    if p.compare == "close" and isinstance(a, numbers) and isinstance(b, numbers) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= p.atol + p.rtol * abs(b)
    return type(a) is type(b) and a == b or (isinstance(a, numbers) and isinstance(b, numbers)
                                               and not isinstance(a, bool) and a == b)


def _short(v: Any, n: int = 120) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= n else text[:n - 1] + "…"


def inputs_of(probes: dict[str, Probe], seed: int) -> dict[str, list[Any]]:
    """The inputs each probe drew (as probe_kernel.evaluate draws them), for the report."""
    return {name: pk.draw_inputs(probes[name].inputs, seed + i) for i, name in enumerate(sorted(probes))}


def verdict(p: Probe, mine: dict[str, Any] | None, ref: dict[str, Any] | None,
            inputs: list[Any]) -> dict[str, Any]:
    """{"decided": "grader" | "notebook", "passed": bool, "why": one line} for one check (and
    "learner": the same without the solution's value, when "why" holds one)."""
    if ref is None or "missing" in ref or any("error" in r for r in ref.get("results", [])):
        why = ref and (f"the solution's `{ref['missing']}` could not be built here" if "missing" in ref
                       else next(r["error"] for r in ref["results"] if "error" in r))
        return {"decided": "notebook", "passed": False, "why": f"the grader has no reference ({why or 'no solution'})"}
    if mine is None:
        return {"decided": "grader", "passed": False, "why": "the kernel did not answer the grader's probe"}
    if "missing" in mine:
        return {"decided": "grader", "passed": False,
                "why": f"`{mine['missing']}` is not defined after the notebook ran"}
    for i, (got, want) in enumerate(zip(mine.get("results", []), ref["results"])):
        if "error" in got:
            return {"decided": "grader", "passed": False,
                    "why": f"raised {got['error']} on the grader's input {_short(inputs[i], 80)}"}
        if not _same(got.get("value"), want["value"], p):
            where = f"on the grader's input {_short(inputs[i], 80)}: got" if inputs[i] else "the value is"
            return {"decided": "grader", "passed": False,
                    "why": f"{where} {_short(got.get('value'))}, the solution gives {_short(want['value'])}",
                    "learner": f"{where} {_short(got.get('value'))}"}   # for feedback.md: no reference value
    if len(mine.get("results", [])) != len(ref["results"]):
        return {"decided": "grader", "passed": False, "why": "the kernel answered for fewer inputs than asked"}
    said = f"the grader's {len(ref['results'])} fresh input(s) agree" if any(inputs) else "the solution's value"
    return {"decided": "grader", "passed": True, "why": said}
