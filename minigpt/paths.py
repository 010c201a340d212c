"""Where the repository's files are: one place, so no module counts parent folders on its own."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent   # the repository (minigpt/ is one level down)
CHECKPOINTS = ROOT / "checkpoints"
BUILD = ROOT / "build"                           # ignored by git: scratch output (plots, GPU tables, UI)
RESULTS = ROOT / "benchmarks" / "results"       # committed benchmark results (make benchmark-*)


def committed_results(name: str) -> dict:
    """A committed results file of benchmarks/results/ (e.g. "forum_grid.json"), parsed."""
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))
