"""course.grading on a small course built from the fixture notebooks.

One grading run (module fixture) covers six learners:
  alice  both labs solved (and an old copy)     -> full marks, the copy ignored
  bob    fresh copies from make start           -> zero, with "not done yet" messages
  carol  01: a syntax error in an exercise      -> reported, the rest of the notebook runs
         02: an endless loop before the check   -> interrupted at the cell time limit, the rest runs
  dave   01: os._exit(1)   02: kill -9 itself   -> "kernel died", grading goes on
  erin   01: not a notebook (broken JSON)       -> "unreadable";   02: missing -> "not started"
  borja  his real profile, no labs copied yet   -> every lab "not started"
  fiona  each lab: one exercise right, one wrong, one untouched -> passed / wrong / not attempted
  gina   (Spanish) 01: ex1 wrong, ex3 right but built on ex1    -> ex3 names ex1 as its cause
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from course import grading, learner

from minigpt.paths import ROOT  # noqa: E402
FIXTURES = ROOT / "tests" / "fixtures" / "notebooks"
LAB1, LAB2 = "01-fixture-lora-count.ipynb", "02-fixture-gib.ipynb"
CELL_TIMEOUT = 15  # long enough for `import torch` on a busy 2-core machine; the endless loop costs this

from course import labs as gen  # noqa: E402


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code(source: str, cell_id: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {}, "outputs": [],
            "source": source}


def exercise_index(nb: dict, n: int) -> int:
    return [i for i, c in enumerate(nb["cells"]) if grading.cell_role(c) == "exercise"][n]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in grading.GRADER_FILES and p.name != "gradebook.csv"}


def build_course(root: Path) -> None:
    shutil.copytree(FIXTURES / "solutions", root / "solutions")
    gen.generate(root / "solutions", root / "labs")
    (root / "learners" / "TEMPLATE").mkdir(parents=True)
    shutil.copy(ROOT / "learners" / "TEMPLATE" / "profile.md", root / "learners" / "TEMPLATE" / "profile.md")
    (root / "learners" / "borja").mkdir()
    shutil.copy(ROOT / "learners" / "borja" / "profile.md", root / "learners" / "borja" / "profile.md")
    for name in ("alice", "bob", "carol", "dave", "erin", "fiona", "gina"):
        learner.start(name, root)
    labs = lambda name: root / "learners" / name / "labs"  # noqa: E731

    for lab in (LAB1, LAB2):  # alice: the solutions themselves, and an old unsolved copy
        shutil.copy(root / "solutions" / lab, labs("alice") / lab)
    shutil.copy(root / "labs" / LAB1, labs("alice") / "01-fixture-lora-count-old.ipynb")

    nb = read(root / "labs" / LAB1)  # carol 01: a syntax error where the exercise was
    i = exercise_index(nb, 0)
    nb["cells"][i]["source"] = "".join(nb["cells"][i]["source"]).replace(
        'raise NotImplementedError("Exercise not done yet: write your code here and delete this line.")',
        "return r * (d_in + d_out")
    nb["cells"].insert(len(nb["cells"]) - 1, code(
        "import socket\n"
        "checks.check_true('net-isolated', {n for _, n in socket.if_nameindex()} <= {'lo'},\n"
        "                  what='the kernel sees no network interface but loopback')", "net-probe"))
    (labs("carol") / LAB1).write_text(json.dumps(nb), encoding="utf-8")

    nb = read(root / "solutions" / LAB2)  # carol 02: solved, but an endless loop before the check
    check_at = next(i for i, c in enumerate(nb["cells"]) if "checks.check(" in grading.cell_source(c))
    nb["cells"].insert(check_at, code("while True:\n    pass", "endless-loop"))
    (labs("carol") / LAB2).write_text(json.dumps(nb), encoding="utf-8")

    for lab, kill in ((LAB1, "import os\nos._exit(1)"), (LAB2, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")):
        # dave: the kernel dies in the first code cell (cell 2); 01 untouched, 02 solved
        nb = read(root / ("labs" if lab == LAB1 else "solutions") / lab)
        nb["cells"].insert(1, code(kill, "kill-kernel"))
        (labs("dave") / lab).write_text(json.dumps(nb), encoding="utf-8")

    (labs("erin") / LAB1).write_text('{"cells": [', encoding="utf-8")
    (labs("erin") / LAB2).unlink()

    solved = {c["id"]: c["source"] for lab in (LAB1, LAB2) for c in read(root / "solutions" / lab)["cells"]}

    def fill(name: str, lab: str, answers: dict[int, str | None]) -> None:
        """Exercise n of the learner's copy: the solution's code (None) or the given source."""
        path = labs(name) / lab
        nb = read(path)
        for n, source in answers.items():
            cell = nb["cells"][exercise_index(nb, n)]
            cell["source"] = solved[cell["id"]] if source is None else source
        path.write_text(json.dumps(nb), encoding="utf-8")

    fill("fiona", LAB1, {0: None, 1: "adapter_bytes = 2 * n_params   # fp16?\nprint(adapter_bytes)"})
    fill("fiona", LAB2, {0: None, 2: "def fits(n_bytes, card_gib):\n    return n_bytes <= card_gib * 10**9"})
    fill("gina", LAB1, {0: "def lora_params(d_in, d_out, r):\n    return r * d_in", 2: None})
    profile = root / "learners" / "gina" / "profile.md"
    profile.write_text(profile.read_text(encoding="utf-8").replace("language: en", "language: es"), encoding="utf-8")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    build_course(root)
    before = tree_digest(root / "learners")
    opts = grading.GradeOptions(cell_timeout=CELL_TIMEOUT, notebook_timeout=120, kernel_name="python3",
                                cache_dir=root / ".cache")
    reports = {r["learner"]: r for r in grading.grade_all(root, opts)}
    return root, reports, before


def lab(report: dict, lab_id: str) -> dict:
    return next(l for l in report["labs"] if l["lab"] == lab_id)


def checks_by_name(lab_report: dict) -> dict:
    return {c["name"]: c for c in lab_report["checks"]}


def test_every_learner_is_graded_and_templates_are_skipped(graded):
    root, reports, _ = graded
    assert sorted(reports) == ["alice", "bob", "borja", "carol", "dave", "erin", "fiona", "gina"]
    for name in reports:
        assert (root / "learners" / name / "grade.md").is_file()
        assert read(root / "learners" / name / "grade.json")["learner"] == name
    table = grading.summary_table(list(reports.values()))
    assert table.splitlines()[0].split() == ["Learner", "Labs", "Checks", "passed", "Problems", "Time"]
    assert "alice" in table and "dave" in table and "01: KERNEL DIED" in table


def test_grading_never_touches_the_learners_files(graded):
    root, reports, before = graded
    assert tree_digest(root / "learners") == before
    assert all(r["learner_files_unchanged"] for r in reports.values())


def test_a_solved_learner_gets_full_marks_beside_the_solution_values(graded):
    root, reports, _ = graded
    alice = reports["alice"]
    assert (alice["passed"], alice["total"]) == (6, 6)
    assert alice["ignored_notebooks"] == ["01-fixture-lora-count-old.ipynb"]  # the lab's own name wins
    l1 = lab(alice, "01")
    assert l1["status"] == "completed" and l1["errors"] == [] and l1["fallbacks"] == []
    ex2 = checks_by_name(l1)["ex2-adapter-bytes"]
    assert ex2["got"] == 262144 and ex2["expected"] == 262144 and ex2["values"] == {"n_params": 65536}
    assert ex2["reference"] == {"passed": True, "got": 262144, "values": {"n_params": 65536}}
    assert l1["hardware"].startswith(("CPU —", "CUDA —"))
    assert l1["reference"]["status"] == "completed"
    answer = l1["answers"][0]
    assert answer["id"] == "01-why-lora-is-small" and "256 times fewer" in answer["reference"]
    md = (root / "learners" / "alice" / "grade.md").read_text(encoding="utf-8")
    assert "**Checks passed: 6 of 6** (wrong 0, not attempted 0, did not run 0)." in md
    assert "| ex2-adapter-bytes | ✔ passed | adapter bytes in fp32 = 262,144, as expected | 262,144; n_params=65,536 " \
           "| 262,144 | 262,144; n_params=65,536 |" in md


def test_an_unsolved_lab_scores_zero_with_helpful_messages(graded):
    root, reports, _ = graded
    bob = reports["bob"]
    assert bob["profile"]["language"] == "en"
    assert (bob["passed"], bob["total"]) == (0, 6)
    assert bob["states"] == {"passed": 0, "wrong": 0, "not attempted": 6, "did not run": 0}
    l1 = lab(bob, "01")
    assert l1["status"] == "completed"
    msgs = {n: c["message"] for n, c in checks_by_name(l1).items()}
    assert msgs["ex1-lora-params"].startswith("not done yet: `lora_params` still raises NotImplementedError")
    assert msgs["ex2-adapter-bytes"] == ("not done yet: `adapter_bytes` is not defined; fill in the exercise cell "
                                         "above and run it before this check")
    assert "Hint" not in " ".join(msgs.values())   # nothing to hint at before the learner has tried
    assert [(e["exercise"], e["ename"], e["note"]) for e in l1["errors"]] == \
        [(True, "NotImplementedError", "exercise not done yet")] * 3
    assert l1["fallbacks"] == ["lora_params"]
    assert l1["answers"][0]["answer"] is None and l1["answers"][0]["note"] == "no answer written"
    md = (root / "learners" / "bob" / "grade.md").read_text(encoding="utf-8")
    assert "○ not attempted | not done yet:" in md and "*(no answer written)*" in md and "> The adapter trains" in md


def test_a_syntax_error_is_reported_and_the_rest_of_the_notebook_runs(graded):
    _, reports, _ = graded
    l1 = lab(reports["carol"], "01")
    assert l1["status"] == "completed"
    errors = [(e["exercise"], e["ename"]) for e in l1["errors"]]
    assert errors == [(True, "SyntaxError"), (True, "NotImplementedError"), (True, "NotImplementedError")]
    checks = checks_by_name(l1)
    # she tried ex1 (a syntax error): wrong, not "not attempted"; ex2 is still the stub
    assert checks["ex1-lora-params"]["state"] == "wrong" and "raised an error" in checks["ex1-lora-params"]["message"]
    assert checks["ex2-adapter-bytes"]["state"] == "not attempted"
    assert checks["net-isolated"]["reference"] is None  # a check the solution does not have is still shown


def test_the_network_is_really_gone_when_isolation_says_so(graded):
    _, reports, _ = graded
    isolation = reports["carol"]["isolation"]
    probe = checks_by_name(lab(reports["carol"], "01"))["net-isolated"]
    if isolation["network"] == "none":
        assert probe["state"] == "passed", probe["message"]
        assert "unshare" in isolation["how"]
    else:  # this machine does not allow it: the report must say so
        assert isolation["how"].startswith("no network isolation")


def test_an_endless_loop_is_interrupted_and_the_rest_still_counts(graded):
    _, reports, _ = graded
    l2 = lab(reports["carol"], "02")
    assert l2["status"] == "completed"
    assert [(e["ename"], e["note"]) for e in l2["errors"]] == [("CellTimeout", "time limit")]
    assert f"longer than {CELL_TIMEOUT} s" in l2["errors"][0]["evalue"]
    assert checks_by_name(l2)["ex1-gib"]["state"] == "passed"  # the check after the loop ran


def test_a_kernel_that_dies_is_reported_and_grading_goes_on(graded):
    root, reports, _ = graded
    dave = reports["dave"]
    for lab_id in ("01", "02"):
        l = lab(dave, lab_id)
        assert l["status"] == "kernel_died", l["message"]
        assert l["message"].startswith("the kernel died in cell 2 (`import os")
    # 01 is still the stubs: not attempted; 02 is solved but its checks never ran: did not run
    assert {c["state"] for c in lab(dave, "01")["checks"]} == {"not attempted"}
    assert {c["state"] for c in lab(dave, "02")["checks"]} == {"did not run"}
    md = (root / "learners" / "dave" / "grade.md").read_text(encoding="utf-8")
    assert "KERNEL DIED" in md and "— did not run | this check did not run" in md


def test_unreadable_and_missing_notebooks_are_reported(graded):
    _, reports, _ = graded
    erin = reports["erin"]
    l1, l2 = lab(erin, "01"), lab(erin, "02")
    assert l1["status"] == "unreadable" and "cannot be read" in l1["message"]
    assert {c["state"] for c in l1["checks"]} == {"did not run"} and {c["state"] for c in l2["checks"]} == {"not attempted"}
    assert l2["status"] == "not_started" and "make start LEARNER=erin" in l2["message"]
    assert (erin["passed"], erin["total"]) == (0, 6)


def test_borja_before_copying_the_labs_has_every_lab_not_started(graded):
    _, reports, _ = graded
    borja = reports["borja"]
    assert borja["profile"] == {"name": "borja", "language": "es", "hardware": "cpu", "gpu_memory_gib": None,
                                "phase": 28}
    assert [l["status"] for l in borja["labs"]] == ["not_started", "not_started"]


def test_a_course_without_labs_has_nothing_to_grade(tmp_path):
    (tmp_path / "learners" / "borja").mkdir(parents=True)
    shutil.copy(ROOT / "learners" / "borja" / "profile.md", tmp_path / "learners" / "borja" / "profile.md")
    report = grading.grade_learner("borja", tmp_path, grading.GradeOptions(cache_dir=tmp_path / ".cache"))
    assert report["nothing_to_grade"] and report["labs"] == []
    md = (tmp_path / "learners" / "borja" / "grade.md").read_text(encoding="utf-8")
    assert "**Nothing to grade:**" in md and "Profile: language es, hardware cpu, phase 28." in md


def test_unknown_or_badly_named_learners_are_one_sentence(tmp_path, capsys):
    (tmp_path / "learners").mkdir()
    with pytest.raises(ValueError, match=r"There is no learner 'zoe': run make start LEARNER=zoe first\."):
        grading.grade_learner("zoe", tmp_path)
    with pytest.raises(ValueError, match="not allowed"):
        grading.grade_learner("../etc", tmp_path)
    assert grading.main([""]) == 2
    assert capsys.readouterr().out.strip() == "Say whom to grade: make grade LEARNER=<name> (or make grade-all)."


def test_reference_runs_are_cached_by_content(graded):
    root, _, _ = graded
    cached = sorted(p.name for p in (root / ".cache").glob("reference-*.json"))
    assert [n.split("-")[1] for n in cached] == ["01", "02"]


@pytest.mark.slow
def test_grading_the_shipped_learner_on_the_real_labs(tmp_path):
    """`make grade LEARNER=borja` on the sample work in learners/borja/labs (see learners/README.md),
    restricted to the two labs he worked on (02-04 are unsolved copies, which test_lab_invert runs)."""
    started = ("01-lora-from-scratch.ipynb", "05-the-fp16-lora-puzzle.ipynb")
    home = tmp_path / "learners" / "borja"
    (home / "labs").mkdir(parents=True)
    (tmp_path / "labs").mkdir()
    shutil.copy(ROOT / "learners" / "borja" / "profile.md", home / "profile.md")
    for name in started:
        shutil.copy(ROOT / "learners" / "borja" / "labs" / name, home / "labs" / name)
        shutil.copy(ROOT / "labs" / name, tmp_path / "labs" / name)
    before = tree_digest(home)
    report = grading.grade_learner("borja", tmp_path, grading.GradeOptions(reference=False,
                                                                          cache_dir=tmp_path / ".cache"))
    assert tree_digest(home) == before and report["learner_files_unchanged"] is True
    got = {l["lab"]: {c["name"]: c["state"] == "passed" for c in l["checks"]} for l in report["labs"]}
    assert got == {
        "01": {"ex1-lora-layer": True, "ex1-zero-init-no-op": True, "ex2-param-count": True, "ex3-merge": True,
               "ex3-unmerge": True, "ex4-matches-peft": False},
        "05": {"ex1-padded-lengths": True, "ex2-depends-on-length": True, "ex3-scores-bytes": False,
               "ex4-fp32-adapter-bytes": False}}
    five = lab(report, "05")
    ex3 = checks_by_name(five)["ex3-scores-bytes"]
    assert "is 96, expected 384" in ex3["message"] and "T appears twice" in ex3["message"]
    # his wrong (T-linear) scores do not break the cells after the exercise: only exercise cells raise
    assert [(e["exercise"], e["ename"]) for e in five["errors"]] == [(True, "NotImplementedError")]
    assert "scores_bytes" in five["fallbacks"]
    md = (home / "grade.md").read_text(encoding="utf-8")
    assert "Mi duda" in md and "Checks passed: 7 of 10" in md


def test_right_wrong_and_untouched_exercises_get_their_own_state_with_the_failing_numbers(graded):
    root, reports, _ = graded
    fiona = reports["fiona"]
    assert {l["lab"]: {c["name"]: c["state"] for c in l["checks"]} for l in fiona["labs"]} == {
        "01": {"ex1-lora-params": "passed", "ex2-adapter-bytes": "wrong", "ex3-qv-params": "not attempted"},
        "02": {"ex1-gib": "passed", "ex2-gb": "not attempted", "ex3-fits": "wrong"}}
    assert fiona["states"] == {"passed": 2, "wrong": 2, "not attempted": 2, "did not run": 0}
    ex2 = checks_by_name(lab(fiona, "01"))["ex2-adapter-bytes"]
    assert (ex2["got"], ex2["expected"]) == (131072, 262144)
    # the diagnosis (by how much, by what factor) and the level-1 hint, not yet the formula
    assert ex2["message"].startswith("adapter bytes in fp32 is 131,072, expected 262,144 (off by -131,072; "
                                     "2x too small). Hint: Mind the unit")
    assert "checks.hint('ex2-adapter-bytes')" in ex2["message"] and "4 bytes" not in ex2["message"]
    assert ex2["hint_level"] == 1
    md = (root / "learners" / "fiona" / "grade.md").read_text(encoding="utf-8")
    assert "**Checks passed: 2 of 6** (wrong 2, not attempted 2, did not run 0)." in md
    row = next(line for line in md.splitlines() if line.startswith("| ex2-adapter-bytes |"))
    assert "| ✘ wrong |" in row and "| 131,072; n_params=65,536 | 262,144 |" in row
    assert "| ex3-qv-params | ○ not attempted |" in md
    fits = checks_by_name(lab(fiona, "02"))["ex3-fits"]
    assert fits["got"] == [False, False, False] and fits["expected"] == [True, False, True]


def test_feedback_md_is_for_the_learner_in_the_learners_language_without_reference_values(graded):
    root, reports, _ = graded
    fb = (root / "learners" / "fiona" / "feedback.md").read_text(encoding="utf-8")
    assert fb.startswith("# Feedback — fiona") and "**Checks passed: 2 of 6**" in fb
    assert "| ex2-adapter-bytes | ✘ wrong | adapter bytes in fp32 is 131,072" in fb
    assert "| ex3-qv-params | ○ not attempted | not done yet: `qv_params` still raises" in fb
    md = (root / "learners" / "fiona" / "grade.md").read_text(encoding="utf-8")
    for instructor_only in ("Solution run", "256 times fewer", "Reference:", "| Expected |"):
        assert instructor_only in md and instructor_only not in fb, instructor_only
    es = (root / "learners" / "gina" / "feedback.md").read_text(encoding="utf-8")
    assert es.startswith("# Comentarios — gina") and "✘ incorrecta" in es and "Comprobaciones superadas" in es


def test_a_dependent_check_names_the_check_to_fix_first(graded):
    _, reports, _ = graded
    checks = checks_by_name(lab(reports["gina"], "01"))
    assert checks["ex1-lora-params"]["state"] == "wrong"
    ex3 = checks["ex3-qv-params"]
    assert ex3["state"] == "wrong"
    assert ex3["message"].startswith("esto falla porque `lora_params` (ex1-lora-params) está mal; corrige eso "
                                     "primero: q,v adapters in 12 blocks of width 768, r=8 is 147,456, expected 294,912")
    assert "Pista:" in ex3["message"]   # gina's profile is Spanish


def test_grade_all_writes_a_gradebook(graded):
    root, _, _ = graded
    import csv
    rows = list(csv.DictReader((root / "learners" / "gradebook.csv").open(encoding="utf-8")))
    assert [r["learner"] for r in rows] == ["alice", "bob", "borja", "carol", "dave", "erin", "fiona", "gina"]
    fiona = next(r for r in rows if r["learner"] == "fiona")
    assert (fiona["passed"], fiona["total"], fiona["wrong"], fiona["not attempted"]) == ("2", "6", "2", "2")
    assert fiona["01 ex2-adapter-bytes"] == "wrong" and fiona["02 ex1-gib"] == "passed"


def test_make_run_lab_runs_a_learners_copy_with_errors_allowed_and_prints_its_checks(graded, capsys):
    from course.run_lab import run_lab
    root, _, _ = graded
    assert run_lab("01", "fiona", root, cell_timeout=CELL_TIMEOUT) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Running learners/fiona/labs/01-fixture-lora-count.ipynb in a fresh kernel (errors allowed, nothing saved)…"
    assert any(line.startswith("✘ ex2-adapter-bytes: adapter bytes in fp32 is 131,072") for line in out)
    assert any(line.startswith("○ ex3-qv-params: not done yet") for line in out)
    assert out[-1].startswith("1 of 3 checks passed, 1 wrong, 1 not done yet; the notebook completed in ")
    assert run_lab("1", "fiona", root) == 2 and run_lab("07", "fiona", root) == 2
    assert capsys.readouterr().out.splitlines() == [
        "LAB must be a two-digit lab number such as 03, got '1'.",
        "learners/fiona/labs/ has no lab 07: run make start LEARNER=fiona first."]
