"""A learner with bad intentions against the grader's own files and processes (issue 20, parts 4
and 5), on the fixture course of test_grading.py. Each attack notebook is a small fixture in
tests/fixtures/attacks/, spliced into a copy of lab 01 after its setup cell; lab 02 is the
solution, so "the other labs are graded normally" means 3 of 3 there.

For each attack: no marks gained, the attempt named in grade.md, nothing written outside the
course's scratch folder (a sentinel file outside stays as it was), and the other lab graded.
Where this machine allows the sandbox (course/jail.py in user, network, PID and mount
namespaces) the attacks on the file system fail; where it does not, they are not skipped: the
test asserts that grade.md says the sandbox was not enforced and names what the notebook changed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from course import grading, learner
from course.grade_files import learner_lock

from .test_grading import CELL_TIMEOUT, LAB1, LAB2, ROOT, build_course, checks_by_name, lab, read

ATTACKS = ROOT / "tests" / "fixtures" / "attacks"
LAB1_CHECKS = {"ex1-lora-params", "ex2-adapter-bytes", "ex3-qv-params"}


def splice(root: Path, name: str, attack: str, **fill: str) -> None:
    """learners/<name>/labs: lab 01 with the attack's cells after the setup cell, lab 02 solved."""
    if not (root / "learners" / name).is_dir():
        learner.start(name, root)
    labs = root / "learners" / name / "labs"
    nb = read(root / "labs" / LAB1)
    cells = [c for c in read(ATTACKS / f"{attack}.ipynb")["cells"] if c["cell_type"] == "code"]
    for c in cells:
        src = "".join(c["source"])
        for key, value in fill.items():
            src = src.replace(f"@@{key}@@", value)
        c["source"] = src
    nb["cells"][2:2] = cells
    (labs / LAB1).write_text(json.dumps(nb), encoding="utf-8")
    (labs / LAB2).write_text((root / "solutions" / LAB2).read_text(encoding="utf-8"), encoding="utf-8")


def options(root: Path, **kw) -> grading.GradeOptions:
    kw.setdefault("reference", False)
    return grading.GradeOptions(cell_timeout=CELL_TIMEOUT, notebook_timeout=120, cache_dir=root / ".cache",
                                progress=False, **kw)


def assert_no_marks_from_lab1_and_lab2_graded(report: dict) -> None:
    l1, l2 = lab(report, "01"), lab(report, "02")
    assert set(checks_by_name(l1)) >= LAB1_CHECKS and l1["passed"] == 0, l1["checks"]
    assert (l2["status"], l2["passed"], l2["total"]) == ("completed", 3, 3), l2["message"]


def sandboxed() -> bool:
    return grading.detect_isolation(True, True).jail


def process_gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for its parent counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The fixture course, and a sentinel file outside it that no attack may touch."""
    base = tmp_path_factory.mktemp("attacks")
    root = base / "course"
    build_course(root)
    outside = base / "outside.txt"
    outside.write_text("untouched\n")
    return root, outside


# ------------------------------------------------------------------ part 5: a killed worker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and POSIX process groups")
@pytest.mark.parametrize("attack", ["kill-worker", "kill-worker-group"])
def test_a_notebook_that_kills_its_worker_fails_that_lab_only(course, attack, tmp_path):
    """Without a PID namespace (switched off here) the kill succeeds: that lab is failed, nothing it
    recorded counts, its orphaned kernel is killed, and lab 02 is graded as usual."""
    root, outside = course
    name = attack.replace("-", "")[:32]
    pidfile = tmp_path / "kernel.pid"
    splice(root, name, attack, PIDFILE=str(pidfile))
    report = grading.grade_learner(name, root, options(root, network_isolation=False))
    l1 = lab(report, "01")
    assert l1["status"] == "worker_died", l1["message"]
    assert l1["message"].startswith("the grading worker was killed by signal SIGKILL while running cell 3 (`import os")
    assert {c["state"] for c in l1["checks"]} <= {"did not run", "not attempted"}
    assert_no_marks_from_lab1_and_lab2_graded(report)
    assert any(f.startswith("lab 01: the grading worker was killed") for f in report["flags"])
    md = (root / "learners" / name / "grade.md").read_text(encoding="utf-8")
    assert "## Flags" in md and "GRADER KILLED" in md
    assert process_gone(int(pidfile.read_text())), "the attacking kernel outlived grading"
    assert report["repository_unchanged"] and outside.read_text() == "untouched\n"
    assert "GRADER KILLED" in grading.summary_table([report])


def test_killing_the_worker_inside_a_pid_namespace_is_ignored_or_fails_the_lab(course):
    """With the default isolation the worker is PID 1 of its namespace, which ignores a SIGKILL sent
    from inside it; where there is no PID namespace the attack fails the lab as above. Either way
    no marks, and lab 02 is graded."""
    root, _ = course
    splice(root, "killns", "kill-worker", PIDFILE="/dev/null")   # writable in the sandbox too
    report = grading.grade_learner("killns", root, options(root))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    status = lab(report, "01")["status"]
    if "--pid" in grading.detect_isolation().prefix:
        assert status == "completed"
        assert [e["cell"] for e in lab(report, "01")["errors"]][0] != 3     # the kill ran, and was ignored
    else:
        assert status == "worker_died" and report["flags"]


# ------------------------------------------------------------------ part 4: the grader's files
def test_report_files_planted_as_links_are_replaced_not_written_through(course):
    """Links at grade.md, grade.json.tmp, ... before grading, and links the notebook plants at the
    report names while it runs: the reports become regular files, the link targets stay as they were."""
    root, outside = course
    name = "links"
    splice(root, name, "plant-links", ROOT=str(root), NAME=name, OUTSIDE=str(outside))
    home = root / "learners" / name
    for planted in ("grade.md", "grade.md.tmp", "grade.json.tmp", "feedback.md.tmp"):
        os.symlink(outside, home / planted)
    os.symlink(outside, root / "learners" / "gradebook.csv")
    report = grading.grade_learner(name, root, options(root))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    # the links were planted, or, in the sandbox, learners/ was not even there to plant them in
    errors = {e["cell"]: e["ename"] for e in lab(report, "01")["errors"]}
    assert (errors.get(3) in ("FileNotFoundError", "OSError", "PermissionError")) if sandboxed() else 3 not in errors
    for written in grading.GRADER_FILES:
        assert (home / written).is_file() and not (home / written).is_symlink(), written
    assert read(home / "grade.json")["learner"] == name
    assert outside.read_text() == "untouched\n"
    assert not list(home.glob(".grade*.tmp")) and not list(home.glob(".feedback*.tmp"))
    grading.write_private(root / "learners" / "gradebook.csv", "learner\n")     # as grade_all writes it
    assert not (root / "learners" / "gradebook.csv").is_symlink() and outside.read_text() == "untouched\n"
    (root / "learners" / "gradebook.csv").unlink()


def test_a_learner_folder_that_is_a_link_is_refused_in_one_sentence(course, tmp_path):
    root, _ = course
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "learners" / "linked")
    with pytest.raises(ValueError, match=r"^learners/linked is a link; grading writes its reports there, so make "
                                         r"it a real folder\.$"):
        grading.grade_learner("linked", root, options(root))
    (root / "learners" / "linked").unlink()


@pytest.mark.parametrize("sandbox", [True, False])
def test_a_notebook_that_writes_into_the_repository_fails_or_is_named_in_grade_md(tmp_path, sandbox):
    """In the sandbox the course is out of reach and the cell fails; without it (switched off, or
    not possible here) the writes succeed but are never hidden: every file added, changed or
    removed is listed under Flags, and "files unchanged" says NO."""
    root = tmp_path / "course"
    build_course(root)
    splice(root, "writer", "write-repo", ROOT=str(root))
    report = grading.grade_learner("writer", root, options(root, sandbox=sandbox))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    if sandbox and sandboxed():
        assert report["isolation"]["sandbox"] and "sandbox: file system read-only" in report["isolation"]["how"]
        assert report["repository_unchanged"] and report["flags"] == []
        assert [e["cell"] for e in lab(report, "01")["errors"]][0] == 3
        return
    assert "no sandbox" in report["isolation"]["how"] or not sandbox
    assert report["repository_unchanged"] is False and report["learner_files_unchanged"] is True
    assert report["changed_files"] == ["added: solutions/pwned.txt", "removed: learners/bob/profile.md",
                                       f"changed: labs/{LAB1}"]
    md = (root / "learners" / "writer" / "grade.md").read_text(encoding="utf-8")
    assert "whole repository tree and the learner's folder): **NO** — 3 change(s), listed under Flags." in md
    assert "added: solutions/pwned.txt; removed: learners/bob/profile.md" in md


def test_a_notebook_cannot_read_the_solutions_write_outside_reach_host_sockets_or_leave_a_process(course, tmp_path):
    """Attacks 1 (read the solutions), 4 and 5. In the sandbox each fails; without it the report
    says that the file system was not confined (the attacks are not skipped silently)."""
    root, outside = course
    token, new_file = f"minigpt-attack-{uuid.uuid4().hex}", tmp_path / "escaped.txt"
    sock_path = tmp_path / "host.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    server.setblocking(False)
    try:
        splice(root, "escaper", "escape", ROOT=str(root), OUTSIDE_NEW=str(new_file), SOCK=str(sock_path), TOKEN=token)
        report = grading.grade_learner("escaper", root, options(root))
        try:
            server.accept()
            connected = True
        except BlockingIOError:
            connected = False
    finally:
        server.close()
    assert_no_marks_from_lab1_and_lab2_graded(report)
    escaped = [e["evalue"] for e in lab(report, "01")["errors"] if "ESCAPED" in e["evalue"]]
    leftover = [p for p in Path("/proc").glob("[0-9]*") if token in _cmdline(p)]
    if not sandboxed():
        assert "no sandbox of the file system" in report["isolation"]["how"]
        for p in leftover:                      # not enforced here: clean up after the attack
            os.kill(int(p.name), 9)
        new_file.unlink(missing_ok=True)
        return
    assert escaped == [] and not connected and not new_file.exists(), escaped
    assert leftover == [], "a process started by the notebook outlived grading"
    assert outside.read_text() == "untouched\n" and report["repository_unchanged"]
    md = (root / "learners" / "escaper" / "grade.md").read_text(encoding="utf-8")
    assert "sandbox: file system read-only except a private /tmp" in md


def test_a_link_to_a_solution_in_the_learners_folder_does_not_bring_it_into_the_run(course):
    root, _ = course
    splice(root, "linker", "read-linked")
    os.symlink(root / "solutions" / LAB1, root / "learners" / "linker" / "labs" / "leak.ipynb")
    report = grading.grade_learner("linker", root, options(root))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    assert report["ignored_notebooks"] == ["leak.ipynb"]
    escaped = [e["evalue"] for e in lab(report, "01")["errors"] if "ESCAPED" in e["evalue"]]
    if sandboxed():
        assert escaped == []
    else:         # the link is copied as a link, which still leads to the solution without a sandbox
        assert "no sandbox of the file system" in report["isolation"]["how"]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_an_honest_learner_reports_an_unchanged_tree(course):
    root, _ = course
    splice(root, "honest", "kill-worker", PIDFILE="/dev/null")
    (root / "learners" / "honest" / "labs" / LAB1).write_text((root / "labs" / LAB1).read_text())
    report = grading.grade_learner("honest", root, options(root))
    assert report["repository_unchanged"] and report["changed_files"] == [] and report["flags"] == []
    md = (root / "learners" / "honest" / "grade.md").read_text(encoding="utf-8")
    assert "the learner's folder): yes." in md and "## Flags" not in md


def test_a_second_grading_of_the_same_learner_says_already_grading(course):
    root, _ = course
    with learner_lock(root / ".cache" / "grading" / "locks", "bob"):
        proc = subprocess.run([sys.executable, "-m", "course.grading", "bob", "--root", str(root)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        with pytest.raises(grading.AlreadyGrading, match="^already grading bob"):
            grading.grade_learner("bob", root, options(root))
    assert proc.returncode == 3
    assert proc.stdout.strip().splitlines() == ["already grading bob: another make grade for this learner is "
                                                "running; wait for it to finish."]
    assert not (root / "learners" / "bob" / "grade.md").exists()


def test_a_reference_cache_entry_that_does_not_verify_is_recomputed_and_flagged(course):
    root, _ = course
    opts = lambda: options(root, reference=True)  # noqa: E731
    grading.grade_learner("alice", root, opts())
    entry = next((root / ".cache").glob("reference-01-*.json"))
    cached = json.loads(entry.read_text())
    assert len(cached["key"]) == 64 and len(cached["sha256"]) == 64
    # poison it: the solution's ex1 record now "expects" another value
    text = entry.read_text().replace('"passed": true', '"passed": false', 1)
    entry.write_text(text)
    report = grading.grade_learner("alice", root, opts())
    assert any("did not verify (edited or damaged), so it was recomputed" in f for f in report["flags"])
    assert grading.read_cached(entry, cached["key"])[1] == ""      # rewritten from a fresh solution run
    assert all(c["reference"]["passed"] for c in lab(report, "01")["checks"])
    assert (report["passed"], report["total"]) == (6, 6)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU make and a POSIX shell")
def test_make_grade_passes_the_learner_name_through_the_environment(tmp_path):
    """`make grade LEARNER='x"; touch pwned; echo "'` creates nothing and prints one sentence;
    so does a name with make's own $(shell ...) in it, and so do make start and make run-lab. Run in an empty folder, against the
    repository's Makefile, with the venv's install stamp marked up to date (-o)."""
    venv = Path(sys.prefix)
    stamp = venv / ".stamp-install"
    if not stamp.exists() or not (venv / "bin" / "python").exists():
        pytest.skip("needs the course's virtual environment (make install)")
    evils = ('x"; touch pwned; echo "', "$(shell touch pwned)`touch pwned`$$(touch pwned)';touch pwned;'")
    runs = [("grade", f"LEARNER={e}", "Learner name ") for e in evils] + [
        ("start", f"LEARNER={evils[0]}", "Learner name "), ("run-lab", f"LAB={evils[1]}", "LAB must be")]
    for target, assignment, says in runs:
        proc = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), "-o", str(stamp),
                               f"VENV={venv}", target, assignment, *(["LEARNER=ana"] if target == "run-lab" else [])],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode != 0, target
        assert list(tmp_path.iterdir()) == [] and not (ROOT / "pwned").exists(), target
        said = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(said) == 1 and said[0].startswith(says), (target, proc.stdout)


def test_cache_entries_that_are_links_or_for_another_key_are_not_used(tmp_path):
    from course.grade_files import read_cached, write_cached
    entry = tmp_path / "reference-01-abc.json"
    write_cached(entry, "k" * 64, {"status": "completed"})
    assert read_cached(entry, "k" * 64) == ({"status": "completed"}, "")
    payload, why = read_cached(entry, "j" * 64)
    assert payload is None and "did not verify" in why
    assert read_cached(tmp_path / "absent.json", "k" * 64) == (None, "")
    (tmp_path / "link.json").symlink_to(entry)
    assert read_cached(tmp_path / "link.json", "k" * 64) == (None, "link.json is a link, ignored and recomputed")


# ------------------------------------------------------------------ parts 1 and 3: marks come from the grader
def splice_marks_attack(root: Path, name: str, attack: str, **fill: str) -> None:
    """Like splice, but a cell of the attack with metadata ``minigpt_attack: {"replace_exercise": n}``
    replaces the learner's exercise n, and one with ``{"at": "end"}`` goes before the lab's last cell."""
    splice(root, name, "kill-worker", PIDFILE="/dev/null")     # learner, lab 02 solved
    labs = root / "learners" / name / "labs"
    nb = read(root / "labs" / LAB1)
    exercises = [i for i, c in enumerate(nb["cells"]) if grading.cell_role(c) == "exercise"]
    before, end = [], []
    for c in (c for c in read(ATTACKS / f"{attack}.ipynb")["cells"] if c["cell_type"] == "code"):
        src = "".join(c["source"])
        for key, value in fill.items():
            src = src.replace(f"@@{key}@@", value)
        where = c["metadata"].get("minigpt_attack", {})
        if "replace_exercise" in where:
            nb["cells"][exercises[where["replace_exercise"]]]["source"] = src
        else:
            (end if where.get("at") == "end" else before).append({**c, "source": src})
    nb["cells"][-1:-1] = end
    nb["cells"][2:2] = before
    (labs / LAB1).write_text(json.dumps(nb), encoding="utf-8")


def grade_attack(root: Path, name: str, attack: str, **kw) -> tuple[dict, str]:
    splice_marks_attack(root, name, attack, ROOT=str(root))
    report = grading.grade_learner(name, root, options(root, **kw))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    assert lab(report, "01")["probe"]["answered"] and lab(report, "02")["probe"]["answered"]
    assert all(c["decided"] == "grader" for c in lab(report, "02")["checks"])
    assert report["repository_unchanged"], report["changed_files"]
    md = (root / "learners" / name / "grade.md").read_text(encoding="utf-8")
    assert "## Flags" in md or sandboxed() and attack == "exec-solution"
    return report, md


@pytest.mark.parametrize("sandbox", [True, False])
def test_execing_the_solutions_cells_gains_nothing(course, sandbox):
    """In the sandbox the solutions are not there to read; without it the probe passes the copied
    function, so the grader also compares compiled code: the solution's, defined outside the
    notebook's cells, is flagged and not counted."""
    root, _ = course
    report, md = grade_attack(root, f"execsol{int(sandbox)}", "exec-solution", sandbox=sandbox)
    ex1 = checks_by_name(lab(report, "01"))["ex1-lora-params"]
    if sandbox and sandboxed():
        assert [e["ename"] for e in lab(report, "01")["errors"]][0] == "IndexError"
        return
    assert ex1["state"] == "wrong" and "the solution's code, verbatim, defined outside" in ex1["grader"]
    assert "01 ex1-lora-params: `lora_params` is the solution's code, verbatim" in md
    assert [f for f in report["flags"] if "ex1-lora-params" in f] == [
        f"lab 01 ex1-lora-params: {ex1['grader']}; not counted"]        # once, not again as "passed in the notebook"


def test_the_packages_own_objects_in_place_of_an_answer_are_flagged_by_name(course):
    root, _ = course
    report, md = grade_attack(root, "pkgref", "package-reference")
    checks = checks_by_name(lab(report, "01"))
    assert "is the package's own minigpt.model.parameter_count" in checks["ex1-lora-params"]["grader"]
    assert "only calls the package's minigpt.nf4.nf4_nbytes" in checks["ex3-qv-params"]["grader"]
    assert "`lora_params` is the package's own minigpt.model.parameter_count" in md
    assert "`qv_params` only calls the package's minigpt.nf4.nf4_nbytes" in md


def test_replacing_checks_check_gains_nothing_and_is_flagged(course):
    root, _ = course
    report, md = grade_attack(root, "replacer", "replace-check")
    l1 = lab(report, "01")
    assert {c["name"]: c["state"] for c in l1["checks"]} == dict.fromkeys(LAB1_CHECKS, "wrong")
    assert any("the notebook replaced course.checks.check" in f for f in report["flags"])
    assert "passed in the notebook, but the grader's probe fails" in md


def test_forged_records_in_the_checks_file_gain_nothing_and_are_flagged(course):
    root, _ = course
    report, md = grade_attack(root, "forger", "forge-records")
    l1 = lab(report, "01")
    assert (l1["passed"], l1["total"]) == (0, 3)
    bonus = checks_by_name(l1)["ex9-bonus"]
    assert bonus["counted"] is False and bonus["state"] == "passed"      # shown, never counted
    assert any("records for ex9-bonus, which no cell of the notebook checks" in f for f in report["flags"])
    assert any("more check records than check cells ran: ex1-lora-params (2 records" in f for f in report["flags"])
    assert "not counted" in md


def test_answers_hard_coded_for_the_notebooks_inputs_fail_the_graders_fresh_inputs(course):
    root, _ = course
    report, md = grade_attack(root, "hardcoder", "hard-coded")
    checks = checks_by_name(lab(report, "01"))
    assert checks["ex1-lora-params"]["ran"] and checks["ex1-lora-params"]["state"] == "wrong"
    assert checks["ex1-lora-params"]["grader"].startswith("raised KeyError")
    assert checks["ex3-qv-params"]["grader"].startswith("on the grader's input [")
    assert "01 ex1-lora-params: passed in the notebook, but the grader's probe fails" in md
    feedback = (root / "learners" / "hardcoder" / "feedback.md").read_text(encoding="utf-8")
    assert "| ex3-qv-params | ✘ wrong | passed in your notebook, but not on the grader's own inputs (on the " \
           "grader's input [" in feedback
    assert "the solution gives" not in feedback and "the solution gives" in md


def test_without_a_solution_to_probe_against_the_notebooks_marks_are_flagged(tmp_path):
    """No solutions/ (an instructor grading with the labs only): nothing for the grader to compute a
    reference from, so the marks are the notebook's own, and grade.md says which they are."""
    root = tmp_path / "course"
    build_course(root)
    shutil.rmtree(root / "solutions")
    report = grading.grade_learner("alice", root, options(root))
    assert (report["passed"], report["total"]) == (6, 6)
    assert [f.split(":")[0] for f in report["flags"]] == ["lab 01", "lab 02"]
    assert report["flags"][0].endswith("no probe or reference for them): ex1-lora-params, ex2-adapter-bytes, "
                                       "ex3-qv-params")
    md = (root / "learners" / "alice" / "grade.md").read_text(encoding="utf-8")
    assert "Grader's probe: none for this lab" in md


def test_a_fork_bomb_stops_at_the_process_limit_or_the_report_says_there_is_none(course):
    """Part 2's process count: a pids cgroup caps the run's tasks (course/pids_limit.py); where no
    pids cgroup is writable, grade.md says the count was not limited."""
    root, outside = course
    from course.pids_limit import describe_limit
    if not sandboxed() or not describe_limit().startswith("at most"):
        # no limit here: say so, and do not set a fork bomb loose on the machine to prove it
        how = grading.detect_isolation(True, True).how
        assert "no sandbox" in how or "process count not limited" in describe_limit()
        return
    splice(root, "forker", "fork-bomb")
    report = grading.grade_learner("forker", root, options(root))
    assert_no_marks_from_lab1_and_lab2_graded(report)
    how = report["isolation"]["how"]
    assert "at most 512 processes and threads (pids cgroup)" in how
    forked = [int(e["evalue"].split()[-1]) for e in lab(report, "01")["errors"] if "FORKED" in e["evalue"]]
    assert forked and forked[0] < 512, forked
    assert outside.read_text() == "untouched\n"


def test_the_rest_of_the_file_system_is_out_of_sight(course):
    """Part 2: the sandbox's view holds the system folders, Python, the venv and the course only, so a
    file or a Unix socket in the instructor's home folder does not exist for the notebook."""
    root, outside = course
    token = uuid.uuid4().hex[:12]
    home_file, home_sock = Path.home() / f".minigpt-attack-{token}", Path.home() / f".minigpt-attack-{token}.sock"
    home_file.write_text("the instructor's secret\n")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(home_sock))
    server.listen(1)
    try:
        splice(root, "peeker", "peek-home", HOMEFILE=str(home_file), HOMESOCK=str(home_sock))
        report = grading.grade_learner("peeker", root, options(root))
    finally:
        server.close()
        home_sock.unlink(missing_ok=True)
        home_file.unlink(missing_ok=True)
    assert_no_marks_from_lab1_and_lab2_graded(report)
    escaped = [e["evalue"] for e in lab(report, "01")["errors"] if "ESCAPED" in e["evalue"]]
    if not sandboxed():
        assert "no sandbox of the file system" in report["isolation"]["how"]
        return
    assert escaped == [], escaped
    assert "no home folders, /var, /run, no host Unix sockets" in report["isolation"]["how"]


@pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0
                         and grading.detect_isolation(True, False).network == "none"),
                    reason="the sandbox is guaranteed only as root on Linux with working namespaces (CI)")
def test_the_sandbox_is_really_enforced_where_it_can_be():
    """The attack tests accept a machine without the sandbox (they then check the report says so);
    on a Linux machine that runs the namespaces as root, as CI does, a broken jail must fail here."""
    iso = grading.detect_isolation(True, True)
    assert iso.jail, iso.how
