"""The file-system part of the sandbox a graded notebook runs in (Linux): what course/jail.py is
asked to hide, make read-only and limit, whether this machine lets it, and the line grade.md
prints about it. The network and PID namespaces are course.sandbox.detect_isolation's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .pids_limit import describe_limit

JAIL = Path(__file__).with_name("jail.py")
# unshare flags of a confined run: user, network, PID (with its own /proc) and mount namespaces
JAIL_FLAGS = ["-rn", "--fork", "--pid", "--kill-child", "--mount", "--mount-proc"]
HIDDEN = ("solutions", "learners", ".cache", ".git")   # what a notebook never needs to see
FILE_SIZE_LIMIT = 2 * 2**30                           # bytes of one file it may write
# the system folders a run sees (read-only) besides Python, the venv and the course; nothing else exists
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev", "/sys")

_PROBE = ("import os, sys\n"
          "hidden, probe = sys.argv[1], sys.argv[2]\n"
          "ok = os.listdir(hidden) == [] and len(os.listdir('/proc')) < 100\n"
          "try:\n    open(probe, 'w')\n    ok = False\nexcept OSError:\n    pass\n"
          "sys.exit(0 if ok else 3)\n")


def _cuda_present() -> bool:
    # CUDA reserves far more address space than it uses, so RLIMIT_AS would break it
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0"))


def limits(notebook_timeout: float) -> dict[str, int]:
    """The rlimits of a confined run: file size, CPU seconds per process (a backstop behind the
    wall-clock limits: every core busy for the whole notebook time), and, without a GPU, address
    space at three quarters of the machine's memory."""
    out = {"RLIMIT_FSIZE": FILE_SIZE_LIMIT, "RLIMIT_CPU": int(notebook_timeout * (os.cpu_count() or 1)) + 60}
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if ram and not _cuda_present():
        out["RLIMIT_AS"] = ram * 3 // 4
    return out


def jail_spec(roots: list[Path], keep: list[Path], notebook_timeout: float) -> dict[str, Any]:
    """What jail.py does for one run: every mount read-only, HIDDEN covered in each root (the
    course being graded, the repository the package is imported from, the one the venv sits
    in), /run hidden (host sockets), ``keep`` (the notebook's copy, the scratch) writable."""
    bases = list(dict.fromkeys(Path(r).resolve() for r in roots))
    home = Path.home()
    return {"readonly": ["/", *map(str, bases), sys.prefix, str(home)], "readonly_mounts": True,
            "allow": [*SYSTEM, sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent), *map(str, bases)],
            "hide": [str(b / h) for b in bases for h in HIDDEN] + ["/run"],
            "keep": [str(Path(k).resolve()) for k in keep], "limits": limits(notebook_timeout)}


def jail_command(spec: dict[str, Any]) -> list[str]:
    """What goes between the unshare flags and the worker's command line."""
    return [sys.executable, "-I", str(JAIL), json.dumps(spec), "--"]


def probe_jail(unshare: str) -> str:
    """"" when a confined run works here (a hidden folder is empty, the file system is read-only,
    /proc is the PID namespace's own), else why not, in a few words."""
    with tempfile.TemporaryDirectory(prefix="minigpt-jail-probe-") as tmp:
        hidden = Path(tmp) / "solutions"
        hidden.mkdir()
        (hidden / "secret").write_text("x")
        outside = Path.home() / f".minigpt-jail-probe-{os.getpid()}"
        spec = {"readonly": ["/", str(Path.home())], "readonly_mounts": True, "hide": [str(hidden)], "keep": [tmp],
                "allow": [*SYSTEM, sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent)],
                "limits": {"RLIMIT_FSIZE": FILE_SIZE_LIMIT}}
        try:
            proc = subprocess.run([unshare, *JAIL_FLAGS, *jail_command(spec), sys.executable, "-I", "-c", _PROBE,
                                   str(hidden), str(outside)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        outside.unlink(missing_ok=True)
        if proc.returncode == 0:
            return ""
        return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]


def describe(spec: dict[str, Any]) -> str:
    """One line for grade.md: what the confined run enforced, and what it did not."""
    lim = spec["limits"]
    parts = [f"file size {lim['RLIMIT_FSIZE'] / 2**30:g} GiB", f"CPU {lim['RLIMIT_CPU']} s per process"]
    parts.append(f"address space {lim['RLIMIT_AS'] / 2**30:.0f} GiB" if "RLIMIT_AS" in lim
                 else "memory not limited (a CUDA GPU is present)")
    processes = describe_limit()
    limited = processes.startswith("at most")
    if limited:
        parts.append(processes)
    unlimited = [] if limited else ["the number of processes"]
    return ("file system read-only except a private /tmp and /dev/shm holding the notebook's copy; "
            "nothing visible but the system folders, Python, the venv and the course, "
            f"{', '.join(h + '/' for h in HIDDEN)} of the course hidden (no home folders, /var, /run, "
            "no host Unix sockets); a private /proc; "
            f"limits: {', '.join(parts)}" + (f"; not limited: {', '.join(unlimited)}" if unlimited else ""))
