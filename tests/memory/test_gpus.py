"""minigpt.memory.gpus: card lookup, the bf16 rule, cuBLAS workspace sizes, the attention kernel each card
dispatches, cited context sizes; and the schema of docs/gpu-runs/public_measurements.json."""
from __future__ import annotations

import json

import pytest
import torch

from minigpt.memory import gpus
from minigpt.memory.gpu_check import amp_precision
from minigpt.paths import ROOT

MEASUREMENTS = ROOT / "docs" / "gpu-runs" / "public_measurements.json"


@pytest.mark.parametrize("name,expected", [("t4", "Tesla T4"), ("T4", "Tesla T4"), (" Tesla T4 ", "Tesla T4"),
                                           ("a100-80gb", "NVIDIA A100-SXM4-80GB"), ("A100", "NVIDIA A100-SXM4-40GB"),
                                           ("h100", "NVIDIA H100 80GB HBM3"), ("L4", "NVIDIA L4"),
                                           ("a10g", "NVIDIA A10G"), ("V100", "Tesla V100-SXM2-16GB")])
def test_lookup_accepts_the_usual_spellings(name, expected):
    assert gpus.gpu(name).name == expected


def test_unknown_card_gets_one_sentence_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        gpus.gpu("rtx-9090")
    msg = str(err.value)
    assert "\n" not in msg and "'rtx-9090'" in msg
    for spec in gpus.GPUS:
        assert spec.aliases[0] in msg


def test_compute_capabilities_and_the_bf16_rule_agree_with_gpu_check():
    sms = {s.aliases[0]: s.sm for s in gpus.GPUS}
    assert sms == {"t4": (7, 5), "v100": (7, 0), "a10g": (8, 6), "l4": (8, 9), "a100": (8, 0),
                   "a100-80gb": (8, 0), "h100": (9, 0)}
    for spec in gpus.GPUS:
        assert spec.bf16 == (spec.sm[0] >= 8)
        # gpu_check falls back to fp16 exactly on the cards without bf16
        assert (amp_precision("amp-bf16", spec.sm)[0] == "amp-bf16") == spec.bf16


def test_totals_are_nvidia_smi_mib_and_every_figure_has_a_source():
    t4 = gpus.gpu("t4")
    assert t4.smi_total_mib == 15360 and t4.total_bytes == 15360 * 2 ** 20
    # the "16 GB" T4: 15360 MiB in nvidia-smi is 16.1 GB (10**9) and 15.0 GiB; torch sees less (14.56 GiB)
    assert t4.total_bytes / 1e9 == pytest.approx(16.106, abs=1e-3) and t4.total_bytes / 2 ** 30 == 15.0
    # sources disagree (driver, ECC): a range, below nvidia-smi's total on every card that has one
    for spec in gpus.GPUS:
        assert spec.smi_sources and all(s.strip() for s in spec.smi_sources)
        assert (spec.torch_total_gib is None) == (not spec.torch_total_sources)
        if spec.torch_total_gib is not None:
            low, high = spec.torch_total_gib
            assert low <= high < spec.total_bytes / 2 ** 30


def test_cublas_workspace_default_is_larger_on_hopper_and_the_env_syntax_is_parsed():
    assert gpus.cublas_workspace_bytes(gpus.gpu("t4")) == 8519680 == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert gpus.cublas_workspace_bytes(gpus.gpu("a100")) == 8519680
    assert gpus.cublas_workspace_bytes(gpus.gpu("h100")) == 32 * 2 ** 20
    assert gpus.cublas_workspace_bytes(gpus.gpu("t4"), ":4096:8") == 32 * 2 ** 20
    assert gpus.cublas_workspace_bytes(gpus.gpu("h100"), ":16:8") == 128 * 1024
    assert gpus.cublas_workspace_bytes(gpus.gpu("t4"), ":4096:2:16:8") == 8519680
    with pytest.raises(ValueError, match="config must look like"):
        gpus.cublas_workspace_bytes(gpus.gpu("t4"), "4096")
    assert gpus.CUBLAS_SOURCES and "8519680" in gpus.CUBLAS_SOURCES[1]


@pytest.mark.parametrize("card,dtype,hd,mask,p,expected", [
    ("t4", torch.float16, 64, False, 0.0, "efficient"),      # flash needs sm_80+
    ("t4", torch.bfloat16, 64, False, 0.0, "math"),          # mem-efficient takes bf16 only from sm_80
    ("t4", torch.float32, 64, False, 0.1, "efficient"),
    ("v100", torch.float16, 60, False, 0.0, "math"),         # half on sm_70: head_dim % 8 needed
    ("h100", torch.bfloat16, 128, False, 0.1, "flash"),
    ("h100", torch.bfloat16, 128, True, 0.0, "efficient"),   # flash takes no mask
    ("a100", torch.float16, 256, False, 0.0, "flash"),
    ("a100", torch.float16, 264, False, 0.0, "efficient"),   # flash: head_dim <= 256
    ("a100", torch.float32, 64, False, 0.0, "efficient"),    # flash: fp16/bf16 only
    ("a10g", torch.bfloat16, 200, False, 0.0, "efficient"),  # sm86/89 training: (192, 224] not on flash
    ("l4", torch.bfloat16, 256, False, 0.0, "flash"),        # > 224 without dropout is allowed
    ("l4", torch.bfloat16, 256, False, 0.1, "efficient"),
    ("a100", torch.float64, 64, False, 0.0, "math"),
])
def test_sdpa_backend_follows_sdp_utils(card, dtype, hd, mask, p, expected):
    assert gpus.sdpa_backend(gpus.gpu(card), dtype, hd, has_mask=mask, dropout=p) == expected


def test_the_installed_torch_tries_flash_then_efficient_then_math():
    from torch.nn.attention import SDPBackend
    order = torch._C._get_sdp_priority_order()
    assert order[:3] == [int(SDPBackend.FLASH_ATTENTION), int(SDPBackend.EFFICIENT_ATTENTION), int(SDPBackend.MATH)]


def test_cudnn_attention_only_when_a_new_enough_cudnn_is_named_on_hopper():
    h100, a100 = gpus.gpu("h100"), gpus.gpu("a100")
    assert gpus.sdpa_backend(h100, torch.bfloat16, 128, cudnn_version=91501) == "cudnn"
    assert gpus.sdpa_backend(h100, torch.bfloat16, 128, cudnn_version=91000) == "flash"
    assert gpus.sdpa_backend(a100, torch.bfloat16, 128, cudnn_version=91501) == "flash"
    with pytest.raises(ValueError, match="head_dim must be"):
        gpus.sdpa_backend(h100, torch.bfloat16, 0)
    with pytest.raises(ValueError, match="dropout must be"):
        gpus.sdpa_backend(h100, torch.bfloat16, 64, dropout=1.5)


def test_context_measurements_are_ranges_with_sources_and_lazy_loading_is_smaller():
    for m in gpus.CONTEXT_MEASUREMENTS:
        assert 0 < m.low_mib <= m.high_mib and m.sources and m.loading in ("lazy", "eager")
        assert m.kind in ("nvml", "cudaMemGetInfo")
    v100 = gpus.context_range(gpus.gpu("v100"), "eager")
    assert v100 is not None and v100[0] <= v100[1]
    # the same process measured both ways (pytorch/pytorch#86509): lazy is below eager
    pr = [m for m in gpus.CONTEXT_MEASUREMENTS if "86509" in m.sources[0]][0]
    assert pr.low_mib < pr.high_mib
    # no cited measurement for a lazy-loading context on sm_90: None, never a guess
    assert gpus.context_range(gpus.gpu("h100"), "lazy") is None
    with pytest.raises(ValueError, match="loading must be"):
        gpus.context_range(gpus.gpu("h100"), "fast")


def test_public_measurements_schema():
    doc = json.loads(MEASUREMENTS.read_text(encoding="utf-8"))
    rows = doc["rows"]
    assert len(rows) >= 10
    assert len({r["source"] for r in rows}) >= 3
    for r in rows:
        assert r["source"].strip() and r["gpu"].strip() and r["model"].strip(), r
        assert r["kind"] in ("allocated", "reserved", "nvml"), r
        assert r["unit"] in ("GB", "GiB", "MB", "MiB"), r
        assert isinstance(r["value"], (int, float)) and r["value"] > 0, r
        assert r["method"] in ("full", "lora", "qlora"), r
        assert r["kind_basis"].strip() and r["unit_basis"].strip(), r
        assert "incomplete" not in r or r["incomplete"].strip(), r
    assert len({r["id"] for r in rows}) == len(rows)
