"""Grading: run copies of a learner's notebooks, read their checks, write grade.md and grade.json.

    make grade LEARNER=borja   ->  python -m course.grading borja
    make grade-all             ->  python -m course.grading --all

For each lab, a copy of ``learners/<name>/`` (profile.md and labs/) is made in a temporary
directory and the notebook runs there, in a fresh kernel started by a worker subprocess
(``python -I course/nbrun.py``) with a per-cell and a per-notebook time limit. On Linux
the worker and its kernel run in new user, network, PID and mount namespaces (``unshare``) when
this machine allows it, so a notebook cannot reach the network, leave a process behind, see the
solutions or other learners, or write outside its copy (course/jail.py, course/confinement.py);
the report says which of these were enforced. The kernel writes its check records to
``$MINIGPT_CHECKS_FILE`` (see course.checks), which the grader reads back; a notebook that
fails in any way (syntax error, exception, endless loop, dead kernel, unreadable file) is
reported as such and grading goes on. The learner's files are never written to.

The marks come from the grader, not from the notebook: once a notebook's cells have run, the
same kernel evaluates the learner's exercise objects on inputs drawn from a seed chosen now, and
the grader compares them with the solution's code run in this process (course/probes.py,
course/marks.py); a check passes only when the notebook's check and the grader agree, and
tampering (a replaced ``checks.check``, forged records, a package object as an answer) is flagged.

The solution-run column comes from running each solution notebook once per grading run, with the
same machinery; the result is cached in ``.cache/grading/`` under a hash of the solution and of
the course's and the package's source, so it is recomputed whenever either changes, and verified
when read. Reports, the cache, the locks and the repository-tree digest: course/grade_files.py.

This module also holds the course's notebook conventions, which course/labs.py uses.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .grade_files import GRADER_FILES  # noqa: F401  (re-exported: what grading writes, for the tests)
from .grade_files import (AlreadyGrading, file_lock, learner_lock, read_cached, shorten, source_digest,
                          tree_changes, tree_digest, write_cached, write_private)
from . import marks as mk
from .grade_report import MARKS, gradebook_csv, render_feedback, render_markdown, summary_table
from .notebooks import (ANSWER_PROMPT, answer_id, answer_text, cell_role, cell_source, exercise_cells_of_checks,
                        lab_id_of)
from .nbrun import _first_line
from .confinement import describe as describe_jail
from .confinement import jail_spec
from .sandbox import Execution, detect_isolation, execute_notebook
from .learner import ROOT, load_profile, validate_name


# --- isolation -----------------------------------------------------------------------------------




# --- running one notebook ------------------------------------------------------------------------


# --- reference values (solution runs) ------------------------------------------------------------
@dataclass
class GradeOptions:
    cell_timeout: float = 300
    notebook_timeout: float = 900
    kernel_name: str = "python3"
    reference: bool = True           # run each solution once for the reference values
    network_isolation: bool = True
    sandbox: bool = True             # confine each run's file system (Linux; course/jail.py)
    cache_dir: Path | None = None    # default: <root>/.cache/grading
    progress: bool = True            # a progress bar per learner on stderr (tqdm)


STATES = tuple(MARKS)   # passed, wrong, not attempted, did not run (see _state_of)


def _confined_roots(root: Path) -> list[Path]:
    """The folders whose solutions/, learners/, .cache/ and .git a sandboxed run must not see:
    the course being graded, the repository the package is imported from, the venv's."""
    import minigpt
    return [root, Path(minigpt.__file__).resolve().parent.parent, Path(sys.prefix).resolve().parent]


def _package_digest() -> str:
    """The grader's and the package's source: a change to either can change a reference value."""
    import minigpt
    return source_digest(Path(__file__).resolve().parent, Path(minigpt.__file__).resolve().parent)


def reference_run(solution: Path, opts: GradeOptions, cache_dir: Path,
                  memo: dict[str, Execution], problems: list[str] | None = None) -> Execution:
    """The solution notebook's execution: once per grading run (``memo``), from the on-disk cache
    when neither the solution nor the package changed since and the entry verifies, else a fresh
    run (cached only when it completed). Why an entry was not used goes to ``problems``. A lock
    per solution lets two concurrent grading runs share one solution run instead of racing."""
    if str(solution) in memo:
        return memo[str(solution)]
    key = hashlib.sha256(solution.read_bytes() + b"\0" + _package_digest().encode()
                         + b"\0" + opts.kernel_name.encode()).hexdigest()
    cache = cache_dir / f"reference-{solution.stem}-{key[:20]}.json"
    with file_lock(cache_dir / "locks" / f"reference-{solution.stem}.lock", wait=True, busy_message=""):
        ex = _cached_or_run(solution, opts, cache, key, problems if problems is not None else [])
    memo[str(solution)] = ex
    return ex


def _cached_or_run(solution: Path, opts: GradeOptions, cache: Path, key: str, problems: list[str]) -> Execution:
    payload, why = read_cached(cache, key)
    if why:
        problems.append(why)
    if payload is not None:
        try:
            return Execution(**payload)
        except TypeError:
            problems.append(f"the cached reference {cache.name} has another layout, so it was recomputed")
    with tempfile.TemporaryDirectory(prefix="minigpt-ref-") as tmp:
        copy = Path(tmp) / "solutions" / solution.name
        copy.parent.mkdir()
        shutil.copy2(solution, copy)
        ex = execute_notebook(copy, cell_timeout=opts.cell_timeout, notebook_timeout=opts.notebook_timeout,
                              kernel_name=opts.kernel_name, profile="",
                              isolation=detect_isolation(opts.network_isolation, opts.sandbox),
                              confine=_confined_roots(solution.resolve().parent.parent))
    if ex.status == "completed":
        write_cached(cache, key, asdict(ex))
    return ex


# --- grading one learner -------------------------------------------------------------------------
def _read_nb(path: Path) -> dict[str, Any] | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return nb if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else None
    except (OSError, ValueError):
        return None


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
        if cell_role(ref) in ("exercise", "answer") or ref.get("cell_type") != "code":
            continue   # markdown: make start rewrote its links, and text cannot change a grade
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


def _untouched_checks(lab_nb: dict[str, Any] | None, learner_nb: dict[str, Any] | None) -> set[str]:
    """Checks whose every exercise cell is still the lab's stub in the learner's notebook."""
    if lab_nb is None:
        return set()
    stubs = {c.get("id"): cell_source(c).strip() for c in lab_nb.get("cells", []) if cell_role(c) == "exercise"}
    mine = {c.get("id"): cell_source(c).strip() for c in (learner_nb or {}).get("cells", [])}
    return {name for name, ids in exercise_cells_of_checks(lab_nb).items()
            if ids and all(mine.get(i, stubs.get(i)) == stubs.get(i) for i in ids)}


def _state_of(record: dict[str, Any] | None, untouched: bool) -> str:
    """passed / wrong / not attempted / did not run. An exercise whose cells are still the stub
    is "not attempted" whatever its check printed, and so is one whose stub still raises
    NotImplementedError; a name that does not exist after the learner edited the cell is wrong
    (the edited cell raised before defining it)."""
    if record is None:
        return "not attempted" if untouched else "did not run"
    if record["passed"]:
        return "passed"
    if untouched:
        return "not attempted"
    stub_raised = str(record.get("values", {}).get("error", "")).startswith("NotImplementedError")
    return "not attempted" if record.get("state") == "not_attempted" and stub_raised else "wrong"


def _grade_lab(lab_id: str, learner_nb_path: Path | None, learner_home: Path, root: Path,
               opts: GradeOptions, memo: dict[str, Execution], flags: list[str]) -> dict[str, Any]:
    lab_path = next(iter(sorted((root / "labs").glob(f"{lab_id}-*.ipynb"))), None)
    sol_path = next(iter(sorted((root / "solutions").glob(f"{lab_id}-*.ipynb"))), None)

    def rel(p: Path | None) -> str:
        return str(p.relative_to(root)) if p is not None and p.is_relative_to(root) else str(p)

    report: dict[str, Any] = {
        "lab": lab_id, "notebook": rel(learner_nb_path) if learner_nb_path else None,
        "lab_notebook": rel(lab_path) if lab_path else None,
        "solution": rel(sol_path) if sol_path else None,
        "status": "", "message": "", "runtime_s": 0.0, "hardware": "", "checks": [], "errors": [],
        "fallbacks": [], "answers": [], "cells": {}, "reference": None, "passed": 0, "total": 0}

    ref_ex = reference_run(sol_path, opts, opts.cache_dir, memo, flags) if (opts.reference and sol_path) else None
    if ref_ex is not None:
        report["reference"] = {"status": ref_ex.status, "message": ref_ex.message,
                               "runtime_s": ref_ex.runtime_s, "hardware": _hardware(ref_ex)}
    ref_checks = ref_ex.checks() if ref_ex is not None and ref_ex.status == "completed" else {}
    solution_nb = _read_nb(sol_path) if sol_path else None
    lab_nb = _read_nb(lab_path) if lab_path else None

    plan = mk.plan(sol_path)

    def finish(checks_by_name: dict[str, dict[str, Any]], records: list[dict[str, Any]],
               decided: dict[str, Any] | None = None) -> dict[str, Any]:
        # the solution run's checks, then the lab's and the probed ones (so a run that recorded
        # nothing, without a solution run, still lists them), then any the learner's notebook added
        lab_names = list(exercise_cells_of_checks(lab_nb)) if lab_nb is not None else []
        own = [*ref_checks, *lab_names, *(plan.probes if plan else [])]
        names = list(dict.fromkeys([*own, *checks_by_name]))
        decided = decided or {"verdicts": {}, "notes": {}, "flags": [], "forged": set(), "probe": None}
        report["probe"] = decided["probe"]
        flags.extend(decided["flags"])
        for name in names:
            mine, ref = checks_by_name.get(name), ref_checks.get(name)
            verdict = decided["verdicts"].get(name)
            state, flag = mk.combine(lab_id, name, _state_of(mine, name in untouched), verdict)
            if flag and mine is not None and verdict is not None:
                flags.append(flag)     # the learner reads why too, without the solution's value
                mine = {**mine, "message": "passed in your notebook, but not on the grader's own inputs ("
                                           f"{verdict.get('learner', verdict['why'])})"}
            counted = name in own and name not in decided["forged"]
            if mine is not None and state == "wrong" and mine.get("state") == "not_attempted":
                mine = {**mine, "message": "your exercise cell was edited but raised an error before defining "
                                           "what this check uses (see the cells that raised an error)"}
            report["checks"].append({
                "name": name, "state": state, "ran": mine is not None,
                "hint_level": (mine or {}).get("hint_level", 0),
                "message": mine["message"] if mine else (
                    "not attempted: the exercise cells are still the lab's stub" if state == "not attempted"
                    else "this check did not run (the notebook stopped before it, or its cell was removed)"),
                "got": mine.get("got") if mine else None, "expected": mine.get("expected") if mine else None,
                "values": mine.get("values", {}) if mine else {},
                "reference": None if ref is None else {"passed": ref["passed"], "got": ref.get("got"),
                                                       "values": ref.get("values", {})},
                "decided": verdict["decided"] if verdict else "notebook",
                "grader": verdict["why"] if verdict else ("no probe: not a check of the lab" if not counted
                                                          else "no probe for this check"),
                "notes": decided["notes"].get(name, []), "counted": counted})
        counted_checks = [c for c in report["checks"] if c["counted"]]
        by_design = plan.decided_in_notebook if plan else {}
        unprobed = [c["name"] for c in counted_checks if c["state"] == "passed" and c["decided"] == "notebook"
                    and c["name"] not in by_design]
        if unprobed:      # marks a notebook could have forged: the instructor must know which
            flags.append(f"lab {lab_id}: passed in the notebook with no probe of the grader (no solution "
                         f"notebook, or no probe or reference for them): {', '.join(unprobed)}")
        report["passed"] = sum(c["state"] == "passed" for c in counted_checks)
        report["states"] = {st: sum(c["state"] == st for c in counted_checks) for st in STATES}
        report["total"] = len(counted_checks)
        report["hints_asked"] = sorted({r["name"] for r in records if r.get("kind") == "hint"})
        return report

    learner_nb = _read_nb(learner_nb_path) if learner_nb_path else None
    # an unreadable notebook's checks "did not run"; a lab not started is all "not attempted"
    untouched = _untouched_checks(lab_nb, learner_nb) if learner_nb is not None or learner_nb_path is None else set()
    if learner_nb_path is None:
        report.update(status="not_started", message=(
            f"not started: there is no {learner_home.name}/labs/{lab_path.name if lab_path else lab_id + '-*.ipynb'}"
            f" (make start LEARNER={learner_home.name} adds it)"))
        report["answers"] = _answers(None, solution_nb)
        return finish({}, [])
    report["answers"] = _answers(learner_nb, solution_nb)
    if learner_nb is not None:
        report["cells"] = _compare_cells(lab_nb, learner_nb)

    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        home = Path(tmp) / learner_home.name
        (home / "labs").mkdir(parents=True)
        # links are copied as links, never as what they point to: a link to solutions/ must not
        # put the solution's text inside the sandbox, where the link itself leads nowhere
        if (learner_home / "profile.md").is_file():
            shutil.copy2(learner_home / "profile.md", home / "profile.md", follow_symlinks=False)
        shutil.copytree(learner_home / "labs", home / "labs", dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        profile = home / "profile.md"
        ex = execute_notebook(home / "labs" / learner_nb_path.name, cell_timeout=opts.cell_timeout,
                              notebook_timeout=opts.notebook_timeout, kernel_name=opts.kernel_name,
                              profile=str(profile) if profile.is_file() else "",
                              isolation=detect_isolation(opts.network_isolation, opts.sandbox),
                              confine=_confined_roots(root), probe=plan.cell if plan and plan.probes else None)
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
    if ex.status == "worker_died":
        flags.append(f"lab {lab_id}: {ex.message}")
    report["fallbacks"] = sorted({r["name"] for r in ex.records if r.get("kind") == "fallback"})
    report.update(status=ex.status, message=ex.message, runtime_s=ex.runtime_s,
                  hardware=_hardware(ex), isolation=ex.isolation)
    decided = mk.decide(plan, lab_id, solution_nb, learner_nb, ex.probe, ex.records, ex.cells,
                        ran=ex.status not in ("unreadable", "failed_to_start", "worker_died")) if plan else None
    return finish(ex.checks(), ex.records, decided)


def grade_learner(name: str, root: str | os.PathLike[str] = ROOT, opts: GradeOptions | None = None,
                  memo: dict[str, Execution] | None = None, write: bool = True) -> dict[str, Any]:
    """Grade every lab of one learner; write learners/<name>/grade.md and grade.json; return the
    report. Raises ValueError (one sentence) for a bad name or a learner who does not exist, and
    AlreadyGrading when another run is grading the same learner."""
    validate_name(name)           # before the name reaches a path, a lock file or a subprocess
    root = Path(root).resolve()
    opts = opts or GradeOptions()
    if opts.cache_dir is None:
        opts.cache_dir = root / ".cache" / "grading"
    memo = {} if memo is None else memo
    home = root / "learners" / name
    if home.is_symlink():
        raise ValueError(f"learners/{name} is a link; grading writes its reports there, so make it a real folder.")
    if not home.is_dir():
        raise ValueError(f"There is no learner {name!r}: run make start LEARNER={name} first.")
    with learner_lock(root / ".cache" / "grading" / "locks", name):   # where every run looks, whatever cache_dir
        return _grade_learner(name, root, home, opts, memo, write)


def _grade_learner(name: str, root: Path, home: Path, opts: GradeOptions, memo: dict[str, Execution],
                   write: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    before = tree_digest(root, (home,))
    flags: list[str] = []
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
    labs: list[dict[str, Any]] = []
    lab_ids = sorted(set(course_labs) | set(mine))
    bar = _progress(lab_ids, name, opts.progress)
    for lid in bar:
        labs.append(_grade_lab(lid, mine.get(lid), home, root, opts, memo, flags))
        if opts.progress:
            bar.set_postfix_str(f"{sum(l['passed'] for l in labs)}/{sum(l['total'] for l in labs)} passed")
            bar.write(f"{name}: lab {lid} — {labs[-1]['passed']}/{labs[-1]['total']} passed in "
                      f"{labs[-1]['runtime_s']:.0f} s")
    after = tree_digest(root, (home,))
    every_change = tree_changes(before, after)
    changes = shorten(every_change)
    if changes:
        flags.insert(0, f"files outside the grading copies changed while grading: {'; '.join(changes)}")
    mine_prefix = f"learners/{name}/"
    isolation = detect_isolation(opts.network_isolation, opts.sandbox)
    how = isolation.how
    if isolation.jail:
        how += f"; sandbox: {describe_jail(jail_spec(_confined_roots(root), [], opts.notebook_timeout))}"
    report = {
        "learner": name, "profile": profile,
        "graded_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {"kernel": opts.kernel_name, "cell_timeout_s": opts.cell_timeout,
                     "notebook_timeout_s": opts.notebook_timeout, "reference_runs": opts.reference},
        "isolation": {"network": isolation.network, "how": how, "sandbox": isolation.jail},
        "nothing_to_grade": not labs, "ignored_notebooks": ignored, "labs": labs,
        "passed": sum(l["passed"] for l in labs), "total": sum(l["total"] for l in labs),
        "states": {st: sum(l.get("states", {}).get(st, 0) for l in labs) for st in STATES},
        "learner_files_unchanged": not any(c.split(": ", 1)[1].startswith(mine_prefix) for c in every_change),
        "repository_unchanged": not changes, "changed_files": changes, "flags": flags,
        "runtime_s": round(time.monotonic() - t0, 2)}
    if write:
        write_private(home / "grade.json", json.dumps(report, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        write_private(home / "grade.md", render_markdown(report))
        write_private(home / "feedback.md", render_feedback(report))
    return report


def _progress(lab_ids: list[str], name: str, on: bool) -> Any:
    """A tqdm bar over the labs (stderr), so a long grading run does not look hung."""
    from tqdm.auto import tqdm
    return tqdm(lab_ids, desc=f"grading {name}", unit="lab", disable=not on, file=sys.stderr)


# --- the report ----------------------------------------------------------------------------------


# --- every learner -------------------------------------------------------------------------------
def learner_names(root: str | os.PathLike[str] = ROOT) -> list[str]:
    """Folders under learners/ that name a learner (TEMPLATE and invalid names are skipped)."""
    folder = Path(root) / "learners"
    from .learner import NAME_RE
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)) \
        if folder.is_dir() else []


def grade_all(root: str | os.PathLike[str] = ROOT, opts: GradeOptions | None = None,
              write: bool = True) -> list[dict[str, Any]]:
    """Grade every learner; with ``write``, also learners/gradebook.csv (a row per learner)."""
    memo: dict[str, Execution] = {}
    reports = [grade_learner(n, root, opts, memo, write) for n in learner_names(root)]
    if write and reports:
        write_private(Path(root) / "learners" / "gradebook.csv", gradebook_csv(reports))
    return reports


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m course.grading",
                                description="Grade learners' labs (make grade LEARNER=<name>, make grade-all).")
    p.add_argument("learner", nargs="?", default=None)
    p.add_argument("--all", action="store_true", help="grade every learner and print a summary table")
    p.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell (default 300)")
    p.add_argument("--notebook-timeout", type=float, default=900, help="seconds per notebook (default 900)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    p.add_argument("--no-reference", action="store_true", help="do not run the solution notebooks")
    p.add_argument("--no-network-isolation", action="store_true")
    p.add_argument("--no-sandbox", action="store_true", help="do not confine the notebooks' file system")
    p.add_argument("--root", type=Path, default=ROOT, help="the course folder (default: this repository)")
    a = p.parse_args(argv)
    opts = GradeOptions(a.cell_timeout, a.notebook_timeout, a.kernel, not a.no_reference,
                        not a.no_network_isolation, not a.no_sandbox)
    t0 = time.monotonic()
    try:
        if a.all:
            reports = grade_all(a.root, opts)
            print(summary_table(reports))
            for r in reports:
                print(f"wrote learners/{r['learner']}/grade.md, feedback.md and grade.json")
            if reports:
                print("wrote learners/gradebook.csv")
        else:
            if not (a.learner or "").strip():
                print("Say whom to grade: make grade LEARNER=<name> (or make grade-all).")
                return 2
            r = grade_learner(a.learner.strip(), a.root, opts)
            print(summary_table([r]))
            print(f"wrote learners/{r['learner']}/grade.md (for you), feedback.md (for the learner) and grade.json")
    except AlreadyGrading as exc:
        print(exc)
        return 3
    except ValueError as exc:
        print(exc)
        return 2
    print(f"grading took {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
