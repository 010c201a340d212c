"""Where the repository's files are: one place, so no module counts parent folders on its own."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent   # the repository (minigpt/ is one level down)
CHECKPOINTS = ROOT / "checkpoints"
BUILD = ROOT / "build"                           # ignored by git: scratch output (plots, GPU tables, UI)
