"""Learners' existing copies of the labs keep working after the package moved (docs/ARCHITECTURE.md).

``make start`` never overwrites a learner's copy, so the copies shipped in learners/*/labs/ still
import ``from minigpt import checks``, ``from minigpt.learner import lab_header`` and
``from minigpt import puzzle``. This test runs every import statement of every such copy (top-level
and inside functions) in a fresh interpreter; tests/course/test_grading.py executes two of them whole.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

from minigpt.paths import ROOT

COPIES = sorted(ROOT.glob("learners/*/labs/*.ipynb"))


def import_lines(path) -> list[str]:
    lines = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(l for l in "".join(cell["source"]).splitlines(True) if not l.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(textwrap.dedent(src))
        except SyntaxError:  # a learner's unfinished cell: its imports are still read line by line below
            tree = ast.Module(body=[], type_ignores=[])
        lines += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return lines


def test_there_are_shipped_copies():
    assert COPIES, "learners/*/labs/ holds the shipped learner's copies"


def test_every_import_of_every_learners_copy_still_works():
    """One interpreter for all copies (importing torch once); each copy's imports run on their own."""
    plan = {str(p.relative_to(ROOT)): import_lines(p) for p in COPIES}
    assert all(any("minigpt" in ln for ln in lines) for lines in plan.values())
    script = ("import json, sys\nbad = {}\n"
              "for name, lines in json.loads(sys.argv[1]).items():\n"
              "    try:\n        exec('\\n'.join(lines), {})\n"
              "    except Exception as exc:\n        bad[name] = f'{type(exc).__name__}: {exc}'\n"
              "print(json.dumps(bad))")
    r = subprocess.run([sys.executable, "-c", script, json.dumps(plan)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, f"imports of learners' copies that no longer work: {bad}"
