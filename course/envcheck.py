"""`make check-env`: OK/FAIL for Python, every pinned package, and whether CUDA is present.

Uses only the standard library until torch is known to be importable, so it also runs
before anything is installed. Learners paste its output into bug reports.
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from pathlib import Path

# Not minigpt.paths: this runs with a bare python3 before torch (which minigpt imports) is installed.
ROOT = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 10)


def parse_pins(text: str, name: str = "requirements.txt") -> dict[str, str]:
    """{package: version} from the text of a requirements file of exact pins (comments allowed)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1)] = m.group(2)
        elif line:
            raise ValueError(f"{name}: '{line}' is not an exact pin (name==version).")
    return pins


def pinned(path: Path) -> dict[str, str]:
    """{package: version} from a requirements file of exact pins (comments allowed)."""
    return parse_pins(path.read_text(), path.name)


def check() -> int:
    failures = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"[{'OK' if ok else 'FAIL'}] {what:<16} {detail}")

    py = sys.version_info
    line(py[:2] >= MIN_PYTHON, "python", f"{platform.python_version()} (need >= {'.'.join(map(str, MIN_PYTHON))}; "
         f"tested on 3.11) at {sys.executable}")
    for req in ("requirements.txt", "requirements-data.txt"):
        for name, want in pinned(ROOT / req).items():
            try:
                have = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                line(False, name, f"not installed (want {want}; run `make install`)")
                continue
            # a local build tag such as 2.13.0+cpu satisfies the pin 2.13.0
            line(have.split("+")[0] == want, name, f"{have}" + ("" if have.split("+")[0] == want else f" (want {want})"))
    try:
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            print(f"[OK] {'cuda':<16} {props.name}, {props.total_memory / 2**30:.1f} GiB "
                  f"(CUDA {torch.version.cuda}); labs measure on the GPU")
        else:
            build = "CUDA build" if torch.version.cuda else "CPU build"
            print(f"[OK] {'cuda':<16} not present ({build} of torch); labs use the CPU path")
    except Exception as e:  # a broken torch install is exactly what this report is for
        line(False, "torch import", f"{type(e).__name__}: {e}")
    print(f"{platform.system()} {platform.machine()}; {failures} problem(s) found.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(check())
