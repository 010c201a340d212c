"""method="head": every weight frozen but a classifier's head (a linear probe), in RunSpec, the
estimator, measure and the theory's traces (course/traces.py builds every trace from a RunSpec)."""
import pytest

from minigpt.memory import RunSpec
from minigpt.memory.compare import compare
from minigpt.memory.estimate import EstimateError, estimate
from minigpt.memory.estimate.traced import measured_model_state


@pytest.mark.parametrize("model,precision", [("roberta-base", "amp-fp16"), ("roberta-base", "fp32"),
                                             ("configs/bert-base-uncased.json", "amp-bf16")])
def test_head_estimate_matches_the_fake_trace(model, precision):
    run = RunSpec(model=model, method="head", batch=4, seq=64, precision=precision,
                  overrides={"num_hidden_layers": 2})
    est, rep = compare(run)
    assert est.model_state == measured_model_state(rep)          # to the byte
    # the peak, bucket by bucket, to the byte: the frozen encoder's autocast weight casts (neither
    # cached nor saved) and its layer norms' unsaved mean/rstd are in flight at the worst op
    assert est.peak_phase == rep.peak_phase == "forward"
    assert est.buckets == {k: rep.buckets.get(k, 0) for k in est.buckets}
    # only the head learns: its parameters are the trainable ones, and far fewer than the model's
    assert 0 < est.n_trainable == rep.n_trainable < est.n_params // 10


def test_head_peak_buckets_at_the_forums_size_equal_the_trace():
    # the learner's setting (roberta-base, fp16 autocast, 32 x 512): the worst op is in the middle
    # of the forward pass, before the head's activations exist; the buckets are that moment's
    est, rep = compare(RunSpec(model="roberta-base", method="head", batch=32, seq=512, precision="amp-fp16"))
    assert est.buckets == {k: rep.buckets.get(k, 0) for k in est.buckets}
    assert est.buckets["activations"] == 0 < est.buckets["temporaries"]


def test_head_trains_less_than_lora_and_full():
    peaks = {m: estimate(RunSpec(model="roberta-base", method=m, batch=8, seq=128, precision="amp-fp16",
                                 **({"rank": 8} if m == "lora" else {}))).peak for m in ("head", "lora", "full")}
    assert peaks["head"] < peaks["lora"] < peaks["full"]


def test_head_on_a_language_model_is_one_sentence():
    with pytest.raises(EstimateError, match="method='head' trains only a classification head.*use method='full'"):
        estimate(RunSpec(model="llama-7b", method="head"))


@pytest.mark.parametrize("kw,match", [(dict(head_trainable=False), "would train nothing"),
                                      (dict(lora_dropout=0.1), "lora_dropout applies to the adapters"),
                                      (dict(adapter_dtype="fp32"), "adapter_dtype applies to the adapters")])
def test_head_bad_fields(kw, match):
    with pytest.raises(EstimateError, match=match):
        RunSpec(model="roberta-base", method="head", **kw)


def test_head_round_trips_and_describes():
    run = RunSpec(model="roberta-base", method="head", batch=32, seq=512, precision="amp-fp16")
    assert RunSpec.from_dict(run.to_dict()) == run
    assert run.describe() == "roberta-base head amp-fp16 adamw batch=32 seq=512"
    assert run.adapter_label() is None
