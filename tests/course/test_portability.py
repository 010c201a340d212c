"""Checked outputs hold on every CPU (course/portability.py), and every notebook opens in the course's kernel."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import nbformat
import pytest

from minigpt.paths import ROOT  # noqa: E402
from course import portability as port  # noqa: E402

NOTEBOOKS = sorted(ROOT.glob("solutions/*.ipynb")) + sorted(ROOT.glob("labs/*.ipynb")) \
    + sorted(ROOT.glob("tests/fixtures/notebooks/*/*.ipynb"))  # learners' copies are theirs: make start copies labs/


def makefile() -> str:
    return (ROOT / "Makefile").read_text()


def test_make_test_runs_the_notebooks_under_the_test_setting():
    m = re.search(r"^NB_TEST_ENV\s*:=\s*(.+)$", makefile(), re.M)
    assert m, "Makefile: NB_TEST_ENV is gone"
    words = dict(w.split("=", 1) for w in shlex.split(m.group(1)))
    assert words == port.SETTINGS["test"], "Makefile's NB_TEST_ENV and course/portability.py's 'test' setting differ"
    recipe = makefile().split("test-notebooks: $(STAMP)", 1)[1].split("\n\n", 1)[0]
    assert "env $(NB_TEST_ENV) $(PY) -m pytest" in recipe and "--nbval-lax" in recipe


def test_the_test_setting_differs_from_the_store_setting_in_kernels_and_threads():
    store, test = port.SETTINGS["store"], port.SETTINGS["test"]
    assert store.get("ATEN_CPU_CAPABILITY") != test["ATEN_CPU_CAPABILITY"]
    assert store.get("MINIGPT_THREADS", "2") != test["MINIGPT_THREADS"]
    from minigpt.repro import DEFAULT_THREADS
    assert DEFAULT_THREADS == 2, "the store setting's 2 threads come from set_seed()'s default"


def test_env_subcommand_prints_the_setting():
    out = subprocess.run([sys.executable, "-m", "course.portability", "env", "test"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert dict(w.split("=", 1) for w in out) == port.SETTINGS["test"]


def test_checked_outputs_reads_stream_text_results_and_errors_of_marked_cells_only():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="1\n")]),
        nbformat.v4.new_code_cell("print(2)", outputs=[nbformat.v4.new_output("stream", name="stdout", text="2\n")]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n3", outputs=[
            nbformat.v4.new_output("execute_result", data={"text/plain": "3"}, execution_count=1)]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n1/0", outputs=[
            nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])]),
    ])
    assert port.checked_outputs(nb) == {0: "1\n", 2: "3", 3: "ERROR ZeroDivisionError: division by zero\n"}


def test_execute_restores_the_callers_environment(monkeypatch):
    """execute() sets a setting's variables for the kernel only; the caller's values come back."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("MINIGPT_THREADS", raising=False)
    seen = {}

    class FakeClient:
        def __init__(self, nb, **kw):
            pass

        def execute(self):
            import os
            seen.update({k: os.environ.get(k) for k in port._KNOBS})

    monkeypatch.setattr("nbclient.NotebookClient", FakeClient)
    nb_path = ROOT / "tests" / "fixtures" / "notebooks" / "solutions" / "02-fixture-gib.ipynb"
    port.execute(nb_path, "test")
    assert {k: v for k, v in seen.items() if v is not None} == port.SETTINGS["test"]
    import os
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and "MINIGPT_THREADS" not in os.environ


def test_unknown_setting_is_one_clear_sentence():
    r = subprocess.run([sys.executable, "-m", "course.portability", "check", "--settings", "arm"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown setting 'arm': choose from store, test" in r.stderr


def test_threads_override_is_read_and_a_bad_value_says_what_to_set(monkeypatch):
    from minigpt.repro import thread_count
    monkeypatch.setenv("MINIGPT_THREADS", "1")
    assert thread_count(2) == 1
    monkeypatch.setenv("MINIGPT_THREADS", "two")
    with pytest.raises(ValueError, match="set it to a whole number of threads >= 1, or unset it"):
        thread_count(2)
    monkeypatch.delenv("MINIGPT_THREADS")
    assert thread_count(2) == 2 and thread_count(None) is None


# --- one kernel ----------------------------------------------------------------------------------

def registered_kernel() -> dict:
    m = re.search(r'ipykernel install --prefix \$\(VENV\) --name (\S+) --display-name "([^"]+)"', makefile())
    assert m, "Makefile no longer registers the course's kernel with ipykernel install"
    return {"name": m.group(1), "display_name": m.group(2), "language": "python"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_notebook_declares_the_kernel_make_lab_registers(path):
    spec = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("kernelspec")
    assert spec == registered_kernel(), (
        f"{path.relative_to(ROOT)} declares kernel {spec}; set its metadata.kernelspec to {registered_kernel()} "
        "(the kernel `make lab` registers), e.g. Kernel > Change Kernel > Phase 28 (minigpt), and save")
