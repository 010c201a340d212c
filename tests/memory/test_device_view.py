"""The three labelled numbers (device_view), the card's SDPA kernel (--gpu), and the public predictions."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory import cuda_rules, device_view as dv, public_table  # noqa: E402
from minigpt.memory.buckets import GiB, MiB  # noqa: E402
from minigpt.memory.estimate import EstimateError, estimate  # noqa: E402
from minigpt.memory.gpus import cublas_workspace_bytes, gpu  # noqa: E402
from tests.memory.cli_run import run  # noqa: E402

TINY = dict(model="tiny", precision="amp-fp16", batch=2, seq=50)   # tiny: 2 layers, 2 heads, head_dim 32


# ------------------------------------------------------------------ the card's SDPA kernel
def test_kernel_choice_follows_the_card():
    # sdp_utils.cpp via gpus.sdpa_backend: no flash below sm_80, so fp16 runs memory-efficient there
    assert cuda_rules.kernel_for(gpu("t4"), torch.float16, 64, False) == "efficient"
    assert cuda_rules.kernel_for(gpu("v100"), torch.float16, 64, False) == "efficient"
    assert cuda_rules.kernel_for(gpu("a100"), torch.float16, 64, False) == "flash"
    assert cuda_rules.kernel_for(None, torch.bfloat16, 64, False) == "flash"        # no card: as before
    assert cuda_rules.kernel_for(gpu("a10g"), torch.bfloat16, 200, False) == "efficient"  # sm_86, 192 < hd <= 224
    with pytest.raises(ValueError, match="math kernel .* not simulated; use attention='eager'"):
        cuda_rules.kernel_for(gpu("a100"), torch.float32, 6, False)   # 6 % 4 != 0: no fused kernel


def test_kernel_choice_moves_the_activations_as_expected():
    # memory-efficient pads the saved logsumexp (B, H, T) to a multiple of 32 along T: 50 -> 64
    flash, eff = estimate(**TINY, gpu="a100"), estimate(**TINY, gpu="t4")
    layers, B, H, T = 2, 2, 2, 50
    assert eff.activations - flash.activations == layers * B * H * (64 - T) * 4
    assert estimate(**TINY).activations == flash.activations     # no card: flash, as before
    assert any("efficient kernel" in n for n in eff.notes) and any("flash kernel" in n for n in flash.notes)
    # the simulation (cuda_rules.on_card) moves by what the estimate says, phase by phase
    rep = {c: dv.trace(gpu(c), **TINY)[0] for c in ("t4", "a100")}
    est = {"t4": eff, "a100": flash}
    for phase in ("forward", "backward", "optimizer"):
        d_rep = rep["t4"].phases[phase]["peak"] - rep["a100"].phases[phase]["peak"]
        assert d_rep == est["t4"].phases[phase]["peak"] - est["a100"].phases[phase]["peak"]
    assert rep["t4"].phases["backward"]["peak"] != rep["a100"].phases["backward"]["peak"]


def test_bf16_is_refused_on_cards_without_it(capsys):
    with pytest.raises(EstimateError, match=r"^the T4 \(sm_75\) has no bf16; use amp-fp16 or fp32\.$"):
        estimate("tiny", precision="amp-bf16", seq=32, gpu="t4")
    with pytest.raises(EstimateError, match=r"^the V100 \(sm_70\) has no bf16"):
        estimate("tiny", precision="bf16", seq=32, gpu="v100")
    code, _, err = run(capsys, "estimate", "--model", "tiny", "--seq", "32", "--precision", "amp-bf16", "--gpu", "t4")
    assert code == 2 and err.strip().endswith("the T4 (sm_75) has no bf16; use amp-fp16 or fp32.")
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the numbers
def test_fits_and_margin_arithmetic():
    t4 = gpu("t4")                        # nvidia-smi total 15360 MiB = 15 GiB exactly
    f = dv.fit_on(t4, 14 * GiB, 14 * GiB)
    assert (f["verdict"], f["margin_low"], f["margin_high"]) == ("fits", GiB, GiB)
    assert "fits on the Tesla T4 (15360 MiB = 15.00 GiB as nvidia-smi reports it), margin 1.00 GiB" in f["sentence"]
    f = dv.fit_on(t4, 15 * GiB + 1, 16 * GiB)
    assert f["verdict"] == "does not fit" and f["margin_low"] == -GiB and f["margin_high"] == -1
    assert dv.fit_on(t4, 14 * GiB, 16 * GiB)["verdict"] == "may not fit"
    assert dv.fit_on(t4, 14 * GiB, 14 * GiB, lower_bound=True)["verdict"] == "may fit (a lower bound only)"


def test_nvidia_smi_is_reserved_plus_the_cited_context_and_workspaces_are_inside_allocated():
    v100 = gpu("v100")
    lo, hi, basis = dv.context(v100, "eager")      # gpus.CONTEXT_MEASUREMENTS: Titan V 1007.25, V100 1343 MiB
    assert (lo, hi) == (int(1007.25 * MiB), 1343 * MiB) and "sm_70" in basis
    lo_any, hi_any, basis_any = dv.context(gpu("a100"), "lazy")   # none cited on sm_80: any card's range
    assert (lo_any, hi_any) == (256 * MiB, int(666632192 / MiB * MiB)) and "no cited lazy" in basis_any
    est = estimate(**TINY, gpu="v100")
    rep, events = dv.trace(v100, **TINY)
    view = dv.view_for_estimate(est, v100, events, loading="eager")
    ws = cublas_workspace_bytes(v100)
    assert view.allocated.low == est.peak + 2 * ws and view.allocated.source == "estimated"
    assert view.reserved.source == "replayed" and view.reserved.low >= view.allocated.low
    assert (view.smi.low, view.smi.high) == (view.reserved.low + lo, view.reserved.high + hi)
    measured = dv.view_for_report(rep, v100, events)
    assert measured.allocated.source == "replayed" and measured.allocated.low >= rep.peak + 2 * ws
    assert measured.reserved.low == view.reserved.low
    # the two 8,519,680 B workspaces share one 20 MiB large-pool segment (kLargeBuffer)
    assert dv.view_for_estimate(est, v100, []).reserved.low == 20 * MiB
    # an H100's 32 MiB workspaces are >= 10 MiB: a segment each, rounded to 2 MiB
    assert dv.view_for_estimate(est, gpu("h100"), []).reserved.low == 2 * 32 * MiB


def test_estimate_labels_all_three_numbers_and_stays_fast_without_flags(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "tiny", "--seq", "32")
    assert code == 0
    for label in ("allocated peak", "reserved peak", "nvidia-smi", "estimated: closed form",
                  "not computed (add --gpu or --reserved)", "CUDA_MODULE_LOADING=LAZY"):
        assert label in out
    code, out, _ = run(capsys, "estimate", "--model", "tiny", "--seq", "32", "--precision", "amp-fp16",
                       "--gpu", "t4")
    assert code == 0
    assert "replayed: allocator model" in out and "modelled: reserved (replayed) + CUDA context" in out
    assert "fits on the Tesla T4 (15360 MiB = 15.00 GiB as nvidia-smi reports it), margin" in out
    assert "efficient kernel" in out


def test_json_carries_the_three_numbers_and_their_sources(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "tiny", "--seq", "32", "--json")
    d = json.loads(out)["device_view"]
    assert d["allocated_peak"]["source"] == "estimated" and isinstance(d["allocated_peak"]["bytes"], int)
    assert d["reserved_peak"] == {"bytes": None, "low": None, "high": None, "source": "not computed",
                                  "how": "add --gpu or --reserved"}
    assert d["fit"] is None and d["gpu"] is None
    code, out, _ = run(capsys, "estimate", "--model", "tiny", "--seq", "32", "--reserved", "--json")
    d = json.loads(out)["device_view"]
    assert d["reserved_peak"]["source"] == "replayed" and d["reserved_peak"]["bytes"] % (2 * MiB) == 0
    assert d["nvidia_smi"]["source"] == "modelled" and d["nvidia_smi"]["low"] < d["nvidia_smi"]["high"]
    code, out, _ = run(capsys, "measure", "--model", "tiny", "--seq", "32", "--gpu", "a100", "--json")
    d = json.loads(out)["device_view"]
    assert d["gpu"] == "a100" and d["fit"]["verdict"] == "fits"
    assert d["allocated_peak"]["source"] == d["reserved_peak"]["source"] == "replayed"
    # an optimizer the trace cannot run: reserved says why, nvidia-smi is a lower bound
    code, out, _ = run(capsys, "estimate", "--model", "tiny", "--seq", "32", "--optimizer", "paged-adamw",
                       "--gpu", "a100", "--json")
    d = json.loads(out)["device_view"]
    assert d["reserved_peak"]["source"] == "not computed" and "cannot run" in d["reserved_peak"]["how"]
    assert d["nvidia_smi"]["source"] == "modelled (lower bound)"
    assert d["fit"]["verdict"] == "may fit (a lower bound only)"


# ------------------------------------------------------------------------ public predictions
def test_public_predictions_cover_every_row_and_recompute_the_closed_form_ones():
    committed = json.loads(public_table.OUT_JSON.read_text())
    source = json.loads(public_table.SOURCE_JSON.read_text())["rows"]
    preds = {p["id"]: p for p in committed["predictions"]}
    skipped = {s["id"]: s for s in committed["skipped"]}
    assert set(preds) | set(skipped) == {r["id"] for r in source} and not set(preds) & set(skipped)
    assert all(s["reason"] for s in skipped.values())
    assert len(preds) >= 8 and len({p["source"].split()[0] for p in preds.values()}) >= 3
    for r in source:
        if r["id"] in preds:
            p = preds[r["id"]]
            assert p["published_bytes"] == round(r["value"] * {"GB": 10 ** 9, "GiB": 2 ** 30, "MiB": 2 ** 20}[r["unit"]])
            assert p["kind"] == r["kind"]
            err = (p["predicted_low"] - p["published_bytes"]) / p["published_bytes"] * 100
            assert abs(err - p["error_percent_low"]) < 0.01
    # the rows that need no trace are recomputed here and must equal the committed JSON
    fresh = [p for p in public_table.table(trace=False)["predictions"] if p.get("recomputed", True)]
    assert len(fresh) >= 5
    for p in fresh:
        assert p == preds[p["id"]]
    assert public_table.markdown(committed) == public_table.OUT_MD.read_text()
