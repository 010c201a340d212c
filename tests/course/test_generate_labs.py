"""course/labs.py: labs come from solutions, deterministically, and never go stale."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minigpt.paths import ROOT  # noqa: E402
FIXTURES = ROOT / "tests" / "fixtures" / "notebooks"

from course import labs as gen  # noqa: E402


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def src(cell: dict) -> str:
    return "".join(cell["source"])


def test_course_labs_are_up_to_date_with_solutions():
    found = gen.problems(ROOT / "solutions", ROOT / "labs")
    assert found == [], "\n".join(found)


def test_fixture_labs_are_up_to_date_with_fixture_solutions():
    found = gen.problems(FIXTURES / "solutions", FIXTURES / "labs")
    assert found == [], "\n".join(found) + "\n(python course/labs.py --solutions " \
                                           "tests/fixtures/notebooks/solutions --labs tests/fixtures/notebooks/labs)"


def test_generation_is_byte_identical_on_rerun(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    gen.generate(FIXTURES / "solutions", first)
    gen.generate(FIXTURES / "solutions", second)
    names = sorted(p.name for p in first.glob("*.ipynb"))
    assert names == ["01-fixture-lora-count.ipynb", "02-fixture-gib.ipynb"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
        text = (first / name).read_text(encoding="utf-8")
        assert text.endswith("}\n") and '\n "cells": [' in text  # indent 1, trailing newline
    written, _ = gen.generate(FIXTURES / "solutions", first)
    assert written == []  # nothing changed: nothing rewritten


def test_exercises_become_stubs_at_their_indentation_and_solutions_vanish():
    lab = gen.make_lab(load(FIXTURES / "solutions" / "01-fixture-lora-count.ipynb"), "01-fixture-lora-count.ipynb")
    text = gen.render(lab)
    exercises = [c for c in lab["cells"] if c["metadata"].get("minigpt", {}).get("role") == "exercise"]
    assert len(exercises) == 3
    fn = src(exercises[0])
    assert '    """Trainable parameters' in fn
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in fn  # inside the function body
    assert fn.endswith("lora_params(64, 64, 4)")  # code after the block is kept
    assert src(exercises[1]).startswith("# YOUR CODE HERE\nraise NotImplementedError(")  # top level
    assert "r * d_in + d_out * r" not in text and "4 * n_params" not in text
    assert "n_layer * 2 * lora_params" not in text and src(exercises[2]).endswith("qv_params(12, 768, 8)")
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text


def test_hidden_code_and_nbval_markers_are_dropped_and_outputs_cleared():
    sol = load(FIXTURES / "solutions" / "01-fixture-lora-count.ipynb")
    sol["cells"][7]["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["x\n"]}]
    sol["cells"][7]["execution_count"] = 7
    lab = gen.make_lab(sol, "01-fixture-lora-count.ipynb")
    text = gen.render(lab)
    assert "assert_all_passed" not in text and "HIDDEN" not in text
    assert "assert lora_params(1, 1, 1)" not in text  # a fully hidden cell is dropped
    assert len(lab["cells"]) == len(sol["cells"]) - 1
    assert "NBVAL" not in text
    assert src(lab["cells"][-1]) == "checks.summary()"
    for cell in lab["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert lab["metadata"]["minigpt"] == {"lab": "01", "generated_from": "solutions/01-fixture-lora-count.ipynb"}
    assert [c["id"] for c in lab["cells"]][:3] == ["fx01-00", "fx01-01", "fx01-02"]  # ids kept


def test_written_answers_become_prompts_that_keep_their_marker():
    lab = gen.make_lab(load(FIXTURES / "solutions" / "01-fixture-lora-count.ipynb"), "01-fixture-lora-count.ipynb")
    answers = [c for c in lab["cells"] if c["metadata"].get("minigpt", {}).get("role") == "answer"]
    assert len(answers) == 1
    assert src(answers[0]) == "<!-- ANSWER: 01-why-lora-is-small -->\n*Write your answer here.*"
    assert answers[0]["metadata"]["minigpt"]["answer"] == "01-why-lora-is-small"
    assert "256 times fewer" not in gen.render(lab)


def test_stale_missing_and_orphan_labs_are_reported(tmp_path):
    sols, labs = tmp_path / "solutions", tmp_path / "labs"
    shutil.copytree(FIXTURES / "solutions", sols)
    gen.generate(sols, labs)
    assert gen.problems(sols, labs) == []

    nb = load(sols / "02-fixture-gib.ipynb")
    nb["cells"][0]["source"] = ["# Fixture lab 02, edited by an author"]
    (sols / "02-fixture-gib.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (labs / "01-fixture-lora-count.ipynb").unlink()
    shutil.copy(labs / "02-fixture-gib.ipynb", labs / "07-no-solution.ipynb")
    found = gen.problems(sols, labs)
    assert found == [
        "labs/01-fixture-lora-count.ipynb is missing: run make generate-labs.",
        "labs/02-fixture-gib.ipynb is stale (solutions/02-fixture-gib.ipynb changed, or the lab was edited "
        "by hand): run make generate-labs.",
        "labs/07-no-solution.ipynb has no solutions/07-no-solution.ipynb: delete the lab "
        "(make generate-labs PRUNE=1) or add its solution."]
    assert gen.main(["--check", "--solutions", str(sols), "--labs", str(labs)]) == 1
    assert gen.main(["--solutions", str(sols), "--labs", str(labs)]) == 1  # the orphan is left, loudly
    assert gen.main(["--prune", "--solutions", str(sols), "--labs", str(labs)]) == 0
    assert gen.problems(sols, labs) == []
    assert gen.main(["--check", "--solutions", str(sols), "--labs", str(labs)]) == 0


def test_a_hand_edited_lab_counts_as_stale(tmp_path):
    labs = tmp_path / "labs"
    gen.generate(FIXTURES / "solutions", labs)
    path = labs / "02-fixture-gib.ipynb"
    path.write_text(path.read_text(encoding="utf-8").replace("GiB", "GB"), encoding="utf-8")
    assert [p.split(" ")[0] for p in gen.problems(FIXTURES / "solutions", labs)] == ["labs/02-fixture-gib.ipynb"]


def _nb(*sources: str, cell_type: str = "code") -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": cell_type, "id": f"c{i}", "metadata": {}, "source": s,
                       **({"outputs": [], "execution_count": None} if cell_type == "code" else {})}
                      for i, s in enumerate(sources)]}


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION", "without a matching BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN\n", "inside an open solution block"),
    ("### BEGIN HIDDEN\nx = 1\n### END SOLUTION", "without a matching BEGIN"),
])
def test_broken_markers_are_one_clear_sentence(source, message):
    with pytest.raises(gen.AuthoringError, match=message):
        gen.make_lab(_nb(source), "05-x.ipynb")


def test_authoring_errors_for_names_answers_and_markdown_solutions():
    with pytest.raises(gen.AuthoringError, match="NN-lowercase-words.ipynb"):
        gen.make_lab(_nb("x = 1"), "Lab Five.ipynb")
    with pytest.raises(gen.AuthoringError, match="used twice"):
        gen.make_lab(_nb("<!-- ANSWER: a -->\none", "<!-- ANSWER: a -->\ntwo", cell_type="markdown"), "05-x.ipynb")
    with pytest.raises(gen.AuthoringError, match="no reference answer"):
        gen.make_lab(_nb("<!-- ANSWER: a -->\n", cell_type="markdown"), "05-x.ipynb")
    with pytest.raises(gen.AuthoringError, match="belong in code cells"):
        gen.make_lab(_nb("### BEGIN SOLUTION\ntext\n### END SOLUTION", cell_type="markdown"), "05-x.ipynb")


def test_cells_without_ids_get_stable_ones():
    nb = _nb("x = 1", "y = 2")
    for cell in nb["cells"]:
        del cell["id"]
    nb["nbformat_minor"] = 4
    a, b = gen.make_lab(nb, "05-x.ipynb"), gen.make_lab(json.loads(json.dumps(nb)), "05-x.ipynb")
    assert [c["id"] for c in a["cells"]] == [c["id"] for c in b["cells"]]
    assert len({c["id"] for c in a["cells"]}) == 2 and a["nbformat_minor"] == 5
