"""RunSpec (minigpt/memory/estimate/run.py): one spec of a run for estimate, measure, compare and the CLI.

Its JSON round trip, the keyword form that builds one, the model resolved once per call, the CLI's
--json "spec" and --spec FILE (the same JSON again), and every bad value refused in one sentence."""
from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory import hf_models  # noqa: E402
from minigpt.memory.compare import compare, measure, measured_model_state  # noqa: E402
from minigpt.memory.estimate import EstimateError, RunSpec, estimate  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

from .cli_run import run  # noqa: E402

MISTRAL = str(ROOT / "configs" / "mistral-7b.json")
SMALL_CFG = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=512)
LORA = RunSpec(model="small", method="lora", rank=4, alpha=8, targets=("q", "v"), precision="amp-bf16",
               batch=4, micro_batch=2, seq=64, semantics="cpu", lora_dropout=0.1, overrides={"n_layer": 2})


def one_sentence(e) -> str:
    msg = str(e.value)
    assert msg.count("\n") == 0 and msg.endswith("."), msg
    return msg


# ------------------------------------------------------------------------- the dataclass
def test_to_dict_is_json_and_from_dict_gives_the_same_spec():
    d = json.loads(json.dumps(LORA.to_dict()))
    assert d["targets"] == ["q", "v"] and d["overrides"] == {"n_layer": 2} and d["micro_batch"] == 2
    assert RunSpec.from_dict(d) == LORA
    assert RunSpec.from_dict({"spec": d, "peak": 1}) == LORA          # a whole --json output


def test_config_objects_have_a_json_form_that_estimates_the_same():
    from minigpt.model import preset_config
    gpt = RunSpec(model=preset_config("small", n_layer=2), seq=64, semantics="cpu")
    back = RunSpec.from_dict(json.loads(json.dumps(gpt.to_dict())))
    assert back == gpt and estimate(back).to_dict() == estimate(gpt).to_dict()
    cfg = hf_models.load_config(MISTRAL, SMALL_CFG)
    hf = RunSpec(model=cfg, method="lora", targets="all-linear", batch=2, seq=32)
    again = RunSpec.from_dict(json.loads(json.dumps(hf.to_dict())))
    assert isinstance(again.model, dict) and again.model["model_type"] == "mistral"
    a, b = estimate(hf), estimate(again)
    assert (a.peak, a.model_state, a.n_params) == (b.peak, b.model_state, b.n_params)


def test_replace_validates_and_takes_config_fields_as_overrides():
    longer = LORA.replace(seq=128, n_head=2)
    assert (longer.seq, longer.overrides) == (128, {"n_layer": 2, "n_head": 2}) and LORA.seq == 64
    with pytest.raises(EstimateError, match="micro_batch must be a positive divisor of batch=3"):
        LORA.replace(batch=3)
    with pytest.raises(EstimateError) as e:
        RunSpec.from_dict({**LORA.to_dict(), "bacth": 2})
    assert "no field 'bacth'" in one_sentence(e)


def test_describe_is_one_line_with_what_moves_memory():
    line = LORA.describe()
    assert "\n" not in line
    for word in ("small", "n_layer=2", "lora", "r=4", "q,v", "amp-bf16", "adamw", "batch=4 (2 x 2)", "seq=64"):
        assert word in line, (word, line)


# --------------------------------------------------------------- one path for both forms
def test_the_keyword_form_builds_the_same_spec():
    kw = dict(method="lora", rank=4, alpha=8, targets=("q", "v"), precision="amp-bf16", batch=4, micro_batch=2,
              seq=64, semantics="cpu", lora_dropout=0.1, n_layer=2)
    assert RunSpec.from_kwargs("small", **kw) == LORA
    assert estimate("small", **kw).to_dict() == estimate(LORA).to_dict()
    # the old positional order (model, method, rank, alpha, targets, ...) still binds the same fields
    assert estimate("small", "lora", 4, 8, ("q", "v"), False, "amp-bf16", batch=4, micro_batch=2, seq=64,
                    semantics="cpu", lora_dropout=0.1, n_layer=2).to_dict() == estimate(LORA).to_dict()
    # a spec with changes by name
    assert estimate(LORA, seq=32).config["seq"] == 32


def test_measure_and_compare_take_the_spec_and_agree():
    est, rep = compare(LORA)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.02 * rep.peak
    assert measure(LORA, mode="fake").peak == rep.peak


def test_compare_reads_a_config_once(monkeypatch):
    calls = []
    real = hf_models.resolve
    monkeypatch.setattr(hf_models, "resolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = RunSpec(model=MISTRAL, method="lora", precision="amp-bf16", batch=2, seq=32, overrides=SMALL_CFG)
    est, rep = compare(spec)
    assert len(calls) == 1 and est.model_state == measured_model_state(rep)


# ------------------------------------------------------------------------------- the CLI
def test_json_carries_the_spec_and_the_saved_spec_reproduces_it(capsys, tmp_path):
    argv = ["--model", "llama-7b", "--set", "num_hidden_layers=2", "--method", "qlora", "--rank", "16",
            "--targets", "all-linear", "--precision", "amp-bf16", "--batch", "2", "--micro-batch", "1",
            "--seq", "256", "--adapter-dtype", "bf16", "--json"]
    code, first, _ = run(capsys, "estimate", *argv)
    assert code == 0
    d = json.loads(first)
    spec = d["spec"]
    assert (spec["model"], spec["method"], spec["rank"], spec["micro_batch"], spec["adapter_dtype"]) == \
        ("llama-7b", "qlora", 16, 1, "bf16")
    assert spec["overrides"] == {"num_hidden_layers": 2}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code, again, _ = run(capsys, "estimate", "--spec", str(path), "--json")
    assert code == 0 and json.loads(again) == d
    whole = tmp_path / "whole.json"       # the whole --json output works too
    whole.write_text(first)
    assert json.loads(run(capsys, "estimate", "--spec", str(whole), "--json")[1]) == d
    # a flag beside --spec changes that field only
    code, longer, _ = run(capsys, "estimate", "--spec", str(path), "--seq", "512", "--json")
    ds = json.loads(longer)["spec"]
    assert code == 0 and ds["seq"] == 512 and {**ds, "seq": 256} == spec


def test_measure_and_compare_json_carry_the_spec(capsys):
    for cmd in ("measure", "compare"):
        code, out, _ = run(capsys, cmd, "--model", "tiny", "--batch", "2", "--seq", "32", "--json")
        d = json.loads(out)
        assert code == 0 and d["spec"] == RunSpec(model="tiny", batch=2, seq=32).to_dict() and d["mode"] == "fake"


def test_a_bad_spec_file_gets_one_sentence(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "estimate", "--spec", str(bad))
    assert code == 2 and "cannot read a JSON run spec" in err and err.count("\n") == 1


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,words", [
    (dict(method="lora", alpha=math.inf), "alpha must be a positive number"),
    (dict(method="lora", alpha=math.nan), "alpha must be a positive number"),
    (dict(method="lora", alpha=-1.0), "alpha must be a positive number"),
    (dict(method="lora", alpha=0), "alpha must be a positive number"),
    (dict(method="lora", rank=-2), "rank must be a positive integer"),
    (dict(method="lora", rank=2.5), "rank must be a positive integer"),
    (dict(method="qlora", rank=math.inf), "rank must be a positive integer"),
    (dict(batch=0), "batch must be a positive integer"),
    (dict(batch=-4), "batch must be a positive integer"),
    (dict(batch=math.inf), "batch must be a positive integer"),
    (dict(batch=2.0), "batch must be a positive integer"),
    (dict(seq=math.nan), "seq must be a positive integer"),
    (dict(batch=4, micro_batch=-1), "micro_batch must be a positive divisor of batch=4"),
    (dict(batch=6, micro_batch=4), "micro_batch must be a positive divisor of batch=6"),
    (dict(batch=2, micro_batch=4), "micro_batch must be a positive divisor of batch=2"),
    (dict(batch=4, micro_batch=math.nan), "micro_batch must be a positive divisor"),
    (dict(gpus=0), "gpus must be a positive integer"),
    (dict(gpus=2, rank_index=2), "rank_index=2 is not a rank of 2 GPUs"),
    (dict(adapter_dtype="int8", method="lora"), "adapter_dtype='int8' is not allowed"),
    (dict(adapter_dtype="bf16"), "adapter_dtype applies to the adapters"),
    (dict(adapter_dtype="fp16", method="lora", precision="bf16"), "use adapter_dtype='fp32' or 'bf16'"),
    (dict(adapter_dtype="fp32", method="lora", precision="fp16-master"), "use adapter_dtype='fp16'"),
    (dict(adapter_dtype="bf16", method="lora", precision="amp-fp16"), "use adapter_dtype='fp32' or 'fp16'"),
    (dict(optimizer="adafactor", gpus=2, zero=1), "optimizer='adafactor' is modelled on one GPU"),
    (dict(overrides=[("n_layer", 2)]), "overrides must be a dict"),
])
def test_a_bad_field_is_refused_by_the_spec_itself(kwargs, words):
    with pytest.raises(EstimateError) as e:
        RunSpec(**kwargs)
    assert words in one_sentence(e)
    with pytest.raises(EstimateError):                      # and so by estimate's keyword form
        estimate(**{"model": "small", **kwargs})


@pytest.mark.parametrize("kwargs,words", [
    (dict(model="llama-7b", seq=1_000_000), "use seq <= 2048 (or a config with rope_scaling)"),
    (dict(model="small", batch=2 ** 60, seq=128), "more than an int64 size can hold (2**63); use a smaller --batch"),
    (dict(model="llama-70b", batch=2 ** 45, seq=4096), "more than an int64 size can hold"),
    (dict(model=str(ROOT / "configs" / "gpt2.json"), batch=2 ** 50, seq=1024), "more than an int64 size can hold"),
    (dict(model="small", method="lora", targets="nothing_here"), "nothing_here"),
])
def test_what_needs_the_model_is_refused_by_the_estimator(kwargs, words):
    with pytest.raises(EstimateError) as e:
        estimate(**kwargs)
    assert words in one_sentence(e)


@pytest.mark.parametrize("argv,words", [
    (["--alpha", "inf", "--method", "lora"], "--alpha: must be a positive finite number"),
    (["--alpha", "nan", "--method", "lora"], "--alpha: must be a positive finite number"),
    (["--rank", "0", "--method", "lora"], "--rank: must be a positive integer"),
    (["--batch", "-1"], "--batch: must be a positive integer"),
    (["--batch", "6", "--micro-batch", "4"], "micro_batch must be a positive divisor of batch=6"),
    (["--model", "llama-7b", "--seq", "1000000"], "use seq <= 2048"),
    (["--batch", str(2 ** 60)], "more than an int64 size can hold"),
    (["--adapter-dtype", "bf16"], "adapter_dtype applies to the adapters"),
    (["--adapter-dtype", "fp8", "--method", "lora"], "--adapter-dtype: invalid choice"),
])
def test_the_cli_says_the_same_in_one_sentence(capsys, argv, words):
    code, out, err = run(capsys, "estimate", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and words in lines[0] and lines[0].endswith("."), err


def test_the_puzzles_run_spec_builds_the_model_the_lab_built_by_hand():
    """solutions/05's GPU cell built RoBERTa-base + puzzle.LORA by hand; build_factory(puzzle.run_spec(...))
    builds the same parameters (names, shapes, dtypes, which train), here on the meta device."""
    import torch
    from course import puzzle
    from minigpt.lora import apply_lora
    from minigpt.memory import zoo
    from minigpt.memory.compare import build_factory
    run_ = puzzle.run_spec("amp-fp16", "lora", 8)
    assert (run_.rank, run_.alpha, run_.lora_dropout, run_.seq) == (8, 16, 0.1, puzzle.MAX_TOKENS)
    with torch.device("meta"):
        ours = build_factory(run_)()
        hand = zoo.build(puzzle.MODEL, device=None)
        cfg = puzzle.LORA
        apply_lora(hand, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["targets"], cfg["trainable"])

    def params(m):
        return [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters()]
    assert params(ours) == params(hand)
    assert estimate(run_).config["lora_dropout"] == 0.1


def test_measure_of_a_gpt_config_object_says_what_to_give_instead():
    from minigpt.model import preset_config
    with pytest.raises(EstimateError) as e:
        measure(RunSpec(model=preset_config("tiny"), seq=32))
    assert "give model= a name" in one_sentence(e)
