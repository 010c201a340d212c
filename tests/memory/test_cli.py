"""``python -m minigpt.memory estimate|measure|compare``: output, JSON, and one-sentence errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.memory.buckets import BUCKETS  # noqa: E402
from minigpt.memory.estimate import estimate  # noqa: E402
from tests.memory.cli_run import run  # noqa: E402


def test_estimate_prints_a_table_in_binary_units(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-7b", "--method", "qlora", "--rank", "8",
                       "--targets", "all-linear", "--precision", "amp-bf16", "--batch", "1", "--seq", "512")
    assert code == 0
    assert out.startswith("estimated") and "GiB (1 GiB = 2**30 bytes)" in out
    for k in BUCKETS:
        assert k in out
    assert "peak" in out and "targets=all-linear" in out


def test_estimate_json_has_integer_buckets_peak_and_configuration(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "roberta-base", "--method", "lora", "--targets", "q,v",
                       "--precision", "amp-fp16", "--batch", "8", "--seq", "128", "--dropout", "0.1",
                       "--gpus", "4", "--zero", "2", "--json")
    assert code == 0
    d = json.loads(out)
    assert all(isinstance(d[k], int) for k in (*BUCKETS, "peak"))
    assert d["peak"] == sum(d[k] for k in BUCKETS)
    c = d["config"]
    assert (c["model"], c["method"], c["targets"], c["precision"], c["gpus"], c["zero"]) == \
        ("roberta-base", "lora", "query,value", "amp-fp16", 4, 2)
    api = estimate("roberta-base", method="lora", targets="q,v", precision="amp-fp16", batch=8, seq=128,
                   dropout=0.1, gpus=4, zero=2)
    assert d["peak"] == api.peak


def test_lora_dropout_is_its_own_flag_and_adds_each_adapters_copy_and_mask(capsys):
    base = ["estimate", "--model", "roberta-base", "--method", "lora", "--precision", "amp-bf16",
            "--batch", "2", "--seq", "64", "--semantics", "cuda", "--json"]
    runs = {}
    for p in ("0", "0.1"):
        code, out, _ = run(capsys, *base, "--lora-dropout", p)
        assert code == 0
        runs[p] = json.loads(out)
    assert runs["0.1"]["config"]["lora_dropout"] == 0.1 and runs["0.1"]["config"]["dropout"] == 0.1
    # q and v of 12 layers: autocast's bf16 copy that A's matmul saves is made per adapter with or
    # without dropout (now of the dropped x); dropout adds a 1-byte CUDA mask per adapter, except in
    # layer 0, whose input (the frozen embeddings' output) needs no gradient: no mask is kept
    extra = runs["0.1"]["activations_end_of_forward"] - runs["0"]["activations_end_of_forward"]
    n = 2 * 64 * 768
    assert extra == 11 * 2 * n * 1


def test_micro_batch_and_set_to_none_are_in_the_json_spec(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "small", "--batch", "8", "--micro-batch", "2",
                       "--no-set-to-none", "--json")
    cfg = json.loads(out)["config"]
    assert code == 0 and (cfg["batch"], cfg["micro_batch"], cfg["accumulation"], cfg["set_to_none"]) == (8, 2, 4, False)


def test_measure_and_compare_in_fake_mode(capsys):
    code, out, _ = run(capsys, "measure", "--model", "tiny", "--precision", "amp-bf16", "--batch", "2",
                       "--seq", "32", "--json")
    assert code == 0
    m = json.loads(out)
    assert m["label"].startswith("simulated CUDA") and all(isinstance(m[k], int) for k in BUCKETS)
    code, out, _ = run(capsys, "compare", "--model", "tiny", "--method", "lora", "--precision", "amp-bf16",
                       "--batch", "2", "--seq", "32", "--semantics", "cpu")
    assert code == 0
    assert "estimate" in out and "measured" in out and "difference" in out
    assert out.count("(exact)") == 4           # the four model-state buckets, to the byte
    peak = [l for l in out.splitlines() if l.startswith("peak ")][0]
    assert "%" in peak


@pytest.mark.parametrize("argv,expect", [
    (["estimate", "--method", "dora"], "invalid choice: 'dora' (choose from 'full', 'lora', 'qlora', 'head')"),
    (["estimate", "--precision", "fp8"], "choose from 'fp32', 'amp-fp16', 'amp-bf16', 'bf16', 'fp16', 'fp16-master'"),
    (["estimate", "--optimizer", "lion"], "choose from 'adamw', 'sgd', 'adamw-8bit', 'paged-adamw'"),
    (["estimate", "--attention", "flash"], "choose from 'sdpa', 'eager'"),
    (["estimate", "--zero", "4"], "choose from 0, 1, 2, 3"),
    (["estimate", "--mode", "tpu"], "choose from 'fake', 'cpu', 'cuda'"),
    (["estimate", "--semantics", "rocm"], "choose from 'cpu', 'cuda'"),
    (["estimate", "--batch", "0"], "--batch: must be a positive integer"),
    (["estimate", "--dropout", "1"], "--dropout: must be a probability in [0, 1)"),
    (["estimate", "--lora-dropout", "1"], "--lora-dropout: must be a probability in [0, 1)"),
    (["estimate", "--batch", "4", "--micro-batch", "3"], "micro_batch must be a positive divisor of batch=4"),
    (["estimate", "--micro-batch", "0"], "--micro-batch: must be a positive integer"),
    (["estimate", "--lora-dropout", "0.1"], "lora_dropout applies to the adapters"),
    (["estimate", "--model", "gpt-5"], "use one of: tiny, small"),
    (["estimate", "--model", "small", "--seq", "999"], "use seq <= 128"),
    (["estimate", "--method", "lora", "--targets", "wq"], "matches no linear layer"),
    (["estimate", "--double-quant"], "method='qlora' only"),
    (["measure", "--precision", "fp16-master"], "measure cannot run precision 'fp16-master'"),
    (["measure", "--optimizer", "adamw-8bit"], "measure cannot run optimizer 'adamw-8bit'"),
    (["measure", "--gpus", "4", "--zero", "3"], "--gpus and --zero are for the estimate command only"),
    (["measure", "--mode", "cuda"], "needs a CUDA GPU"),
    (["plot"], "invalid choice: 'plot'"),
])
def test_bad_arguments_get_one_sentence_naming_the_allowed_values(capsys, argv, expect):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and lines[0].endswith("."), err


def test_python_dash_m_entry_point():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "minigpt.memory", "estimate", "--model", "tiny", "--seq", "32", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["config"]["model"] == "tiny"
