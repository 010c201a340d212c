"""Training knobs that move memory: gradient accumulation (micro_batch), zero_grad(set_to_none=False),
AdamW's implementations, the adapters' dtype, bitsandbytes' 8-bit AdamW and Adafactor.

Each knob is checked the same way: the estimate against a fake-tensor trace of the same spec
(model states to the byte, peak within 2%), and its effect on the buckets."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory.compare import compare, measure, measured_model_state  # noqa: E402
from minigpt.memory.estimate import EstimateError, RunSpec, estimate  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

from .cli_run import run  # noqa: E402

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


# ------------------------------------------------------------------ adapter dtype
ADAPTER_CASES = [
    ("small", {}, "lora", "fp32", "bf16", "cpu"),
    ("small", {}, "lora", "amp-bf16", "bf16", "cuda"),
    ("small", {}, "lora", "amp-fp16", "fp16", "cpu"),
    ("llama-7b", LLAMA, "qlora", "amp-bf16", "bf16", "cuda"),
    ("roberta-base", ROBERTA, "lora", "fp32", "fp16", "cpu"),
    ("small", {}, "lora", "bf16", "fp32", "cuda"),            # peft's default on a bf16 model
    ("llama-7b", LLAMA, "lora", "bf16", "fp32", "cpu"),
    ("roberta-base", ROBERTA, "lora", "fp16", "fp32", "cuda"),
]


@pytest.mark.parametrize("model,over,method,precision,adapter,semantics", ADAPTER_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}-{c[4]}-{c[5]}" for c in ADAPTER_CASES])
def test_adapter_dtype_matches_the_trace(model, over, method, precision, adapter, semantics):
    run_ = RunSpec(model=model, method=method, precision=precision, adapter_dtype=adapter, semantics=semantics,
                   batch=2, seq=32, targets="all-linear" if model == "llama-7b" else "q,v", overrides=over)
    est, rep = compare(run_)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.02 * rep.peak, (est.peak, rep.peak)
    assert est.config["adapter_dtype"] == adapter


def test_fp32_adapters_on_a_16_bit_model_double_the_adapters_states():
    base = RunSpec(model="small", method="lora", precision="bf16", batch=2, seq=64)
    cast, kept = estimate(base), estimate(base.replace(adapter_dtype="fp32"))
    assert cast.config["adapter_dtype"] == "bf16" and kept.config["adapter_dtype"] == "fp32"
    assert kept.model_state["weights_trainable"] == 2 * cast.model_state["weights_trainable"]
    assert kept.model_state["weights_frozen"] == cast.model_state["weights_frozen"]


def test_16_bit_adapters_halve_the_adapters_states():
    base = RunSpec(model="small", method="lora", precision="amp-bf16", batch=2, seq=64)
    fp32, bf16 = estimate(base), estimate(base.replace(adapter_dtype="bf16"))
    for k in ("weights_trainable", "gradients", "optimizer"):     # MiniGPT: the adapters are all that trains
        assert fp32.model_state[k] == 2 * bf16.model_state[k], k
    assert fp32.config["adapter_dtype"] == "fp32" and bf16.n_params == fp32.n_params


def test_adapter_dtype_from_the_cli(capsys):
    argv = ("estimate", "--model", "small", "--method", "lora", "--precision", "amp-bf16", "--seq", "64", "--json")
    _, plain, _ = run(capsys, *argv)
    code, half, _ = run(capsys, *argv, "--adapter-dtype", "bf16")
    plain, half = json.loads(plain), json.loads(half)
    assert code == 0 and half["config"]["adapter_dtype"] == "bf16" and half["spec"]["adapter_dtype"] == "bf16"
    assert 2 * half["model_state"]["weights_trainable"] == plain["model_state"]["weights_trainable"]


# ------------------------------------------------------------ bitsandbytes' 8-bit AdamW
@pytest.mark.parametrize("model,over,method,optimizer", [
    ("tiny", {}, "full", "adamw-8bit"), ("tiny", {}, "lora", "adamw-8bit"),
    ("small", {"n_layer": 1}, "full", "paged-adamw-8bit"),
])
def test_8bit_adamw_states_to_the_byte_on_cpu(model, over, method, optimizer):
    """bitsandbytes 0.50.2 steps CPU tensors: uint8 states + float32 absmax per 256 for tensors of >= 4096
    elements, float32 states below, the two code tables once. On CPU tensors its paged optimizer
    allocates ordinary tensors (bitsandbytes warns so): the estimate's paged bytes (0 GPU bytes on a GPU,
    estimate/states.py) are in the measured optimizer bucket there."""
    run_ = RunSpec(model=model, method=method, optimizer=optimizer, semantics="cpu", batch=2, seq=32,
                   targets="all-linear", overrides=over)
    est, rep = compare(run_, mode="cpu")
    ms = measured_model_state(rep)
    assert {**est.model_state, "optimizer": est.model_state["optimizer"] + est.paged_bytes} == ms
    assert (est.paged_bytes > 0) == optimizer.startswith("paged")
    if not est.paged_bytes:
        assert abs(est.peak - rep.peak) <= 0.02 * rep.peak, (est.peak, rep.peak)


def test_8bit_adamw_in_fake_mode_is_refused_in_one_sentence():
    with pytest.raises(EstimateError) as e:
        measure(RunSpec(model="tiny", optimizer="adamw-8bit"), mode="fake")
    msg = str(e.value)
    assert "use mode='cpu'" in msg and msg.count("\n") == 0 and msg.endswith(".")


# ------------------------------------------------------------------------- Adafactor
ADAFACTOR_CASES = [
    ("tiny", {}, "full", "fp32", "cpu"), ("tiny", {}, "full", "fp32", "cuda"),
    ("tiny", {}, "lora", "amp-bf16", "cpu"), ("small", {"n_layer": 2}, "full", "bf16", "cuda"),
    ("llama-7b", LLAMA, "full", "fp32", "cuda"), ("roberta-base", ROBERTA, "lora", "fp32", "cpu"),
]


@pytest.mark.parametrize("model,over,method,precision,semantics", ADAFACTOR_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}-{c[4]}" for c in ADAFACTOR_CASES])
def test_adafactor_matches_the_trace(model, over, method, precision, semantics):
    """torch.optim.Adafactor: for-loop on CPU, foreach under CUDA semantics (estimate/replay.py)."""
    run_ = RunSpec(model=model, method=method, optimizer="adafactor", precision=precision, semantics=semantics,
                   batch=2, seq=32, overrides=over)
    est, rep = compare(run_)
    assert est.model_state == measured_model_state(rep)
    for phase in ("optimizer", "backward"):
        got, want = est.phases[phase]["peak"], rep.phases[phase]["peak"]
        assert abs(got - want) <= 0.02 * want, (phase, got, want)


def test_adafactor_keeps_a_row_and_a_column_per_matrix():
    from minigpt.memory import zoo
    model = zoo.build("tiny", device="meta")
    want = sum(4 * ((p.shape[0] + p.shape[1]) if p.dim() == 2 else p.numel()) + 4   # + its float32 step
               for p in model.parameters())
    assert estimate("tiny", optimizer="adafactor", semantics="cpu", seq=32).model_state["optimizer"] == want
    assert want < 8 * sum(p.numel() for p in model.parameters())   # less than AdamW's two moments


def test_adafactor_runs_on_fake_tensors_as_on_cpu(capsys):
    """Fake tensors have no values: Adafactor's .item() reads 1.0 there, and moves no memory."""
    run_ = RunSpec(model="tiny", optimizer="adafactor", semantics="cpu", batch=2, seq=32)
    fake, cpu = measure(run_, mode="fake"), measure(run_, mode="cpu")
    assert fake.peak == cpu.peak and fake.phases == cpu.phases
    code, out, _ = run(capsys, "measure", "--model", "tiny", "--optimizer", "adafactor", "--seq", "32")
    assert code == 0 and "optimizer" in out
