"""Run ``python -m minigpt.memory`` in-process for a test: (exit code, stdout, stderr)."""
from __future__ import annotations

from minigpt.memory.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
