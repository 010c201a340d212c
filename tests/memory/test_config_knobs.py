"""The loss and padding knobs on models given as a config.json (configs/), closed form and fallback:
estimate against the fake-tensor trace of the same RunSpec, model states to the byte, peak within 2%."""
import pytest

from minigpt.memory import RunSpec
from minigpt.memory.compare import compare
from minigpt.memory.estimate import EstimateError, estimate
from minigpt.memory.estimate.traced import measured_model_state

MISTRAL = dict(model="configs/mistral-7b.json", overrides={"num_hidden_layers": 2}, method="lora", rank=8,
               batch=2, seq=128)
GPT2 = dict(model="configs/gpt2.json", overrides={"n_layer": 2}, method="lora", rank=8, targets="c_attn",
            batch=2, seq=128, precision="amp-bf16")


def _agree(run: RunSpec):
    est, rep = compare(run)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak / rep.peak - 1) < 0.02
    return est, rep


@pytest.mark.parametrize("kw", [dict(precision="amp-bf16", padding=True),
                                dict(precision="fp32", padding=True, attention="eager"),
                                dict(precision="amp-bf16", loss_chunk=64),
                                dict(precision="bf16", loss_dtype="compute")])
def test_mistral_config_knobs_match_the_trace(kw):
    _agree(RunSpec(**MISTRAL, **kw))


def test_padding_on_a_gqa_model_repeats_k_and_v():
    """Mistral has 8 K/V heads for 32 query heads: with a padding mask transformers gives SDPA
    repeated K and V (no enable_gqa with a mask), which autograd saves, so the step grows by far more
    than the mask itself (2 layers x B*T*T bf16 + the batch's B*T int64)."""
    plain, _ = _agree(RunSpec(**MISTRAL, precision="amp-bf16"))
    padded, rep = _agree(RunSpec(**MISTRAL, precision="amp-bf16", padding=True))
    mask_only = 2 * 2 * 128 * 128 * 2 + 2 * 128 * 8
    assert padded.peak - plain.peak > 10 * mask_only
    assert abs(padded.peak - rep.peak) <= 2048


def test_fallback_family_takes_the_knobs_too():
    """GPT-2 has no closed form: its estimate is the trace, which runs the chunked loss and the mask."""
    plain = estimate(RunSpec(**GPT2)).peak
    assert estimate(RunSpec(**GPT2, loss_chunk=64)).peak < plain < estimate(RunSpec(**GPT2, padding=True)).peak


def test_a_classifier_config_refuses_them_in_one_sentence():
    with pytest.raises(EstimateError, match="--padding applies to causal LMs given as a config.json.*drop --padding"):
        estimate(RunSpec(model="configs/bert-base-uncased.json", padding=True, overrides={"num_hidden_layers": 2}))
