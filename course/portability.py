"""Checked notebook outputs must read the same on every CPU: store them under one setting, test under others.

    make store-outputs            execute solutions/*.ipynb in place under the STORE setting
    make check-portability        execute them under every setting below, diff the checked outputs
    python course/portability.py env test     print the setting `make test` runs the notebooks under

Float kernels differ between CPUs (AVX-512, AVX2, NEON, another BLAS) and between thread counts,
so a float's last digits depend on the machine. ``make test`` executes the notebooks under the
``test`` setting, which differs from the ``store`` one the outputs were saved under: a checked
output that depends on the kernels fails on the author's own machine, not only on a newcomer's.
``check`` runs every setting and reports each checked cell whose output differs from the stored
one (docs/AUTHORING.md, "Checked outputs hold on every CPU").
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path
from typing import Any

from minigpt.paths import ROOT  # noqa: E402
MARK = "NBVAL_CHECK_OUTPUT"

# Each setting: the environment the kernel starts with. ATEN_CPU_CAPABILITY picks torch's own
# vectorised kernels; MKL/oneDNN have their own switches; MINIGPT_THREADS overrides set_seed().
SETTINGS: dict[str, dict[str, str]] = {
    "store": {},  # native kernels, set_seed()'s 2 threads: what the committed outputs come from
    "test": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "ONEDNN_MAX_CPU_ISA": "SSE41", "MINIGPT_THREADS": "1"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "MINIGPT_THREADS": "2"},
    "native-1-thread": {"MINIGPT_THREADS": "1"},
}
# Variables a setting may set: cleared first, so the caller's environment cannot leak into one.
_KNOBS = sorted({k for s in SETTINGS.values() for k in s})


def checked_outputs(nb: Any) -> dict[int, str]:
    """Text of every checked code cell (index → stream text + text/plain + error), as nbval sees it."""
    out: dict[int, str] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or MARK not in cell.source:
            continue
        text = ""
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                text += f"ERROR {o['ename']}: {o['evalue']}\n"
            elif "text" in o:
                text += o["text"]
            elif "text/plain" in o.get("data", {}):
                text += o["data"]["text/plain"]
        out[i] = text
    return out


def run(path: Path, *, kernel: str = "python3", allow_errors: bool = False, timeout: int = 600) -> tuple[Any, float]:
    """Run ``path`` top to bottom in a fresh kernel from its own folder; return (notebook, seconds).
    The default kernel is the current interpreter's: the course's environment, whatever the kernelspec says."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # see course/nbrun.py
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel, timeout=timeout, allow_errors=allow_errors, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def execute(path: Path, setting: str, timeout: int = 600) -> tuple[Any, float]:
    """Run ``path`` top to bottom in a fresh kernel under ``setting``; return (notebook, seconds)."""
    saved = {k: os.environ.get(k) for k in _KNOBS}
    for k in _KNOBS:
        os.environ.pop(k, None)
    os.environ.update(SETTINGS[setting])
    try:
        return run(path, timeout=timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def store(paths: list[Path]) -> int:
    """Execute each notebook under the ``store`` setting and write it back with its outputs."""
    import nbformat

    for p in paths:
        nb, secs = execute(p, "store")
        nb.metadata.pop("widgets", None)
        for cell in nb.cells:  # timestamps would make every store a diff of every cell
            cell.metadata.pop("execution", None)
        nbformat.write(nb, p)
        print(f"stored {p.relative_to(ROOT)} ({secs:.0f} s)", flush=True)
    return 0


def check(paths: list[Path], settings: list[str]) -> int:
    """Execute each notebook under each setting; print every checked cell that differs from the stored output."""
    import nbformat

    bad = 0
    for p in paths:
        stored = checked_outputs(nbformat.read(p, as_version=4))
        for setting in settings:
            nb, secs = execute(p, setting)
            got = checked_outputs(nb)
            diffs = [i for i in stored if got.get(i) != stored[i]]
            print(f"{p.name} under {setting}: {len(stored) - len(diffs)}/{len(stored)} checked cells "
                  f"match the stored outputs ({secs:.0f} s)", flush=True)
            for i in diffs:
                bad += 1
                for line in difflib.unified_diff(stored[i].splitlines(), got.get(i, "").splitlines(),
                                                 f"cell {i} stored", f"cell {i} {setting}", lineterm="", n=0):
                    print("    " + line)
    print("portable: every checked output is the same under every setting" if not bad else
          f"NOT portable: {bad} checked cell(s) differ; print a verdict or a bound instead of the digits")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("store", help="execute notebooks in place under the store setting")
    s.add_argument("notebooks", nargs="*", type=Path)
    c = sub.add_parser("check", help="diff checked outputs under each setting against the stored ones")
    c.add_argument("notebooks", nargs="*", type=Path)
    c.add_argument("--settings", default=",".join(k for k in SETTINGS if k != "store"),
                   help=f"comma-separated, from: {', '.join(SETTINGS)}")
    e = sub.add_parser("env", help="print a setting as NAME=value words (for env(1))")
    e.add_argument("setting", choices=list(SETTINGS))
    a = p.parse_args(argv)
    if a.cmd == "env":
        print(" ".join(f"{k}={v}" for k, v in SETTINGS[a.setting].items()))
        return 0
    paths = [q.resolve() for q in a.notebooks] or sorted((ROOT / "solutions").glob("*.ipynb"))
    if a.cmd == "store":
        return store(paths)
    settings = [x.strip() for x in a.settings.split(",") if x.strip()]
    unknown = [x for x in settings if x not in SETTINGS]
    if unknown:
        p.error(f"unknown setting {unknown[0]!r}: choose from {', '.join(SETTINGS)}")
    return check(paths, settings)


if __name__ == "__main__":
    sys.exit(main())
