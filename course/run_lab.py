"""Run a learner's copy of a lab headless, errors allowed, and print its checks.

    make run-lab LAB=03 LEARNER=ana     ->  python -m course.run_lab 03 ana

A stub that still raises stops ``jupyter nbconvert --execute`` at the first exercise unless
``--allow-errors`` is given; this runs every cell anyway (in a fresh kernel, the grader's
worker), prints one line per check and the summary, and writes nothing: the learner's notebook
keeps its own outputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .learner import ROOT, validate_name
from .sandbox import detect_isolation, execute_notebook

MARK = {"passed": "✔", "wrong": "✘", "not_attempted": "○"}


def run_lab(lab: str, name: str, root: Path = ROOT, cell_timeout: float = 300) -> int:
    validate_name(name)
    if not (len(lab) == 2 and lab.isdigit()):
        print(f"LAB must be a two-digit lab number such as 03, got {lab!r}.")
        return 2
    home = root / "learners" / name
    found = sorted((home / "labs").glob(f"{lab}-*.ipynb"))
    if not found:
        print(f"learners/{name}/labs/ has no lab {lab}: run make start LEARNER={name} first.")
        return 2
    nb = found[0]
    print(f"Running learners/{name}/labs/{nb.name} in a fresh kernel (errors allowed, nothing saved)…", flush=True)
    ex = execute_notebook(nb, cell_timeout=cell_timeout, notebook_timeout=max(900.0, 3 * cell_timeout),
                          profile=str(home / "profile.md") if (home / "profile.md").is_file() else "",
                          isolation=detect_isolation(False))
    errors = [c for c in ex.cells if c.get("error")]
    for c in errors:
        print(f"  cell {c['index'] + 1} raised {c['error']['ename']}: {c['error']['evalue'][:120]}")
    recs = list(ex.checks().values())
    for r in recs:
        print(f"{MARK.get(r.get('state', ''), '✘')} {r['name']}: {r['message']}")
    states = [r.get("state", "passed" if r["passed"] else "wrong") for r in recs]
    print(f"{sum(s == 'passed' for s in states)} of {len(recs)} checks passed, {states.count('wrong')} wrong, "
          f"{states.count('not_attempted')} not done yet; the notebook {ex.status.replace('_', ' ')} "
          f"in {ex.runtime_s:.0f} s.")
    return 0 if ex.status == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course.run_lab", description=__doc__.splitlines()[0])
    p.add_argument("lab", help="two digits, e.g. 03")
    p.add_argument("learner")
    p.add_argument("--cell-timeout", type=float, default=300)
    a = p.parse_args(argv)
    try:
        return run_lab(a.lab.strip(), a.learner.strip(), cell_timeout=a.cell_timeout)
    except ValueError as exc:
        print(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
