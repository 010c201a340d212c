"""course.checks: one line per check, records for the grader, and never an exception."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from course import checks


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.delenv(checks.CHECKS_FILE_ENV, raising=False)
    checks.reset()
    checks._state["env_written_to"] = None
    yield
    checks.reset()


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_passing_and_failing_checks_print_exactly_one_line_each(capsys):
    checks.start_lab("03")
    assert checks.check_equal("ex1", 1234, 1234, what="gradient bytes") is True
    assert checks.check_equal("ex2", 1000, 1234, what="gradient bytes", hint="4 bytes per fp32 parameter") is False
    out = lines(capsys)
    assert out == ["✔ 03 ex1: gradient bytes = 1,234, as expected",
                   "✘ 03 ex2: gradient bytes is 1,000, expected 1,234 (off by -234; 0.81x the expected). "
                   "Hint: 4 bytes per fp32 parameter"]
    recs = checks.results("03")
    assert [(r["name"], r["passed"], r["got"], r["expected"]) for r in recs] == [
        ("ex1", True, 1234, 1234), ("ex2", False, 1000, 1234)]


def test_check_close_compares_tensors_arrays_and_numbers_within_tolerance(capsys):
    ref = torch.linspace(0, 1, 12).reshape(3, 4)
    assert checks.check_close("t-ok", ref * (1 + 1e-7), ref, rtol=1e-5)
    assert checks.check_close("np-ok", np.ones(5), np.ones(5) + 1e-9, atol=1e-6)
    assert checks.check_close("bf16", ref.bfloat16(), ref, rtol=1e-2, atol=1e-2)
    assert checks.check_close("scalar-tensor", torch.tensor(2.0), 2.0)
    assert checks.check_close("list", [1.0, 2.0], (1.0, 2.0 + 1e-9))
    assert not checks.check_close("t-bad", ref + 0.5 * (ref > 0.5), ref, what="LoRA output")
    assert not checks.check_close("shape", ref, ref.T, what="LoRA output")
    assert not checks.check_close("num", 1.01, 1.0, rtol=1e-3)
    out = lines(capsys)
    assert len(out) == 8
    assert "elements differ from the reference (max |difference| 0.5" in out[5]
    assert "LoRA output has shape (3, 4), expected (4, 3)" in out[6]
    assert out[7].startswith("✘ num: the value is 1.01, expected 1")


def test_check_records_values_the_grader_shows():
    checks.check_close("ex", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]),
                       values={"predicted_bytes": 4096, "big": torch.zeros(100)})
    rec = checks.results()[0]
    assert rec["got"] == [1.0, 2.0] and rec["expected"] == [1.0, 2.0]
    assert rec["values"]["predicted_bytes"] == 4096
    assert rec["values"]["big"] == {"shape": [100], "dtype": "torch.float32", "sum": 0.0, "abs_max": 0.0}
    json.dumps(rec)  # JSON-safe


def test_missing_return_is_named():
    assert not checks.check_equal("ex", None, 5, what="the count")
    assert "did your code forget to `return`" in checks.results()[0]["message"]


def in_cell(source: str, namespace: dict) -> None:
    """Run ``source`` as IPython runs a notebook cell: compiled from a file named like ipykernel's."""
    exec(compile(source, "/tmp/ipykernel_4242/1234567.py", "exec"), namespace)


def test_an_exercise_not_attempted_is_not_done_yet_with_no_hint(capsys):
    ns = {"checks": checks}
    in_cell("def lora_forward(x):\n    raise NotImplementedError('Exercise not done yet')\n", ns)
    in_cell("with checks.check('ex1-lora', hint='B starts at zero.', formula='y = Wx') as c:\n"
            "    c.close(lora_forward(1), 1.0)\n", ns)
    in_cell("with checks.check('ex2-value', hint='count bytes') as c:\n"
            "    c.equal(undefined_name, 3)\n", ns)   # the learner's exercise cell has not defined it
    out = lines(capsys)
    assert out[0] == ("✘ ex1-lora: not done yet: `lora_forward` still raises NotImplementedError; write your "
                      "code in its exercise cell, delete the raise line, and run that cell again")
    assert out[1] == ("✘ ex2-value: not done yet: `undefined_name` is not defined; fill in the exercise cell "
                      "above and run it before this check")
    recs = checks.results()
    assert [(r["passed"], r["state"], r["hint_level"]) for r in recs] == [(False, "not_attempted", 0)] * 2
    assert recs[0]["values"]["error"].startswith("NotImplementedError")


def test_an_error_in_library_code_or_outside_a_cell_is_a_wrong_answer_with_its_hint(capsys):
    def learner_code():
        return torch.empty(2, device="meta").tolist()   # torch's own NotImplementedError: not a stub

    with checks.check("ex1", hint="look at the device") as c:
        c.equal(learner_code(), [0, 0])
    with checks.check("ex2") as c:
        c.equal(undefined_name, 3)  # noqa: F821 — not raised by a notebook cell: reported as it is
    out = lines(capsys)
    assert out[0].startswith("✘ ex1: your code raised NotImplementedError") and out[0].endswith("Hint: look at the device")
    assert "name 'undefined_name' is not defined; run the exercise cell above" in out[1]
    assert [r["state"] for r in checks.results()] == ["wrong", "wrong"]


def test_hints_come_in_levels_and_in_the_learners_language(capsys):
    checks.start_lab("03", language="es")
    h = {"en": "look at the optimizer bucket", "es": "mira el bucket del optimizador"}
    f = {"en": "AdamW keeps two moments", "es": "AdamW guarda dos momentos"}
    for _ in range(2):
        checks.check_equal("ex1", 437_136, 874_128, what="optimizer bytes", hint=h, formula=f)
    checks.hint("ex1")
    out = lines(capsys)
    assert out[0] == ("✘ 03 ex1: optimizer bytes is 437,136, expected 874,128 (off by -436,992; 2x too small). "
                      "Pista: mira el bucket del optimizador (¿atascado? checks.hint('ex1') muestra la fórmula)")
    assert out[1].endswith("Pista: mira el bucket del optimizador Fórmula: AdamW guarda dos momentos")
    assert out[2:] == ["Pistas para ex1:", "  Pista: mira el bucket del optimizador",
                       "  Fórmula: AdamW guarda dos momentos"]
    assert [r["hint_level"] for r in checks.results(latest=False)] == [1, 2]
    checks.start_lab("03", language="en")


def test_a_dependent_check_names_its_cause_and_shows_numbers(capsys):
    checks.check_close("ex3-merge", 1.5, 2.0, what="delta_weight sum")
    with checks.check("ex3-unmerge", depends_on={"ex3-merge": "delta_weight"}) as c:
        c.true(False, what="W is back", detail="3 of 16 entries are off, the worst by 0.25")
    with checks.check("ex4", depends_on="ex9") as c:
        c.true(False, what="x")
    out = lines(capsys)
    assert out[1] == ("✘ ex3-unmerge: this fails because `delta_weight` (ex3-merge) is wrong; fix that first: "
                      "W is back does not hold: 3 of 16 entries are off, the worst by 0.25")
    assert "(ex9) has not run yet" in out[2]


def test_the_record_of_a_failed_block_holds_the_failing_comparison():
    with checks.check("ex1") as c:
        c.equal(10, 10, what="weights")
        c.equal(437_136, 874_128, what="optimizer")
    rec = checks.results()[0]
    assert (rec["got"], rec["expected"]) == (437_136, 874_128)


def test_check_block_combines_its_comparisons_into_one_line(capsys):
    with checks.check("all-good") as c:
        c.equal(2, 2, what="a")
        c.close(0.1 + 0.2, 0.3, what="b")
        c.values(n_params=65536)
    with checks.check("one-bad") as c:
        c.equal(2, 2, what="a")
        c.equal(3, 4, what="b")
    with checks.check("runs"):
        pass
    out = lines(capsys)
    assert out == ["✔ all-good: a = 2, as expected; b = 0.3 (reference 0.3)",
                   "✘ one-bad: b is 3, expected 4 (off by -1; 0.75x the expected)",
                   "✔ runs: your code ran without error"]
    assert checks.results()[0]["values"] == {"n_params": 65536}


def test_checks_never_raise_even_when_comparison_fails(capsys):
    class Weird:
        def __eq__(self, other):
            raise RuntimeError("no comparing me")

        def __bool__(self):
            raise RuntimeError("no truth")

    assert checks.check_equal("weird", Weird(), 1) is False
    assert checks.check_true("weird-bool", Weird()) is False
    with checks.check("weird-block") as c:
        c.true(Weird())
    assert [r["passed"] for r in checks.results()] == [False, False, False]
    assert "could not be compared" in checks.results()[0]["message"]
    assert len(lines(capsys)) == 3


def test_keyboard_interrupt_is_not_swallowed():
    # grading interrupts endless loops with SIGINT; a check block must let that through
    with pytest.raises(KeyboardInterrupt):
        with checks.check("loop"):
            raise KeyboardInterrupt


def test_fallback_uses_the_reference_only_when_the_exercise_is_not_done(capsys):
    checks.start_lab("02")

    def unsolved():
        raise NotImplementedError

    assert checks.fallback(lambda: 5, reference=lambda: 7, name="f") == 5
    assert checks.fallback(unsolved, reference=lambda: 7, name="lora_forward") == 7
    assert checks.fallback(lambda: None, reference=lambda: 7, name="g") == 7
    assert checks.fallback(lambda: 1 / 0, reference=lambda: 7, name="h") == 7
    out = lines(capsys)
    assert out == [
        "ℹ 02 lora_forward: using the reference implementation because your exercise is not done yet.",
        "ℹ 02 g: using the reference implementation because your code returned None (a missing `return`?).",
        "ℹ 02 h: using the reference implementation because your code raised ZeroDivisionError: division by zero."]
    assert checks.results() == []  # fallbacks are notes, not checks
    assert [r["name"] for r in checks._RECORDS if r["kind"] == "fallback"] == ["lora_forward", "g", "h"]


def test_fallback_tied_to_a_check_replaces_a_wrong_answer_that_does_not_raise(capsys):
    """A learner's wrong result (here 0) would make later cells fail far from the exercise."""
    checks.start_lab("05")
    checks.check_equal("ex3-bytes", 0, 384, what="bytes")
    capsys.readouterr()
    assert checks.fallback(lambda: 0, reference=lambda: 384, name="scores_bytes", check="ex3-bytes") == 384
    assert lines(capsys) == ["ℹ 05 scores_bytes: using the reference implementation because check ex3-bytes "
                             "has not passed, so your result is not used here."]
    assert checks.fallback(lambda: 1 / 0, reference=lambda: 384, name="s", check="ex3-bytes") == 384
    assert "raised ZeroDivisionError" in lines(capsys)[0]   # an exception still says what went wrong
    checks.check_equal("ex3-bytes", 384, 384)   # fixed and checked again: the learner's result is used
    assert checks.fallback(lambda: 385, reference=lambda: 384, name="scores_bytes", check="ex3-bytes") == 385


def test_summary_counts_the_latest_run_of_each_check(capsys):
    checks.start_lab("04")
    checks.check_equal("ex1", 1, 2)
    checks.check_equal("ex1", 2, 2)  # the learner fixed it and ran the check again
    checks.check_equal("ex2", 1, 2, what="bytes")
    capsys.readouterr()
    assert checks.tally("04") == (1, 2)
    assert checks.passed("ex1") and not checks.passed("ex2") and not checks.passed("never-ran")
    checks.summary()
    assert lines(capsys) == ["✘ Checks in lab 04: 1 of 2 passed, 1 wrong.",
                             "  ✘ ex2: bytes is 1, expected 2 (off by -1; 2x too small)"]
    with pytest.raises(AssertionError, match="ex2"):
        checks.assert_all_passed()


def test_assert_all_passed_needs_at_least_one_check():
    with pytest.raises(AssertionError, match="No check ran"):
        checks.assert_all_passed()


def test_records_go_to_the_file_named_by_the_environment(tmp_path, monkeypatch, capsys):
    path = tmp_path / "checks.jsonl"
    monkeypatch.setenv(checks.CHECKS_FILE_ENV, str(path))
    checks.check_equal("ex1", 1, 1)
    checks.fallback(lambda: None, reference=lambda: 0, name="f")
    with open(path, "a") as f:
        f.write('{"kind": "check", "torn')  # a kernel killed mid-write
    recs = checks.read_checks_file(path)
    assert [r["kind"] for r in recs] == ["env", "check", "fallback"]
    assert recs[0]["cuda_available"] == torch.cuda.is_available() and recs[0]["device"].startswith("Device: ")
    assert recs[1]["name"] == "ex1" and recs[1]["passed"] is True
    assert checks.read_checks_file(tmp_path / "absent.jsonl") == []
