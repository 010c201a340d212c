"""Knobs of the loss that move memory: the cross-entropy's dtype (loss_dtype) and chunked
cross-entropy over the vocabulary (loss_chunk).

Each knob is checked as in test_knobs.py: the estimate against a fake-tensor trace (and a CPU-tracker
measurement where cheap) of the same spec (model states to the byte, peak within 2%), its effect on
the peak, and one sentence for bad input."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory.compare import measure, measured_model_state  # noqa: E402
from minigpt.memory.estimate import EstimateError, RunSpec, estimate  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

from .cli_run import run  # noqa: E402

# a wide vocabulary (4096) against a narrow model (128): the loss is a large part of the step
LLAMA = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=4096)


def _agree(spec: RunSpec, mode: str = "fake"):
    est, rep = estimate(spec), measure(spec, mode=mode)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.02 * rep.peak, (est.peak, rep.peak)
    return est, rep


def _llama(**kw) -> RunSpec:
    base = dict(model="llama-7b", method="full", batch=4, seq=64, overrides=LLAMA)
    return RunSpec(**{**base, **kw})


# ------------------------------------------------------------ loss_dtype
@pytest.mark.parametrize("precision,semantics,loss_dtype", [
    ("bf16", "cuda", "compute"), ("bf16", "cuda", "fp32"), ("amp-bf16", "cuda", "compute"),
    ("fp32", "cpu", "compute"),
])
def test_loss_dtype_estimate_matches_the_trace(precision, semantics, loss_dtype):
    _agree(_llama(precision=precision, semantics=semantics, loss_dtype=loss_dtype))


def test_loss_dtype_estimate_matches_the_cpu_tracker():
    _agree(_llama(method="lora", precision="bf16", semantics="cpu", loss_dtype="compute", seq=32), mode="cpu")


def test_a_16_bit_loss_lowers_the_peak_of_a_pure_bf16_run_only():
    base = _llama(precision="bf16")
    fp32, half = measure(base, mode="fake"), measure(base.replace(loss_dtype="compute"), mode="fake")
    assert measure(base.replace(loss_dtype="fp32"), mode="fake").peak == fp32.peak   # fp32 is the default
    assert half.peak < fp32.peak
    # under autocast the kernel policy runs the loss in fp32 anyway: nothing moves, and a note says so
    amp = base.replace(precision="amp-bf16")
    assert measure(amp, mode="fake").peak == measure(amp.replace(loss_dtype="compute"), mode="fake").peak
    est = estimate(amp.replace(loss_dtype="compute"))
    assert any("changes nothing under autocast" in n for n in est.notes)
    assert estimate(amp).notes == [n for n in est.notes if "changes nothing" not in n]


def test_loss_dtype_from_the_cli_and_json(capsys):
    argv = ("estimate", "--model", "llama-7b", "--set", "num_hidden_layers=2", "--precision", "bf16", "--seq", "64",
            "--json")
    code, out, _ = run(capsys, *argv, "--loss-dtype", "compute")
    d = json.loads(out)
    assert code == 0 and d["config"]["loss_dtype"] == "compute" and d["spec"]["loss_dtype"] == "compute"
    assert RunSpec.from_dict(d).loss_dtype == "compute"
    code, out, _ = run(capsys, *argv[:-1], "--loss-dtype", "compute")
    assert code == 0 and "loss=compute" in out
    spec = _llama(loss_dtype="fp32")
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "loss fp32" in spec.describe() and "loss" not in _llama().describe()


def test_bad_loss_dtype_is_one_sentence():
    with pytest.raises(EstimateError, match=r"loss_dtype \(--loss-dtype\) must be 'fp32'"):
        _llama(loss_dtype="bf16")
    with pytest.raises(EstimateError, match="drop --loss-dtype and --loss-chunk for a minigpt model"):
        estimate(RunSpec(model="tiny", seq=32, loss_dtype="fp32"))
    with pytest.raises(EstimateError, match="causal-LM heads"):
        estimate(RunSpec(model="roberta-base", seq=32, loss_dtype="fp32", overrides={"num_hidden_layers": 1}))
    cfg = str(ROOT / "configs" / "bert-base-uncased.json")   # a config.json classifier (causal LMs take it)
    with pytest.raises(EstimateError, match="--loss-dtype applies to causal LMs given as a config.json"):
        measure(RunSpec(model=cfg, loss_dtype="compute", overrides={"num_hidden_layers": 1}), mode="fake")


# ------------------------------------------------------------ loss_chunk
@pytest.mark.parametrize("method,precision,semantics,knobs", [
    ("full", "bf16", "cuda", dict(loss_chunk=64)),
    ("full", "bf16", "cuda", dict(loss_chunk=100)),                       # a short last chunk
    ("lora", "amp-bf16", "cuda", dict(loss_chunk=48, checkpointing=True)),
    ("qlora", "amp-bf16", "cuda", dict(loss_chunk=48)),
    ("full", "fp32", "cpu", dict(loss_chunk=64)),
    ("full", "bf16", "cuda", dict(loss_chunk=48, loss_dtype="compute")),
])
def test_loss_chunk_estimate_matches_the_trace(method, precision, semantics, knobs):
    _agree(_llama(method=method, precision=precision, semantics=semantics, **knobs))


def test_loss_chunk_estimate_matches_the_cpu_tracker():
    _agree(_llama(method="lora", precision="amp-bf16", semantics="cpu", batch=2, loss_chunk=48), mode="cpu")


def test_chunking_the_loss_lowers_the_peak_and_one_chunk_of_all_tokens_is_no_chunking():
    base = _llama(precision="amp-bf16", method="lora")          # N = 4 x 64 = 256 tokens
    peaks = {c: measure(base.replace(loss_chunk=c), mode="fake").peak for c in (None, 256, 128, 32)}
    assert peaks[256] == peaks[None]
    assert peaks[None] > peaks[128] > peaks[32]
    est = {c: estimate(base.replace(loss_chunk=c)).peak for c in (None, 128, 32)}
    assert est[None] > est[128] > est[32]
    # what autograd saves does not shrink: every chunk's log-softmax stays for backward
    saved = [estimate(base.replace(loss_chunk=c)).activation_terms["loss (log-softmax)"] for c in (None, 32)]
    assert saved[0] <= saved[1] <= saved[0] + 8 * 4          # (+ one 4-byte total_weight per chunk)


def test_loss_chunk_from_the_cli_and_json(capsys):
    argv = ("estimate", "--model", "llama-7b", "--set", "num_hidden_layers=2", "--precision", "amp-bf16",
            "--seq", "64", "--loss-chunk", "32")
    code, out, _ = run(capsys, *argv, "--json")
    d = json.loads(out)
    assert code == 0 and d["config"]["loss_chunk"] == 32 and RunSpec.from_dict(d).loss_chunk == 32
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "loss_chunk=32" in out and "loss over chunks of 32 tokens" in out
    assert "loss chunks of 32 tokens" in RunSpec.from_dict(d).describe()
    code, _, err = run(capsys, *argv[:-1], "0")
    assert code == 2 and "--loss-chunk" in err


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_loss_chunk_is_one_sentence(bad):
    with pytest.raises(EstimateError, match=r"loss_chunk \(--loss-chunk\) must be a positive number of tokens"):
        _llama(loss_chunk=bad)


def test_loss_chunk_refuses_heads_it_does_not_apply_to():
    with pytest.raises(EstimateError, match="drop --loss-dtype and --loss-chunk for a minigpt model"):
        estimate(RunSpec(model="tiny", seq=32, loss_chunk=16))
    with pytest.raises(EstimateError, match="causal-LM heads"):
        estimate(RunSpec(model="roberta-base", seq=32, loss_chunk=16, overrides={"num_hidden_layers": 1}))
