"""Training knobs that move memory: gradient accumulation (micro_batch) and zero_grad(set_to_none=False).

Each knob is checked the same way: the estimate against a fake-tensor trace of the same spec
(model states to the byte, peak within 2%), and its effect on the buckets."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory.compare import measure, measured_model_state  # noqa: E402
from minigpt.memory.estimate import EstimateError, estimate  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

LLAMA = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=512)
ROBERTA = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256)
SMALL_CFG = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=512)

CASES = [
    ("small", {}, "full", "fp32", "cpu", dict(micro_batch=2)),
    ("small", {}, "lora", "amp-bf16", "cuda", dict(set_to_none=False)),
    ("llama-7b", LLAMA, "lora", "amp-bf16", "cuda", dict(micro_batch=2)),
    ("llama-7b", LLAMA, "qlora", "fp32", "cpu", dict(micro_batch=1)),
    ("roberta-base", ROBERTA, "full", "fp32", "cpu", dict(set_to_none=False)),
    ("roberta-base", ROBERTA, "lora", "amp-bf16", "cuda", dict(micro_batch=2, set_to_none=False)),
    (str(ROOT / "configs" / "mistral-7b.json"), SMALL_CFG, "full", "amp-bf16", "cuda", dict(micro_batch=2)),
]


@pytest.mark.parametrize("model,over,method,precision,semantics,knobs", CASES,
                         ids=[f"{c[0].rsplit('/', 1)[-1]}-{c[2]}-{c[3]}-{c[4]}-{'-'.join(c[5])}" for c in CASES])
def test_the_estimate_matches_the_trace(model, over, method, precision, semantics, knobs):
    kw = dict(model=model, method=method, precision=precision, semantics=semantics, batch=4, seq=32, **knobs, **over)
    est, rep = estimate(**kw), measure(mode="fake", **kw)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.02 * rep.peak, (est.peak, rep.peak)
    assert est.config["micro_batch"] == knobs.get("micro_batch", 4)
    assert est.config["accumulation"] == 4 // knobs.get("micro_batch", 4)


def test_a_traced_architecture_takes_the_knobs_too():
    kw = dict(model=str(ROOT / "configs" / "gpt2.json"), method="lora", precision="fp32", semantics="cpu",
              batch=4, seq=32, micro_batch=2, targets="all-linear", num_hidden_layers=2)
    est = estimate(**kw)
    assert "fake-tensor trace" in est.label
    assert est.config["accumulation"] == 2 and est.config["micro_batch"] == 2
    assert est.phases["forward"]["buckets"]["gradients"] == est.model_state["gradients"]


def test_alive_gradients_are_in_every_phase_and_accumulation_runs_the_micro_batch():
    base = dict(model="small", method="full", precision="fp32", semantics="cpu", seq=64)
    plain, kept = estimate(batch=4, **base), estimate(batch=4, set_to_none=False, **base)
    accum, micro = estimate(batch=4, micro_batch=1, **base), estimate(batch=1, set_to_none=False, **base)
    grads = plain.model_state["gradients"]
    assert plain.phases["forward"]["buckets"]["gradients"] == 0
    assert kept.phases["forward"]["buckets"]["gradients"] == grads
    assert kept.phases["forward"]["peak"] == plain.phases["forward"]["peak"] + grads
    # accumulating 4 micro-batches of 1 holds what one row with alive gradients holds
    assert accum.peak == micro.peak < kept.peak
    for r in (kept, accum):
        assert any("through forward and backward (autograd adds into them)" in n for n in r.notes)


@pytest.mark.parametrize("kwargs,words", [
    (dict(batch=4, micro_batch=3), "micro_batch must be a positive divisor of batch=4"),
    (dict(batch=4, micro_batch=0), "micro_batch must be a positive divisor"),
    (dict(batch=4, micro_batch=2, gpus=2, zero=2), "use zero 0 or 1"),
    (dict(set_to_none=False, gpus=2, zero=3, sharding="fsdp2"), "use zero 0 or 1"),
])
def test_bad_knobs_get_one_sentence(kwargs, words):
    with pytest.raises(EstimateError) as e:
        estimate("small", **kwargs)
    msg = str(e.value)
    assert words in msg and msg.count("\n") == 0 and msg.endswith(".")


@pytest.mark.parametrize("impl", ["for-loop", "foreach", "fused"])
@pytest.mark.parametrize("semantics", ["cpu", "cuda"])
def test_adamw_implementations_match_the_trace(impl, semantics):
    """foreach's sqrt of every second moment at once is a temporary as large as the trainable
    parameters; the for-loop's is two of one parameter's size; fused has none and keeps its step
    counters on the device (under CUDA semantics the other two keep them on the host)."""
    kw = dict(model="small", method="full", precision="fp32", semantics=semantics, batch=2, seq=64,
              optimizer_impl=impl)
    est, rep = estimate(**kw), measure(mode="fake", **kw)
    assert est.model_state == measured_model_state(rep)
    for phase in ("optimizer", "backward"):
        got, want = est.phases[phase]["peak"], rep.phases[phase]["peak"]
        assert abs(got - want) <= 0.02 * want, (phase, got, want)
    assert est.config["optimizer_impl"] == impl


def test_fused_needs_no_optimizer_temporaries_and_foreach_the_most():
    base = dict(model="small", method="full", precision="fp32", semantics="cpu", batch=2, seq=64)
    t = {impl: estimate(optimizer_impl=impl, **base).phases["optimizer"]["buckets"]["temporaries"]
         for impl in ("for-loop", "foreach", "fused")}
    batch_bytes = estimate(optimizer_impl="fused", **base).phases["forward"]["buckets"]["temporaries"]
    assert t["fused"] < t["for-loop"] < t["foreach"]
    assert t["foreach"] - t["fused"] == estimate(**base).model_state["weights_trainable"]
    assert t["fused"] <= batch_bytes


def test_an_implementation_of_another_optimizer_is_refused():
    with pytest.raises(EstimateError, match="use optimizer='adamw'"):
        estimate("small", optimizer="sgd", optimizer_impl="fused")
