"""The rooms of the house (docs/ARCHITECTURE.md): the ML package never imports the course machinery,
nothing imports in a cycle, no module grows past 500 lines, and no block of code is copied."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.paths import ROOT

PACKAGES = ("minigpt", "course")
# The only modules of the ML core allowed to import the course: aliases that keep the import paths of
# learners' existing copies working (`from minigpt import checks`, `from minigpt.learner import ...`).
ALIASES = {"minigpt.checks": "course.checks", "minigpt.learner": "course.learner", "minigpt.puzzle": "course.puzzle"}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the two packages that ``name`` imports anywhere in its code (lazy imports too)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:   # `import minigpt.memory.zoo.build`-like tails: the module itself
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_the_ml_core_never_imports_the_course():
    bad = sorted(f"{m} imports {t}" for m, ts in graph().items() if m.startswith("minigpt")
                 for t in ts if t.startswith("course") and ALIASES.get(m) != t)
    assert not bad, "minigpt/ must not depend on course/ (docs/ARCHITECTURE.md): " + "; ".join(bad)


def test_aliases_are_the_course_modules_themselves():
    import importlib
    for old, new in ALIASES.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def test_no_import_cycle():
    g = graph()
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_graph_sees_known_edges():
    """The parser must find real imports, or the two tests above would pass on an empty graph."""
    g = graph()
    assert "minigpt.model" in g["minigpt.train"]
    assert "minigpt.memory.report" in g["minigpt.memory.measure"]
    assert "minigpt.memory.buckets" in g["minigpt.memory.report"]
    assert "course.checks" in g["course.learner"]        # a lazy `from . import checks`
    assert "course.puzzle" in g["course.docs.specs"]
    assert g["minigpt.checks"] == {"course.checks"}


@pytest.mark.parametrize("path", sorted(p for pkg in (*PACKAGES, "scripts") for p in (ROOT / pkg).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_500_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept (docs/ARCHITECTURE.md)"


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", *PACKAGES, "scripts",
                        "tests", "tests_ui", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_copied_block_of_six_lines():
    """pylint's similarity checker, run as its own command (symilar): pylint's ignore-imports mode takes
    over a minute on this tree, symilar a fraction of a second; import lines are not excluded, so a
    copied import block counts as a copy too."""
    files = [str(p.relative_to(ROOT)) for pkg in (*PACKAGES, "scripts") for p in sorted((ROOT / pkg).rglob("*.py"))]
    r = subprocess.run([str(Path(sys.executable).with_name("symilar")), "--duplicates=6", "--ignore-docstrings",
                        "--ignore-comments", *files], cwd=ROOT, capture_output=True, text=True)
    total = re.search(r"TOTAL lines=(\d+) duplicates=(\d+)", r.stdout)
    assert total and int(total[1]) > 5000, r.stdout + r.stderr      # it read the tree
    assert total[2] == "0", "copied blocks (factor them into one function):\n" + r.stdout
