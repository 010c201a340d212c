"""The cloud-GPU path (course/cloud.py, scripts/cloud_setup.py, course/cloud_cells.py), tested on CPU.

Colab and Kaggle cannot be reached from here, so the bootstrap cell runs in a fake host: a fresh
virtual environment that already has a different torch ("2.5.1+cu121", as a Colab image has) and
sees the course's other packages, with no package index (PIP_NO_INDEX=1) and the repository
cloned from a local file:// URL. The install must leave that torch in place and print what it did.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from course import cloud

from minigpt.paths import ROOT  # noqa: E402
sys.path.insert(0, str(ROOT / "scripts"))
import cloud_setup  # noqa: E402  (standard library only: it runs before anything is installed)

from course import cloud_cells  # noqa: E402

HOST_TORCH = "2.5.1+cu121"
SOLUTIONS = sorted(ROOT.glob("solutions/[0-9][0-9]-*.ipynb"))
LABS = sorted(ROOT.glob("labs/[0-9][0-9]-*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def src(cell: dict) -> str:
    return "".join(cell["source"])


# --- what the notebooks and README carry -----------------------------------------------------------

def test_cloud_cells_and_links_are_up_to_date():
    r = subprocess.run([sys.executable, "-m", "course.cloud_cells", "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", SOLUTIONS + LABS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_lab_opens_with_the_links_and_the_bootstrap_cell(path):
    cs = cells(path)
    md = [c for c in cs if c["cell_type"] == "markdown"]
    code = [c for c in cs if c["cell_type"] == "code"]
    assert cloud.links_line(path.name) in src(md[0])
    assert src(code[0]) == cloud.bootstrap_cell_source() and cloud.CELL_TAG in code[0]["metadata"]["tags"]
    assert "lab_header(" in src(code[1]), "the lab header comes right after the bootstrap cell"
    for c in md:  # every relative link to a repository file has its GitHub twin
        for m in re.finditer(r"\]\(\.\./([^)#\s]+)[^)]*\)(.{0,12})", src(c)):
            assert (ROOT / m.group(1)).exists(), f"{path.name}: link to a missing file {m.group(1)}"
            assert m.group(2).startswith(" ([GitHub]("), f"{path.name}: ../{m.group(1)} has no GitHub twin"


def test_readme_links_every_lab_on_colab_and_kaggle():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for p in SOLUTIONS:
        assert f"[Open in Colab]({cloud.colab_url(p.name)})" in text
        assert f"[Open in Kaggle]({cloud.kaggle_url(p.name)})" in text


def test_urls_are_built_from_the_one_configuration_value():
    repo = "https://github.com/ana/phase28"
    assert cloud.colab_url("03-x.ipynb", repo, "v1") == \
        "https://colab.research.google.com/github/ana/phase28/blob/v1/labs/03-x.ipynb"
    assert cloud.kaggle_url("03-x.ipynb", repo, "v1") == \
        "https://kaggle.com/kernels/welcome?src=https://github.com/ana/phase28/blob/v1/labs/03-x.ipynb"
    assert cloud.github_url("theory/02-lora.md", repo) == "https://github.com/ana/phase28/blob/main/theory/02-lora.md"
    with pytest.raises(ValueError, match="COURSE_REPO must be a GitHub URL"):
        cloud.repo_slug("https://gitlab.com/ana/phase28")


def test_twin_links_is_idempotent_and_keeps_anchors():
    once = cloud_cells.twin_links("see [theory 03](../theory/03-memory-footprint.md#buckets).")
    assert once == cloud_cells.twin_links(once)
    assert once.endswith(f" ([GitHub]({cloud.github_url('theory/03-memory-footprint.md')}#buckets)).")


# --- requirements-cloud.txt ------------------------------------------------------------------------

def test_requirements_cloud_is_generated_from_requirements():
    want = cloud_setup.cloud_requirements((ROOT / "requirements.txt").read_text())
    assert (ROOT / "requirements-cloud.txt").read_text() == want, \
        "requirements-cloud.txt is stale: python scripts/cloud_setup.py --write-requirements"
    pins = [ln for ln in want.splitlines() if ln and not ln.startswith("#")]
    assert pins and not any(ln.startswith("torch==") for ln in pins), "the host's torch must never be pinned there"


def test_labs_never_import_what_the_host_provides_instead():
    """A package left out of requirements-cloud.txt (except torch) must not be needed by a lab."""
    left_out = {n for n in cloud_setup.HOST_PROVIDED if n not in ("torch", "ipykernel")}
    modules = {"jupyterlab", "nbclient", "nbformat", "nbval", "pytest"} & left_out
    for p in SOLUTIONS:
        for c in cells(p):
            if c["cell_type"] == "code":
                for m in modules:
                    assert not re.search(rf"^\s*(import|from) {m}\b", src(c), re.M), f"{p.name} imports {m}"


def test_version_note_ignores_the_build_tag_and_names_both_versions():
    assert cloud_setup.version_note("2.13.0+cu121", "2.13.0") is None
    note = cloud_setup.version_note(HOST_TORCH, "2.13.0")
    assert "2.13.0" in note and HOST_TORCH in note and "\n" not in note


# --- the bootstrap cell ----------------------------------------------------------------------------

def run_cell(python: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", cloud.bootstrap_cell_source()], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COLAB_", "KAGGLE_", "PHASE28_", "PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(extra)
    return env


def test_off_the_hosts_the_cell_prints_one_line_and_installs_nothing(tmp_path):
    r = run_cell(sys.executable, clean_env(), tmp_path)
    assert r.returncode == 0 and r.stdout == cloud.NOT_ON_HOST + "\n" and r.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_a_kernel_without_minigpt_gets_one_line_saying_which_kernel(tmp_path):
    r = subprocess.run([sys.executable, "-I", "-S", "-c", cloud.bootstrap_cell_source()], capture_output=True,
                       text=True, env=clean_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    assert "cannot import minigpt" in r.stdout and "Phase 28 (minigpt)" in r.stdout


def test_hosts_are_recognised_the_way_their_tools_do(monkeypatch):
    for k in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(k, raising=False)
    assert cloud.cloud_host() is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert cloud.cloud_host() == "Kaggle"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261201")
    assert cloud.cloud_host() == "Colab"


def _course_repo(dest: Path) -> str:
    """A git repository holding what the bootstrap needs from this checkout (its current files)."""
    for name in ("requirements.txt", "requirements-cloud.txt", "requirements-data.txt", "pyproject.toml",
                 "scripts/cloud_setup.py"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    for pkg in ("minigpt", "course"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(dest), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(dest)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "course"], check=True)
    return dest.as_uri()


def _fake_host(root: Path) -> str:
    """A venv with torch HOST_TORCH "installed" (its metadata) and the course's packages visible."""
    venv = root / "host"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dist = site / f"torch-{HOST_TORCH}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {HOST_TORCH}\n")
    (dist / "INSTALLER").write_text("host\n")
    (dist / "RECORD").write_text("")
    # The host's own packages (pip, setuptools, transformers, ...): this environment's, after its own.
    (site / "zz-host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _torch_version(python: str) -> str:
    return subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_on_a_fake_colab_the_cell_installs_the_course_and_keeps_the_hosts_torch(tmp_path):
    python = _fake_host(tmp_path)
    assert _torch_version(python) == HOST_TORCH
    work = tmp_path / "content"
    work.mkdir()
    env = clean_env(COLAB_RELEASE_TAG="release-colab-test", PHASE28_REPO=_course_repo(tmp_path / "repo"),
                    PIP_NO_INDEX="1", PIP_NO_CACHE_DIR="1", HOME=str(tmp_path))
    r = run_cell(python, env, work)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert _torch_version(python) == HOST_TORCH, "the install replaced the host's torch"
    assert f"torch {HOST_TORCH} (the host's own build, left in place)" in out
    warning = [ln for ln in out.splitlines() if ln.startswith("WARNING: the course pins torch")]
    assert len(warning) == 1 and HOST_TORCH in warning[0]
    ready = [ln for ln in out.splitlines() if ln.startswith("Phase 28 is ready on Colab")]
    assert len(ready) == 1 and "cloned the course into" in ready[0] and f"torch stays {HOST_TORCH}" in ready[0]
    clone = work / "repo"
    assert (clone / ".git").is_dir()
    # the course is installed (editable) from the clone: importable from any folder
    where = subprocess.run([python, "-c", "import minigpt, os; print(os.path.dirname(minigpt.__file__))"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert where.stdout.strip() == str(clone / "minigpt"), where.stderr

    # again, as after a restart: the clone is found, nothing changes, torch still the host's
    again = run_cell(python, dict(env, PHASE28_HOME=str(clone)), work)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "found the course in" in out and "pip changed nothing" in out
    assert _torch_version(python) == HOST_TORCH
