"""course.learner: profiles, make start, and the header every lab prints first."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from course import checks, learner

from minigpt.paths import ROOT  # noqa: E402


@pytest.fixture()
def course(tmp_path):
    """A course root with the real template and the fixture labs."""
    (tmp_path / "learners" / "TEMPLATE").mkdir(parents=True)
    shutil.copy(ROOT / "learners" / "TEMPLATE" / "profile.md", tmp_path / "learners" / "TEMPLATE" / "profile.md")
    shutil.copytree(ROOT / "tests" / "fixtures" / "notebooks" / "labs", tmp_path / "labs")
    return tmp_path


def write_profile(path: Path, **fields) -> Path:
    meta = {"name": "ana", "language": "en", "hardware": "cpu", "gpu_memory_gib": "null", "phase": 28, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n" + "".join(f"{k}: {v}\n" for k, v in meta.items()) + "---\nnotes\n", encoding="utf-8")
    return path


def test_shipped_profiles_are_valid():
    borja = learner.load_profile(ROOT / "learners" / "borja" / "profile.md")
    assert (borja.name, borja.language, borja.hardware, borja.gpu_memory_gib, borja.phase) == \
        ("borja", "es", "cpu", None, 28)
    assert "GPU" in borja.notes
    template = learner.load_profile(ROOT / "learners" / "TEMPLATE" / "profile.md")
    assert (template.language, template.hardware, template.phase) == ("en", "cpu", 28)


@pytest.mark.parametrize("fields, message", [
    ({"language": "fr"}, "language must be 'en' or 'es', got 'fr'"),
    ({"hardware": "tpu"}, "hardware must be 'cpu' or 'cuda'"),
    ({"hardware": "cuda"}, "set gpu_memory_gib to the GPU's memory in GiB"),
    ({"gpu_memory_gib": 24}, "gpu_memory_gib is for hardware: cuda"),
    ({"phase": "twenty"}, "phase must be the course phase"),
    ({"name": "Ana Pérez"}, "name must be the learner's folder name"),
])
def test_bad_profiles_are_one_sentence_saying_what_to_change(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        learner.load_profile(write_profile(tmp_path / "profile.md", **fields))


def test_cuda_profile_reads_its_gpu_memory(tmp_path):
    p = learner.load_profile(write_profile(tmp_path / "profile.md", hardware="cuda", gpu_memory_gib=24))
    assert p.gpu_memory_gib == 24.0


@pytest.mark.parametrize("name", ["", "Ana", "../x", "a b", "TEMPLATE", "x" * 33, "-a"])
def test_bad_learner_names_are_refused(name):
    with pytest.raises(ValueError, match="make start LEARNER=ana|not allowed"):
        learner.validate_name(name)


def test_profile_is_found_from_the_lab_folder_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(learner.PROFILE_ENV, raising=False)
    write_profile(tmp_path / "learners" / "ana" / "profile.md", language="es")
    labs = tmp_path / "learners" / "ana" / "labs"
    labs.mkdir()
    assert learner.active_profile(labs).language == "es"
    assert learner.active_profile(tmp_path) is None
    other = write_profile(tmp_path / "elsewhere" / "profile.md", name="eva")
    monkeypatch.setenv(learner.PROFILE_ENV, str(other))
    assert learner.active_profile(labs).name == "eva"
    monkeypatch.setenv(learner.PROFILE_ENV, "")  # explicitly none (how grading runs solutions)
    assert learner.active_profile(labs) is None


def test_start_creates_the_profile_and_copies_the_labs(course):
    result = learner.start("ana", course)
    assert result.created_profile and result.added == ["01-fixture-lora-count.ipynb", "02-fixture-gib.ipynb"]
    profile = learner.load_profile(course / "learners" / "ana" / "profile.md")
    assert profile.name == "ana"
    for name in result.added:
        assert (course / "learners" / "ana" / "labs" / name).read_bytes() == (course / "labs" / name).read_bytes()


def test_start_never_overwrites_and_adds_new_labs(course):
    learner.start("ana", course)
    home = course / "learners" / "ana"
    (home / "profile.md").write_text((home / "profile.md").read_text().replace("language: en", "language: es"))
    work = home / "labs" / "01-fixture-lora-count.ipynb"
    work.write_text('{"my": "work"}')
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.rglob("*") if p.is_file()}
    shutil.copy(course / "labs" / "02-fixture-gib.ipynb", course / "labs" / "03-new-lab.ipynb")  # a new lab appears
    result = learner.start("ana", course)
    assert not result.created_profile
    assert result.added == ["03-new-lab.ipynb"]
    assert result.kept == ["01-fixture-lora-count.ipynb", "02-fixture-gib.ipynb"]
    for path, digest in before.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    assert learner.load_profile(home / "profile.md").language == "es"


def test_start_with_no_labs_yet_still_makes_the_workspace(course):
    shutil.rmtree(course / "labs")
    result = learner.start("ana", course)
    assert result.created_profile and result.added == [] and (course / "learners" / "ana" / "labs").is_dir()


def test_make_start_command_rejects_a_bad_name(capsys):
    assert learner.main(["start", "Bad Name"]) == 2
    out = capsys.readouterr().out.strip()
    assert out.count(".") >= 1 and "not allowed" in out and "\n" not in out


def test_lab_header_prints_spanish_first_and_the_cpu_path_for_borja(monkeypatch, capsys):
    monkeypatch.setenv(learner.PROFILE_ENV, str(ROOT / "learners" / "borja" / "profile.md"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile = learner.lab_header("03", title="Memory footprint", summary_en="Where the bytes go.",
                                 summary_es="Dónde van los bytes.",
                                 cpu_note_en="Cells 7-9 use the tracker.", cpu_note_es="Las celdas 7-9 usan el rastreador.")
    out = capsys.readouterr().out
    assert profile.name == "borja" and checks.current_lab() == "03"
    assert out.index("[es] Dónde van los bytes.") < out.index("[en] Where the bytes go.")
    assert "Camino de CPU: Las celdas 7-9 usan el rastreador." in out
    assert "Device: CPU" in out and "Learner: borja (es, cpu, phase 28)" in out


def test_lab_header_without_a_profile_is_english_first_and_never_raises(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(learner.PROFILE_ENV, "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    learner.lab_header("01", title="T", summary_en="EN text", summary_es="ES text")
    out = capsys.readouterr().out
    assert out.index("[en] EN text") < out.index("[es] ES text")
    assert "CPU path: No CUDA GPU in this kernel" in out  # the generic note when the lab gives none
    broken = tmp_path / "profile.md"
    broken.write_text("no front matter")
    monkeypatch.setenv(learner.PROFILE_ENV, str(broken))
    assert learner.lab_header("01", title="T", summary_en="EN", summary_es="ES") is None
    assert "Learner profile not used:" in capsys.readouterr().out


def test_lab_header_warns_when_the_profile_promises_a_gpu_that_is_absent(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(learner.PROFILE_ENV, str(write_profile(tmp_path / "p.md", hardware="cuda", gpu_memory_gib=24)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    learner.lab_header("01", title="T", summary_en="EN", summary_es="ES")
    assert "this kernel sees no CUDA GPU: this run takes the CPU path" in capsys.readouterr().out


def test_environment_note_is_silent_in_the_course_kernel_and_one_line_elsewhere(tmp_path, monkeypatch):
    """The course's .venv matches requirements.txt; another kernel (VS Code's default interpreter, a cloud
    host) gets one line naming what differs and which kernel to use."""
    import importlib.metadata
    assert learner.environment_note() is None
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.5.1+cu121" if name == "torch" else real(name))
    note = learner.environment_note()
    assert note.count("\n") == 0 and "torch 2.5.1+cu121 (pinned 2.13.0)" in note and "Phase 28 (minigpt)" in note
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.13.0+cu126" if name == "torch" else real(name))
    assert learner.environment_note() is None, "a build tag (+cu126) is the same release"
    assert learner.environment_note(tmp_path) is None, "no requirements.txt: nothing to compare"
