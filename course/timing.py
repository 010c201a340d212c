"""Time every solution notebook and its generated lab, and write the table into README.md.

    make time-labs            (= python course/timing.py)

Each notebook runs top to bottom in a fresh kernel from its own folder, errors allowed (an
unsolved lab raises in its exercise cells), and nothing is written back. The wall-clock times,
each notebook run ``--runs`` times (default 2) and reported as the range of those runs,
the machine they were measured on and the date replace the block between
``<!-- gen:lab-runtimes -->`` and ``<!-- /gen:lab-runtimes -->`` in README.md. Times depend on
the machine and on what else it is doing: run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
from pathlib import Path

from course.portability import run

from minigpt.paths import ROOT  # noqa: E402
START, END = "<!-- gen:lab-runtimes -->", "<!-- /gen:lab-runtimes -->"


def run_seconds(path: Path, kernel: str, timeout: int) -> float:
    """Wall-clock seconds to execute ``path`` in a fresh kernel (errors allowed, not saved)."""
    return run(path, kernel=kernel, allow_errors=True, timeout=timeout)[1]


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"on {torch.get_num_threads()} threads, load average {load:.1f} at the start")


def span(times: list[float]) -> str:
    """A range of wall-clock seconds, "35–41 s" (one number when every run rounds alike)."""
    lo, hi = round(min(times)), round(max(times))
    return f"{lo} s" if lo == hi else f"{lo}–{hi} s"


def table(rows: list[tuple[str, list[float], list[float]]], where: str, runs: int) -> str:
    lines = [f"Measured with `make time-labs` on {dt.date.today().isoformat()} ({where}); wall-clock "
             f"seconds for a fresh kernel running the notebook top to bottom, the range of {runs} runs.", "",
             "| Lab | solution | your lab, unsolved |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {span(sol)} | {span(lab)} |" for name, sol, lab in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="python3")
    p.add_argument("--timeout", type=int, default=600, help="per-cell limit in seconds")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--runs", type=int, default=2, help="runs of each notebook (default 2)")
    args = p.parse_args(argv)
    where = machine()
    rows = []
    for sol in sorted((ROOT / "solutions").glob("[0-9][0-9]-*.ipynb")):
        lab = ROOT / "labs" / sol.name
        sol_t = [run_seconds(sol, args.kernel, args.timeout) for _ in range(args.runs)]
        lab_t = [run_seconds(lab, args.kernel, args.timeout) for _ in range(args.runs)]
        rows.append((sol.stem, sol_t, lab_t))
        print(f"{sol.stem}: solution {span(sol_t)}, lab {span(lab_t)}", flush=True)
    text = args.readme.read_text(encoding="utf-8")
    block = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not block.search(text):
        sys.exit(f"{args.readme} has no {START} ... {END} block; add one where the table belongs.")
    args.readme.write_text(block.sub(lambda _: f"{START}\n{table(rows, where, args.runs)}\n{END}", text), encoding="utf-8")
    print(f"wrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
