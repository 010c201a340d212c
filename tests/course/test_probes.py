"""The grader's probes (course/probes.py, course/probe_table.py, course/marks.py) without a notebook:
every exercise check has a probe or a reason, the solutions pass their own probes, and the facts
the kernel reports about an answer turn into the flags of issue 20, part 3."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from course import marks, probes
from course import probe_kernel as pk
from course.notebooks import exercise_cells_of_checks
from minigpt.paths import ROOT

SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]-*.ipynb")) + sorted(
    (ROOT / "tests" / "fixtures" / "notebooks" / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_every_exercise_check_has_a_probe_or_is_notebook_decided_with_a_reason(solution: Path):
    checks = set(exercise_cells_of_checks(json.loads(solution.read_text(encoding="utf-8"))))
    table, by_notebook = probes.probes_for(solution)
    assert checks, solution.name
    assert checks == set(table) | set(by_notebook), "every check: a probe, or a reason in NOTEBOOK_DECIDED"
    assert all(reason.strip() for reason in by_notebook.values())
    assert not set(table) & set(by_notebook)


def _as_kernel(ns: dict, table: dict, seed: int) -> dict:
    """What a learner's kernel answers, with ``ns`` as its globals (probe_kernel's text exec'd, as there)."""
    harness: dict = {}
    exec(compile(probes.KERNEL_SOURCE, "<grader-probe>", "exec"), harness)
    return harness["evaluate"](ns, probes._spec(table), seed, True)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_the_solutions_code_passes_its_own_probes_on_fresh_seeds(solution: Path):
    nb = json.loads(solution.read_text(encoding="utf-8"))
    table, _ = probes.probes_for(solution)
    plan = marks.Plan(table, {})
    givens = {k: v for p in table.values() for k, v in p.given.items()}
    answer = _as_kernel(probes.solution_namespace(nb, givens), table, plan.seed)
    # the solution notebook as the learner's: its cells define exactly the code the kernel has
    decided = marks.decide(plan, "00", nb, nb, {"answer": answer}, [], [], ran=True)
    assert {c: v["passed"] for c, v in decided["verdicts"].items()} == dict.fromkeys(table, True), decided
    assert decided["flags"] == []
    alone = marks.decide(plan, "00", nb, None, {"answer": answer}, [], [], ran=True)    # defined in no cell
    assert all("the solution's code, verbatim, defined outside" in f for f in alone["flags"])


def _decide_lab05(ns: dict) -> dict:
    solution = ROOT / "solutions" / "05-the-fp16-lora-puzzle.ipynb"
    table = {"ex3-scores-bytes": probes.probes_for(solution)[0]["ex3-scores-bytes"]}
    plan = marks.Plan(table, {})
    nb = json.loads(solution.read_text(encoding="utf-8"))
    return marks.decide(plan, "05", nb, None, {"answer": _as_kernel(ns, table, plan.seed)}, [], [], ran=True)


def test_a_package_object_or_a_one_call_wrapper_is_flagged_by_name_and_not_counted():
    from course.puzzle import attention_scores_bytes
    for ns, said in [({"scores_bytes": attention_scores_bytes}, "is the package's own course.puzzle."),
                     (_defined("import course.puzzle\n\n\ndef scores_bytes(b, h, s, n):\n"
                               "    return course.puzzle.attention_scores_bytes(b, h, s, n)\n"),
                      "only calls the package's course.puzzle.attention_scores_bytes")]:
        decided = _decide_lab05(ns)
        v = decided["verdicts"]["ex3-scores-bytes"]
        assert v["passed"] is False and said in v["why"], v
        assert decided["flags"] == [f"lab 05 ex3-scores-bytes: {v['why']}; not counted"]


def test_the_learners_own_code_that_uses_the_package_otherwise_is_left_to_the_instructor():
    ns = _defined("import course.puzzle\n\n\ndef scores_bytes(b, h, s, n):\n"
                  "    return course.puzzle.attention_scores_bytes(b, h, s, 1) * n\n")
    decided = _decide_lab05(ns)
    assert decided["verdicts"]["ex3-scores-bytes"]["passed"] and decided["flags"] == []
    sub = pk.facts(_defined("from minigpt.lora import LoRALinear\n\n\nclass Mine(LoRALinear):\n    pass\n")["Mine"])
    assert sub["package_bases"][0] == "minigpt.lora.LoRALinear" and not sub["is_package_object"]
    flags, notes, void = marks._object_flags("01", "ex1-lora-layer", ("Mine",), {"Mine": sub}, {}, None)
    assert (flags, void) == ([], None) and "left to the instructor's judgement" in notes[0]


def test_a_replaced_check_function_is_named():
    answer = {"check_functions": {**pk.check_functions(), "course.checks.check": "0" * 24},
              "checks_name_is_module": False}
    flags = marks._tamper_flags("01", answer)
    assert flags[0].startswith("lab 01: the notebook replaced course.checks.check in its kernel")
    assert flags[1] == "lab 01: the notebook's `checks` is not the course.checks module"
    assert marks._tamper_flags("01", {"check_functions": pk.check_functions()}) == []


def test_the_fingerprint_of_a_cell_is_the_fingerprint_of_what_it_defines():
    src = "def f(a, b):\n    '''doc'''\n    return a * b + 1\n\n\nclass C:\n    def m(self):\n        return 2\n"
    ns = _defined(src)
    assert probes.source_fingerprint(src, "f") == pk.fingerprint(ns["f"])
    assert probes.source_fingerprint(src, "C") == pk.fingerprint(ns["C"])
    assert probes.source_fingerprint(src.replace("+ 1", "+ 2"), "f") != pk.fingerprint(ns["f"])


def _defined(source: str) -> dict:
    ns: dict = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec"), ns)
    return ns


@pytest.mark.parametrize("answer", [None, "x", {"probes": "x"}, {"probes": {"ex3-scores-bytes": 3}},
                                    {"probes": {"ex3-scores-bytes": {"results": [{"value": [[[]]]}]}},
                                     "check_functions": 5},
                                    {"probes": {"ex3-scores-bytes": {"results": [], "facts": {"scores_bytes": 1}}}}])
def test_a_malformed_answer_from_the_kernel_loses_the_marks_and_never_raises(answer):
    solution = ROOT / "solutions" / "05-the-fp16-lora-puzzle.ipynb"
    table = {"ex3-scores-bytes": probes.probes_for(solution)[0]["ex3-scores-bytes"]}
    nb = json.loads(solution.read_text(encoding="utf-8"))
    decided = marks.decide(marks.Plan(table, {}), "05", nb, None, {"answer": answer}, [], [], ran=True)
    assert decided["verdicts"]["ex3-scores-bytes"]["passed"] is False
