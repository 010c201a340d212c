"""minigpt.memory.gpu_check: the labs' GPU table, exercised on CPU (the GPU path with a traced step
standing in for the measurement), and the bf16 -> fp16 fallback of cards older than Ampere."""
from __future__ import annotations

import pytest
import torch

from minigpt.memory import gpu_check
from minigpt.memory.compare import measure
from minigpt.memory.estimate import estimate


@pytest.mark.parametrize("cap,expected", [((7, 5), "amp-fp16"), ((7, 0), "amp-fp16"), ((8, 0), "amp-bf16"),
                                          ((8, 9), "amp-bf16"), ((9, 0), "amp-bf16")])
def test_amp_bf16_falls_back_to_fp16_below_ampere_and_says_why(cap, expected):
    got, why = gpu_check.amp_precision("amp-bf16", cap)
    assert got == expected
    if expected == "amp-fp16":
        assert why.count("\n") == 0 and f"sm_{cap[0]}{cap[1]}" in why and "no bf16" in why
    else:
        assert why is None


def test_pure_bf16_falls_back_to_pure_fp16_and_other_precisions_are_left_alone():
    assert gpu_check.amp_precision("bf16", (7, 5))[0] == "fp16"
    for p in ("fp32", "amp-fp16", "fp16"):
        assert gpu_check.amp_precision(p, (7, 5)) == (p, None)


def test_on_cpu_the_precision_is_left_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.amp_precision("amp-bf16") == ("amp-bf16", None)


def test_cpu_path_prints_one_line_saying_it_was_skipped(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.gpu_table("03") is None
    out = capsys.readouterr().out.strip()
    assert out == gpu_check.SKIPPED and "\n" not in out and "skipped" in out


def test_unknown_lab_is_one_clear_sentence():
    with pytest.raises(ValueError, match="lab must be one of 01, 02, 03, 04, 05"):
        gpu_check.gpu_table("3")


@pytest.mark.parametrize("lab", sorted(gpu_check.LAB_CASES))
def test_every_lab_case_is_a_valid_estimate(lab):
    for name, kw in gpu_check.LAB_CASES[lab].items():
        est = estimate(**kw, semantics="cuda")
        assert est.peak > 0, name


def test_gpu_path_on_a_pretend_t4_writes_the_table(tmp_path, monkeypatch, capsys):
    """The GPU branch end to end with a fake-tensor trace standing in for the CUDA measurement."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(gpu_check, "RUNS_DIR", tmp_path)
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path.parent)
    meta = {"card": "Tesla T4 (sm_75, 14.6 GiB)", "driver": "550.54", "cuda": "12.4", "torch": "2.5.1+cu124",
            "date": "2026-12-07"}
    monkeypatch.setattr(gpu_check, "card", lambda: meta)
    seen = []

    def fake_measure(mode, **kw):
        seen.append(kw["precision"])
        rep = measure(mode="fake", **kw)
        rep.reserved = rep.peak + 2**20
        return rep

    monkeypatch.setattr("minigpt.memory.compare.measure", fake_measure)
    rows = gpu_check.gpu_table("03")
    out = capsys.readouterr().out
    assert seen == ["fp32", "amp-fp16", "fp32"]            # bf16 ran as fp16 on sm_75
    assert out.count("has no bf16 arithmetic") == 1
    assert [r.case for r in rows] == list(gpu_check.LAB_CASES["03"])
    for r in rows:
        assert r.measured > 0 and r.reserved == r.measured + 2**20
        assert abs(r.error_pct) < 25, r                     # the estimator against the trace of the same step
    written = list(tmp_path.glob("lab03-tesla-t4-2026-12-07.md"))
    assert len(written) == 1
    text = written[0].read_text()
    for v in meta.values():
        assert v in text
    assert text.count("\n| ") == 1 + len(rows) and "max_memory_allocated" in text


def test_out_of_memory_is_a_row_not_a_crash():
    row = gpu_check.GpuRow("big", "fp32", None, None, 5 * 2**30)
    table = gpu_check.format_table("05", [row], {"card": "x"})
    assert "| big | fp32 | out of memory | — | 5120.0 | — |" in table and row.error_pct is None


def test_committed_gpu_runs_name_their_card_and_were_measured():
    from minigpt.paths import ROOT
    runs = ROOT / "docs" / "gpu-runs"
    assert (runs / "README.md").is_file()
    for path in sorted(runs.glob("lab*.md")):
        text = path.read_text(encoding="utf-8")
        for field in ("- card: ", "- driver: ", "- torch: ", "- date: ", "torch.cuda.max_memory_allocated()"):
            assert field in text, f"{path.name}: no '{field.strip()}' line (copy the file gpu_table wrote, unchanged)"
        assert "| measured MiB |" in text
