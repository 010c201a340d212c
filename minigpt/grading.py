"""Grading: run copies of a learner's notebooks, read their checks, write grade.md and grade.json.

    make grade LEARNER=borja   ->  python -m minigpt.grading borja
    make grade-all             ->  python -m minigpt.grading --all

For each lab, a copy of ``learners/<name>/`` (profile.md and labs/) is made in a temporary
directory and the notebook runs there, in a fresh kernel started by a worker subprocess
(``python -I minigpt/nbrun.py``) with a per-cell and a per-notebook time limit. On Linux
the worker and its kernel run in a new network namespace (``unshare``) when this machine
allows it, so a notebook cannot reach the network. The kernel writes its check records to
``$MINIGPT_CHECKS_FILE`` (see minigpt.checks), which the grader reads back; a notebook that
fails in any way (syntax error, exception, endless loop, dead kernel, unreadable file) is
reported as such and grading goes on. The learner's files are never written to.

The reference values come from running each solution notebook once per grading run, with the
same machinery; the result is cached in ``.cache/grading/`` under a hash of the solution and of
the package source, so it is recomputed whenever either changes.

This module also holds the course's notebook conventions, which scripts/generate_labs.py uses.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checks import CHECKS_FILE_ENV, read_checks_file
from .learner import PROFILE_ENV, ROOT, load_profile, validate_name

# --- notebook conventions (solutions -> labs) ----------------------------------------------------
SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN", "### END HIDDEN"
ANSWER_RE = re.compile(r"\A\s*<!--\s*ANSWER:\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*-->[ \t]*\n?")
ANSWER_PROMPT = "*Write your answer here.*"
STUB_COMMENT = "# YOUR CODE HERE"
STUB_RAISE = 'raise NotImplementedError("Exercise not done yet: write your code here and delete this line.")'
NOTEBOOK_NAME_RE = re.compile(r"(\d{2})-[a-z0-9][a-z0-9-]*\.ipynb")
META_KEY = "minigpt"  # cell metadata: {"role": "exercise"} or {"role": "answer", "answer": id}


def cell_source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def answer_id(cell: dict[str, Any]) -> str | None:
    """The id of a written-answer cell (markdown starting with <!-- ANSWER: id -->), else None."""
    if cell.get("cell_type") != "markdown":
        return None
    m = ANSWER_RE.match(cell_source(cell))
    if m:
        return m.group(1)
    meta = cell.get("metadata", {}).get(META_KEY, {})
    return meta.get("answer") if meta.get("role") == "answer" else None


def answer_text(cell: dict[str, Any]) -> str:
    """A written-answer cell's text without its marker."""
    return ANSWER_RE.sub("", cell_source(cell), count=1).strip()


def cell_role(cell: dict[str, Any]) -> str | None:
    return cell.get("metadata", {}).get(META_KEY, {}).get("role")


def lab_id_of(path: Path) -> str | None:
    m = NOTEBOOK_NAME_RE.fullmatch(path.name)
    return m.group(1) if m else None


# --- isolation -----------------------------------------------------------------------------------
_NETNS_PROBE = ("import socket, sys\n"
                "names = [n for _, n in socket.if_nameindex()]\n"
                "sys.exit(0 if set(names) <= {'lo'} else 3)\n")


@dataclass
class Isolation:
    prefix: list[str]   # command prefix for the worker, e.g. ["unshare", "-rn", ...]
    network: str        # "none" or "not restricted"
    how: str            # one line for the report


_ISOLATION_CACHE: dict[bool, Isolation] = {}


def detect_isolation(network: bool = True) -> Isolation:
    """The strongest isolation this machine allows: try ``unshare`` (Linux) with a new network
    namespace (and a PID namespace, so the kernel dies with its worker); probe that the network
    really is gone. Falls back to no network isolation, and says so."""
    if not network:
        return Isolation([], "not restricted", "network isolation switched off (--no-network-isolation)")
    if network in _ISOLATION_CACHE:
        return _ISOLATION_CACHE[network]
    result = Isolation([], "not restricted", "no network isolation: this is not Linux")
    unshare = shutil.which("unshare")
    if sys.platform.startswith("linux") and not unshare:
        result = Isolation([], "not restricted", "no network isolation: the `unshare` command is missing")
    elif sys.platform.startswith("linux"):
        why = "unknown"
        for flags in (["-rn", "--fork", "--pid", "--kill-child"], ["-rn"], ["-n"]):
            try:
                proc = subprocess.run([unshare, *flags, sys.executable, "-c", _NETNS_PROBE],
                                      capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
                continue
            if proc.returncode == 0:
                pid_ns = "--pid" in flags
                result = Isolation([unshare, *flags], "none",
                                   f"no network (Linux network namespace via `unshare {' '.join(flags)}`"
                                   + ("; a PID namespace kills the kernel with its worker)" if pid_ns else ")"))
                break
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        else:
            result = Isolation([], "not restricted",
                               f"no network isolation: `unshare` is not permitted here ({why})")
    _ISOLATION_CACHE[network] = result
    return result


# --- running one notebook ------------------------------------------------------------------------
@dataclass
class Execution:
    status: str            # completed | kernel_died | notebook_timeout | killed | failed_to_start | unreadable
    message: str
    runtime_s: float
    cells: list[dict[str, Any]] = field(default_factory=list)    # per executed code cell
    records: list[dict[str, Any]] = field(default_factory=list)  # from the checks file
    isolation: str = ""

    @property
    def env(self) -> dict[str, Any] | None:
        envs = [r for r in self.records if r.get("kind") == "env"]
        return envs[-1] if envs else None

    def checks(self) -> dict[str, dict[str, Any]]:
        """The last record of each check, by name."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            if r.get("kind") == "check":
                out.pop(r["name"], None)
                out[r["name"]] = r
        return out


def _child_env(checks_file: Path, profile: str, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        CHECKS_FILE_ENV: str(checks_file),
        PROFILE_ENV: profile,                       # "" = no profile (the solution runs)
        "IPYTHONDIR": str(scratch / "ipython"),     # no learner/instructor IPython startup files
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    })
    return env


def execute_notebook(path: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None,
                     cell_timeout: float = 300, notebook_timeout: float = 900,
                     kernel_name: str = "python3", profile: str = "",
                     isolation: Isolation | None = None) -> Execution:
    """Execute the notebook at ``path`` (a copy: its outputs are not written back) in a fresh
    kernel run by a worker subprocess; every failure becomes an Execution status, never an
    exception. ``cwd`` defaults to the notebook's folder; ``profile`` sets $MINIGPT_PROFILE."""
    path = Path(path).resolve()
    cwd = Path(cwd).resolve() if cwd is not None else path.parent
    isolation = isolation if isolation is not None else detect_isolation()
    scratch = Path(tempfile.mkdtemp(prefix="minigpt-run-"))
    checks_file, status_file = scratch / "checks.jsonl", scratch / "status.json"
    cmd = [*isolation.prefix, sys.executable, "-I", str(Path(__file__).with_name("nbrun.py")), str(path),
           "--cwd", str(cwd), "--scratch", str(scratch), "--kernel", kernel_name,
           "--cell-timeout", str(cell_timeout), "--notebook-timeout", str(notebook_timeout)]
    start = time.monotonic()
    killed = False
    proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(checks_file, profile, scratch),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=notebook_timeout + 90)  # + kernel start-up and shutdown
    except subprocess.TimeoutExpired:
        killed = True
        _kill_group(proc.pid)
        output, _ = proc.communicate()
    runtime = time.monotonic() - start
    try:
        status = json.loads(status_file.read_text())
    except (OSError, json.JSONDecodeError):
        status = {}
    kernel_pid = status.get("kernel_pid")
    if killed and kernel_pid and "--pid" not in isolation.prefix:
        # the worker was killed before it could stop its kernel (which runs in its own session);
        # inside a PID namespace the kernel already died with the worker, and its pid means nothing here
        _kill_group(kernel_pid)
    records = read_checks_file(checks_file)
    shutil.rmtree(scratch, ignore_errors=True)
    if killed:
        st, msg = "killed", f"the notebook did not finish within {notebook_timeout:g} s and was stopped"
    elif not status or status.get("status") == "running":
        tail = " / ".join(output.decode(errors="replace").strip().splitlines()[-3:])
        st, msg = "failed_to_start", f"the grading worker failed (exit code {proc.returncode}): {tail}"
    else:
        st, msg = status["status"], status.get("message", "")
    return Execution(st, msg, round(runtime, 2), status.get("cells", []), records, isolation.how)


def _kill_group(pid: int) -> None:
    """Kill a process and its group (POSIX); just the process elsewhere. Never raises."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(pid, signal.SIGKILL)
            return
        except OSError:
            pass
    try:
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    except OSError:
        pass


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 60 else line[:59] + "…"
    return ""


# --- reference values (solution runs) ------------------------------------------------------------
@dataclass
class GradeOptions:
    cell_timeout: float = 300
    notebook_timeout: float = 900
    kernel_name: str = "python3"
    reference: bool = True           # run each solution once for the reference values
    network_isolation: bool = True
    cache_dir: Path | None = None    # default: <root>/.cache/grading


def _package_digest() -> str:
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def reference_run(solution: Path, opts: GradeOptions, cache_dir: Path,
                  memo: dict[str, Execution]) -> Execution:
    """The solution notebook's execution: once per grading run (``memo``), from the on-disk cache
    when neither the solution nor the package changed since, else a fresh run (cached only when
    it completed)."""
    if str(solution) in memo:
        return memo[str(solution)]
    digest = hashlib.sha256(solution.read_bytes() + _package_digest().encode()
                            + opts.kernel_name.encode()).hexdigest()[:20]
    key = f"{solution.stem}-{digest}"
    cache = cache_dir / f"reference-{key}.json"
    if cache.is_file():
        try:
            ex = Execution(**json.loads(cache.read_text()))
            memo[str(solution)] = ex
            return ex
        except (json.JSONDecodeError, TypeError):
            pass
    with tempfile.TemporaryDirectory(prefix="minigpt-ref-") as tmp:
        copy = Path(tmp) / "solutions" / solution.name
        copy.parent.mkdir()
        shutil.copy2(solution, copy)
        ex = execute_notebook(copy, cell_timeout=opts.cell_timeout, notebook_timeout=opts.notebook_timeout,
                              kernel_name=opts.kernel_name, profile="",
                              isolation=detect_isolation(opts.network_isolation))
    if ex.status == "completed":
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(asdict(ex), ensure_ascii=False))
    memo[str(solution)] = ex
    return ex


# --- grading one learner -------------------------------------------------------------------------
def _read_nb(path: Path) -> dict[str, Any] | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return nb if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else None
    except (OSError, ValueError):
        return None


def _digest_tree(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name not in ("grade.md", "grade.json"):
            out[str(f.relative_to(folder))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _hardware(ex: Execution) -> str:
    env = ex.env
    if env is None:
        return "unknown (no check or lab header ran)"
    if env.get("cuda_available") is True:
        return f"CUDA — {env.get('device', '')}"
    if env.get("cuda_available") is False:
        return "CPU — torch.cuda.is_available() was False in the kernel"
    return str(env.get("device", "unknown"))


def _compare_cells(lab_nb: dict[str, Any] | None, learner_nb: dict[str, Any]) -> dict[str, Any]:
    """Which of the lab's fixed cells (not exercises, not answers) the learner changed or removed."""
    if lab_nb is None:
        return {"changed": [], "removed": 0, "added": 0}
    lab_cells = {c.get("id"): c for c in lab_nb.get("cells", []) if c.get("id")}
    seen, changed, added = set(), [], 0
    for i, cell in enumerate(learner_nb.get("cells", [])):
        ref = lab_cells.get(cell.get("id"))
        if ref is None:
            added += 1
            continue
        seen.add(cell.get("id"))
        if cell_role(ref) in ("exercise", "answer"):
            continue
        if cell_source(cell) != cell_source(ref):
            changed.append({"cell": i + 1, "first_line": _first_line(cell_source(ref))})
    removed = sum(1 for k, c in lab_cells.items() if k not in seen and c.get("cell_type") == "code")
    return {"changed": changed, "removed": removed, "added": added}


def _answers(learner_nb: dict[str, Any] | None, solution_nb: dict[str, Any] | None) -> list[dict[str, Any]]:
    refs = {}
    for cell in (solution_nb or {}).get("cells", []):
        aid = answer_id(cell)
        if aid:
            refs[aid] = answer_text(cell)
    mine = {}
    for cell in (learner_nb or {}).get("cells", []):
        aid = answer_id(cell)
        if aid:
            mine[aid] = answer_text(cell)
    out = []
    for aid in list(refs) + [a for a in mine if a not in refs]:
        text = mine.get(aid)
        written = bool(text) and text.strip() != ANSWER_PROMPT
        out.append({"id": aid, "answer": text if written else None, "reference": refs.get(aid),
                    "note": None if written else ("the answer cell is missing" if text is None
                                                  else "no answer written")})
    return out


def _grade_lab(lab_id: str, learner_nb_path: Path | None, learner_home: Path, root: Path,
               opts: GradeOptions, memo: dict[str, Execution]) -> dict[str, Any]:
    lab_path = next(iter(sorted((root / "labs").glob(f"{lab_id}-*.ipynb"))), None)
    sol_path = next(iter(sorted((root / "solutions").glob(f"{lab_id}-*.ipynb"))), None)
    rel = lambda p: str(p.relative_to(root)) if p is not None and p.is_relative_to(root) else str(p)
    report: dict[str, Any] = {
        "lab": lab_id, "notebook": rel(learner_nb_path) if learner_nb_path else None,
        "lab_notebook": rel(lab_path) if lab_path else None,
        "solution": rel(sol_path) if sol_path else None,
        "status": "", "message": "", "runtime_s": 0.0, "hardware": "", "checks": [], "errors": [],
        "fallbacks": [], "answers": [], "cells": {}, "reference": None, "passed": 0, "total": 0}

    ref_ex = reference_run(sol_path, opts, opts.cache_dir, memo) if (opts.reference and sol_path) else None
    if ref_ex is not None:
        report["reference"] = {"status": ref_ex.status, "message": ref_ex.message,
                               "runtime_s": ref_ex.runtime_s, "hardware": _hardware(ref_ex)}
    ref_checks = ref_ex.checks() if ref_ex is not None and ref_ex.status == "completed" else {}
    solution_nb = _read_nb(sol_path) if sol_path else None
    lab_nb = _read_nb(lab_path) if lab_path else None

    def finish(checks_by_name: dict[str, dict[str, Any]]) -> dict[str, Any]:
        names = list(ref_checks) + [n for n in checks_by_name if n not in ref_checks]
        for name in names:
            mine, ref = checks_by_name.get(name), ref_checks.get(name)
            state = "not run" if mine is None else ("passed" if mine["passed"] else "failed")
            report["checks"].append({
                "name": name, "state": state,
                "message": mine["message"] if mine else "this check did not run (the notebook stopped "
                                                        "before it, or its cell was removed)",
                "got": mine.get("got") if mine else None, "expected": mine.get("expected") if mine else None,
                "values": mine.get("values", {}) if mine else {},
                "reference": None if ref is None else {"passed": ref["passed"], "got": ref.get("got"),
                                                       "values": ref.get("values", {})}})
        report["passed"] = sum(c["state"] == "passed" for c in report["checks"])
        report["total"] = len(report["checks"])
        return report

    if learner_nb_path is None:
        report.update(status="not_started", message=(
            f"not started: there is no {learner_home.name}/labs/{lab_path.name if lab_path else lab_id + '-*.ipynb'}"
            f" (make start LEARNER={learner_home.name} adds it)"))
        report["answers"] = _answers(None, solution_nb)
        return finish({})
    learner_nb = _read_nb(learner_nb_path)
    report["answers"] = _answers(learner_nb, solution_nb)
    if learner_nb is not None:
        report["cells"] = _compare_cells(lab_nb, learner_nb)

    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        home = Path(tmp) / learner_home.name
        (home / "labs").mkdir(parents=True)
        if (learner_home / "profile.md").is_file():
            shutil.copy2(learner_home / "profile.md", home / "profile.md")
        shutil.copytree(learner_home / "labs", home / "labs", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        profile = home / "profile.md"
        ex = execute_notebook(home / "labs" / learner_nb_path.name, cell_timeout=opts.cell_timeout,
                              notebook_timeout=opts.notebook_timeout, kernel_name=opts.kernel_name,
                              profile=str(profile) if profile.is_file() else "",
                              isolation=detect_isolation(opts.network_isolation))
    exercise_ids = {c.get("id") for c in (lab_nb or {}).get("cells", []) if cell_role(c) == "exercise"}
    cells = (learner_nb or {}).get("cells", [])
    for entry in ex.cells:
        if entry.get("error"):
            idx = entry["index"]
            cell = cells[idx] if idx < len(cells) else {}
            is_ex = cell_role(cell) == "exercise" or cell.get("id") in exercise_ids
            err = entry["error"]
            note = ("exercise not done yet" if is_ex and err["ename"] == "NotImplementedError"
                    else "time limit" if err["ename"] == "CellTimeout" else "")
            report["errors"].append({"cell": idx + 1, "first_line": entry.get("first_line", ""),
                                     "exercise": is_ex, "ename": err["ename"], "evalue": err["evalue"],
                                     "note": note})
    report["fallbacks"] = sorted({r["name"] for r in ex.records if r.get("kind") == "fallback"})
    report.update(status=ex.status, message=ex.message, runtime_s=ex.runtime_s,
                  hardware=_hardware(ex), isolation=ex.isolation)
    return finish(ex.checks())


def grade_learner(name: str, root: str | os.PathLike[str] = ROOT, opts: GradeOptions | None = None,
                  memo: dict[str, Execution] | None = None, write: bool = True) -> dict[str, Any]:
    """Grade every lab of one learner; write learners/<name>/grade.md and grade.json; return the
    report. Raises ValueError (one sentence) for a bad name or a learner who does not exist."""
    validate_name(name)
    root = Path(root).resolve()
    opts = opts or GradeOptions()
    if opts.cache_dir is None:
        opts.cache_dir = root / ".cache" / "grading"
    memo = {} if memo is None else memo
    home = root / "learners" / name
    if not home.is_dir():
        raise ValueError(f"There is no learner {name!r}: run make start LEARNER={name} first.")
    t0 = time.monotonic()
    before = _digest_tree(home)
    try:
        p = load_profile(home / "profile.md")
        profile: dict[str, Any] = {k: v for k, v in asdict(p).items() if k not in ("notes", "path")}
    except (ValueError, OSError) as exc:
        profile = {"problem": str(exc)}
    course_labs = {lab_id_of(p): p for p in sorted((root / "labs").glob("*.ipynb")) if lab_id_of(p)}
    found = sorted((home / "labs").glob("*.ipynb")) if (home / "labs").is_dir() else []
    # the learner's copy of a lab is the file with the lab's name; failing that, one numbered like it
    mine = {lid: home / "labs" / p.name for lid, p in course_labs.items() if (home / "labs" / p.name).is_file()}
    for nb in found:
        lid = lab_id_of(nb)
        if lid is not None and lid not in mine:
            mine[lid] = nb
    ignored = [nb.name for nb in found if nb not in mine.values()]
    labs = []
    for lid in sorted(set(course_labs) | set(mine)):
        labs.append(_grade_lab(lid, mine.get(lid), home, root, opts, memo))
    after = _digest_tree(home)
    isolation = detect_isolation(opts.network_isolation)
    report = {
        "learner": name, "profile": profile,
        "graded_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {"kernel": opts.kernel_name, "cell_timeout_s": opts.cell_timeout,
                     "notebook_timeout_s": opts.notebook_timeout, "reference_runs": opts.reference},
        "isolation": {"network": isolation.network, "how": isolation.how},
        "nothing_to_grade": not labs, "ignored_notebooks": ignored, "labs": labs,
        "passed": sum(l["passed"] for l in labs), "total": sum(l["total"] for l in labs),
        "learner_files_unchanged": before == after,
        "runtime_s": round(time.monotonic() - t0, 2)}
    if write:
        _atomic_write(home / "grade.json", json.dumps(report, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        _atomic_write(home / "grade.md", render_markdown(report))
    return report


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- the report ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def _fmt_values(got: Any, values: dict[str, Any] | None) -> str:
    parts = [] if got is None else [_fmt(got)]
    parts += [f"{k}={_fmt(v)}" for k, v in (values or {}).items() if k != "error"]
    return "; ".join(parts) or "—"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_STATUS_WORDS = {"completed": "ran to the end", "kernel_died": "KERNEL DIED",
                 "notebook_timeout": "TIME LIMIT", "killed": "KILLED (time limit)",
                 "failed_to_start": "DID NOT START", "unreadable": "UNREADABLE FILE",
                 "not_started": "not started"}


def render_markdown(report: dict[str, Any]) -> str:
    name = report["learner"]
    out = [f"# Grade — {name}", ""]
    prof = report["profile"]
    if "problem" in prof:
        out.append(f"Profile: not read ({prof['problem']})")
    else:
        gpu = f", {prof['gpu_memory_gib']:g} GiB GPU" if prof.get("gpu_memory_gib") else ""
        out.append(f"Profile: language {prof['language']}, hardware {prof['hardware']}{gpu}, phase {prof['phase']}.")
    s = report["settings"]
    out += [f"Graded {report['graded_at']} in {report['runtime_s']:.1f} s; kernel `{s['kernel']}`, "
            f"time limits {s['cell_timeout_s']:g} s per cell and {s['notebook_timeout_s']:g} s per notebook.",
            f"Isolation of each notebook run: a fresh kernel in a subprocess, working in a temporary copy "
            f"of learners/{name}/; {report['isolation']['how']}.",
            f"Learner's files unchanged by grading: {'yes' if report['learner_files_unchanged'] else 'NO'}.", ""]
    if report["nothing_to_grade"]:
        out += [f"**Nothing to grade:** there are no labs in labs/ and no notebooks in learners/{name}/labs/ "
                f"yet. Run `make start LEARNER={name}` once the labs exist.", ""]
        return "\n".join(out)
    out += [f"**Checks passed: {report['passed']} of {report['total']}.** Written answers are not "
            "auto-graded: they are listed under each lab beside the reference answer.", "",
            "| Lab | Checks passed | Run | Runtime | Hardware path |", "|---|---|---|---|---|"]
    for lab in report["labs"]:
        run = _STATUS_WORDS.get(lab["status"], lab["status"])
        if lab["errors"]:
            run += f", {len(lab['errors'])} cell error{'s' if len(lab['errors']) > 1 else ''}"
        out.append(f"| {lab['lab']} | {lab['passed']}/{lab['total']} | {run} "
                   f"| {lab['runtime_s']:.1f} s | {_cell(lab['hardware'] or '—')} |")
    if report["ignored_notebooks"]:
        out += ["", f"Not graded (not named like a lab, or a second copy): {', '.join(report['ignored_notebooks'])}."]
    out += ["", "What is compared: **yours** is what the check recorded in your notebook's run; "
            "**expected** is what that check compared it with in the same run (the package's reference "
            "implementation on the same inputs, or a constant in the check cell); **solution run** is the "
            "same check's record when the solution notebook ran in this grading (cached by content hash).", ""]
    for lab in report["labs"]:
        words = _STATUS_WORDS.get(lab["status"], lab["status"])
        out += [f"## Lab {lab['lab']} — {lab['notebook'] or lab['lab_notebook'] or ''}", "",
                f"Run: {words}" + ("" if lab["message"] == words else f" — {lab['message']}") + "."]
        ref = lab["reference"]
        if ref is None:
            out.append("Solution run: none (no solution notebook, or reference runs switched off).")
        elif ref["status"] != "completed":
            out.append(f"Solution run: **{ref['status']}** — {ref['message']}; the reference column is empty "
                       f"and the list of checks may be incomplete.")
        else:
            out.append(f"Solution run: {ref['runtime_s']:.1f} s, {ref['hardware']}.")
        if lab["checks"]:
            out += ["", "| Check | Result | Message | Yours | Expected | Solution run |", "|---|---|---|---|---|---|"]
            for c in lab["checks"]:
                mark = {"passed": "✔ pass", "failed": "✘ fail", "not run": "✘ not run"}[c["state"]]
                r = c["reference"]
                ref_txt = "—" if r is None else (("" if r["passed"] else "(failed in the solution!) ")
                                                 + _fmt_values(r["got"], r["values"]))
                out.append(f"| {c['name']} | {mark} | {_cell(c['message'])} | {_cell(_fmt_values(c['got'], c['values']))} "
                           f"| {_cell(_fmt(c['expected']))} | {_cell(ref_txt)} |")
        elif lab["status"] != "not_started":
            out += ["", "No checks ran."]
        if lab["errors"]:
            out += ["", "Cells that raised an error:"]
            for e in lab["errors"]:
                kind = " (exercise cell)" if e["exercise"] else ""
                note = f" — {e['note']}" if e["note"] else ""
                out.append(f"- cell {e['cell']}{kind} `{_cell(e['first_line'])}`: {e['ename']}: {_cell(e['evalue'])}{note}")
        if lab["fallbacks"]:
            out += ["", f"Fell back to the reference implementation for: {', '.join(lab['fallbacks'])}."]
        cells = lab.get("cells") or {}
        if cells.get("changed"):
            out += ["", "Cells of the lab the learner changed (outside exercises and answers): "
                    + "; ".join(f"cell {c['cell']} `{_cell(c['first_line'])}`" for c in cells["changed"]) + "."]
        if cells.get("removed"):
            out += ["", f"Code cells of the lab the learner deleted: {cells['removed']}."]
        for a in lab["answers"]:
            out += ["", f"### Written answer `{a['id']}` (not auto-graded)", "", "Learner:", ""]
            out += _quote(a["answer"] if a["answer"] else f"*({a['note']})*")
            out += ["", "Reference:", ""]
            out += _quote(a["reference"] or "*(no reference answer in the solution)*")
        out.append("")
    return "\n".join(out)


def _quote(text: str) -> list[str]:
    return ["> " + line if line.strip() else ">" for line in text.strip().splitlines()]


# --- every learner -------------------------------------------------------------------------------
def learner_names(root: str | os.PathLike[str] = ROOT) -> list[str]:
    """Folders under learners/ that name a learner (TEMPLATE and invalid names are skipped)."""
    folder = Path(root) / "learners"
    from .learner import NAME_RE
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)) \
        if folder.is_dir() else []


def grade_all(root: str | os.PathLike[str] = ROOT, opts: GradeOptions | None = None,
              write: bool = True) -> list[dict[str, Any]]:
    memo: dict[str, Execution] = {}
    return [grade_learner(n, root, opts, memo, write) for n in learner_names(root)]


def summary_table(reports: list[dict[str, Any]]) -> str:
    rows = [("Learner", "Labs", "Checks passed", "Problems", "Time")]
    for r in reports:
        problems = [f"{l['lab']}: {_STATUS_WORDS.get(l['status'], l['status'])}" for l in r["labs"]
                    if l["status"] != "completed"]
        rows.append((r["learner"], str(len(r["labs"])), f"{r['passed']}/{r['total']}",
                     "nothing to grade" if r["nothing_to_grade"] else (", ".join(problems) or "—"),
                     f"{r['runtime_s']:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m minigpt.grading",
                                description="Grade learners' labs (make grade LEARNER=<name>, make grade-all).")
    p.add_argument("learner", nargs="?", default=None)
    p.add_argument("--all", action="store_true", help="grade every learner and print a summary table")
    p.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell (default 300)")
    p.add_argument("--notebook-timeout", type=float, default=900, help="seconds per notebook (default 900)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    p.add_argument("--no-reference", action="store_true", help="do not run the solution notebooks")
    p.add_argument("--no-network-isolation", action="store_true")
    p.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this repository)")
    a = p.parse_args(argv)
    opts = GradeOptions(a.cell_timeout, a.notebook_timeout, a.kernel, not a.no_reference,
                        not a.no_network_isolation)
    t0 = time.monotonic()
    try:
        if a.all:
            reports = grade_all(a.root, opts)
            print(summary_table(reports))
            for r in reports:
                print(f"wrote learners/{r['learner']}/grade.md and grade.json")
        else:
            if not (a.learner or "").strip():
                print("Say whom to grade: make grade LEARNER=<name> (or make grade-all).")
                return 2
            r = grade_learner(a.learner.strip(), a.root, opts)
            print(summary_table([r]))
            print(f"wrote learners/{r['learner']}/grade.md and grade.json")
    except ValueError as exc:
        print(exc)
        return 2
    print(f"grading took {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
