"""Sequence packing vs padding (issue 17): RunSpec.padding puts an attention_mask with zeros in the
batch (dynamic padding); without it every row is full of real tokens, as with packing.

As in test_knobs.py: the estimate against a fake-tensor trace (and the CPU tracker) of the same spec
(model states to the byte, peak within 2%, here exact up to the few bytes the unpadded run already
has), the knob's effect on the peak, the unchanged default, and one sentence for bad input."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory.compare import compare_table, measure, measured_model_state  # noqa: E402
from minigpt.memory.estimate import EstimateError, RunSpec, estimate  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

from .cli_run import run  # noqa: E402

LLAMA = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=4096)
B, T, LAYERS = 4, 64, 2


def _agree(spec: RunSpec, mode: str = "fake"):
    est, rep = estimate(spec), measure(spec, mode=mode)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.02 * rep.peak, (est.peak, rep.peak)
    assert abs(est.peak - rep.peak) <= 2048, (est.peak, rep.peak)     # in fact exact, up to a batch's bytes
    return est, rep


def _llama(**kw) -> RunSpec:
    # LoRA: the peak is in backward, where the saved masks are
    base = dict(model="llama-7b", method="lora", batch=B, seq=T, overrides=LLAMA, padding=True)
    return RunSpec(**{**base, **kw})


def _roberta(**kw) -> RunSpec:
    base = dict(model="roberta-base", method="lora", batch=B, seq=T, overrides={"num_hidden_layers": LAYERS},
                dropout=0.0, padding=True)
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
@pytest.mark.parametrize("make", [_llama, _roberta])
def test_padded_estimate_matches_the_trace(make, precision, attention):
    _agree(make(precision=precision, attention=attention))


@pytest.mark.parametrize("make,attention", [(_llama, "sdpa"), (_roberta, "eager")])
def test_padded_estimate_matches_the_trace_with_cpu_semantics(make, attention):
    # (CPU autocast: eager scores + the fp32 mask promote to fp32, so the probabilities are fp32)
    _agree(make(precision="amp-bf16", attention=attention, semantics="cpu"))


def test_padded_estimate_matches_the_cpu_tracker():
    _agree(_llama(precision="fp32", semantics="cpu", seq=32), mode="cpu")


def test_a_mask_rules_out_flash_on_cuda():
    # seq 48: the memory-efficient kernel's logsumexp is padded to 64 along T, flash's is not
    spec = _llama(precision="bf16", seq=48)
    est, rep = _agree(spec)
    assert est.activations - estimate(spec.replace(padding=False)).activations == \
        LAYERS * (B * 48 * 48 * 2 + B * 4 * (64 - 48) * 4)


@pytest.mark.parametrize("precision,el", [("fp32", 4), ("amp-bf16", 2)])
def test_padding_adds_one_mask_per_layer_with_sdpa_and_only_the_batch_mask_with_eager(precision, el):
    per_layer, batch_mask = B * T * T * el, B * T * 8
    for make in (_llama, _roberta):    # without padding neither batch has a mask: padding adds it to both
        for attention, saved in (("sdpa", LAYERS * per_layer), ("eager", 0)):
            spec = make(precision=precision, attention=attention)
            padded, full = measure(spec, mode="fake"), measure(spec.replace(padding=False), mode="fake")
            # at a forward peak (RoBERTa under autocast) the model's 4D mask is alive too: bool for
            # SDPA, fp32 (the weights' dtype) for eager
            held = B * T * T * (1 if attention == "sdpa" else 4) if padded.peak_phase == "forward" else 0
            assert padded.peak - full.peak == saved + batch_mask + held, (make.__name__, attention)
            assert make is _roberta or padded.peak_phase == "backward"
            est = estimate(spec).peak - estimate(spec.replace(padding=False)).peak
            assert est == saved + batch_mask + held


def test_padding_false_reproduces_todays_figures():
    # the estimates of main before the knob (same specs, padding left out)
    assert estimate(_llama(precision="amp-bf16", padding=False)).peak == 24052352
    assert estimate(_llama(precision="fp32", attention="eager", padding=False)).peak == 25981568
    # (RoBERTa: 2,048 B = B x T int64 less than before the knob, which counted an attention_mask
    # that an unpadded classifier batch does not have; tests/memory/test_head_method.py checks
    # the unpadded batch against the trace to the byte)
    est = estimate(_roberta(precision="amp-bf16", dropout=None, padding=False))
    assert (est.peak, est.activations) == (262241368 - 2048, 11870244)
    assert RunSpec(model="llama-7b").padding is False
    assert not any("padding" in n for n in est.notes)


def test_padding_from_the_cli_and_json(capsys):
    argv = ("estimate", "--model", "llama-7b", "--set", "num_hidden_layers=2", "--seq", "64", "--padding")
    code, out, _ = run(capsys, *argv, "--json")
    d = json.loads(out)
    assert code == 0 and d["config"]["padding"] is True and d["spec"]["padding"] is True
    assert RunSpec.from_dict(d).padding is True
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "padding: the attention_mask" in out
    spec = _llama()
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "padded" in spec.describe() and "padded" not in spec.replace(padding=False).describe()



def test_the_compare_header_names_the_batch_and_loss_knobs():
    # the header is the one line that says which run the two columns are; a padded, chunked run says so
    est, rep = _agree(_llama(loss_chunk=32))
    header = compare_table(est, rep).splitlines()[0]
    assert header.endswith(" padded loss-chunk=32"), header
    est, rep = _agree(_llama(padding=False, loss_dtype="compute", precision="bf16"))
    header = compare_table(est, rep).splitlines()[0]
    assert "padded" not in header and header.endswith(" loss=compute"), header

@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_padding_is_one_sentence(bad):
    with pytest.raises(EstimateError, match=r"padding \(--padding\) must be True"):
        _llama(padding=bad)


def test_padding_refuses_models_it_cannot_model():
    with pytest.raises(EstimateError, match="a minigpt model takes no attention mask, so drop --padding"):
        estimate(RunSpec(model="tiny", seq=32, padding=True))
    with pytest.raises(EstimateError, match="a minigpt model takes no attention mask"):
        measure(RunSpec(model="tiny", seq=32, padding=True), mode="fake")
    cfg = str(ROOT / "configs" / "bert-base-uncased.json")   # a config.json classifier (causal LMs take it)
    with pytest.raises(EstimateError, match="--padding applies to causal LMs given as a config.json"):
        estimate(RunSpec(model=cfg, padding=True, overrides={"num_hidden_layers": 1}))
    with pytest.raises(EstimateError, match="--padding applies to causal LMs given as a config.json"):
        measure(RunSpec(model=cfg, padding=True, overrides={"num_hidden_layers": 1}), mode="fake")
