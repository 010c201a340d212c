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
    with pytest.raises(EstimateError, match="drop --loss-dtype for a minigpt model"):
        estimate(RunSpec(model="tiny", seq=32, loss_dtype="fp32"))
    with pytest.raises(EstimateError, match="causal-LM heads"):
        estimate(RunSpec(model="roberta-base", seq=32, loss_dtype="fp32", overrides={"num_hidden_layers": 1}))
    cfg = str(ROOT / "configs" / "mistral-7b.json")
    with pytest.raises(EstimateError, match="drop --loss-dtype for a config.json model"):
        measure(RunSpec(model=cfg, loss_dtype="compute", overrides={"num_hidden_layers": 1}), mode="fake")
