"""The closed-form estimator (minigpt/memory/estimate.py) against the model code, the libraries,
published formulas, and the tensor tracker (measure_step in fake mode).

Run with ``pytest -s`` to see the estimate-vs-measurement grid and its worst case.
"""
from __future__ import annotations

import math
import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt.lora import lora_parameter_count  # noqa: E402
from minigpt.memory import estimate as E  # noqa: E402
from minigpt.memory import zoo  # noqa: E402
from minigpt.memory.buckets import BUCKETS  # noqa: E402
from minigpt.memory.compare import accuracy_grid, format_grid, measure, measured_model_state  # noqa: E402
from minigpt.model import parameter_count, preset_config  # noqa: E402
from minigpt.nf4 import nf4_nbytes  # noqa: E402
from minigpt.repro import set_seed  # noqa: E402


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["tiny", "small", "minigpt-85m", "minigpt:llama-7b", "roberta-base",
                                  "bert-large", "llama-7b", "llama-70b"])
def test_parameter_inventory_matches_the_model_built_on_meta(name):
    spec = E.resolve_model(name)
    inv = {t.name: t.numel for t in E.parameter_inventory(spec)}
    model = zoo.build(name, device="meta")
    params = {n: p.numel() for n, p in model.named_parameters()}   # a tied head is listed once
    buffers = {n: b.numel() for n, b in model.named_buffers()}
    assert inv == {**params, **buffers}
    assert E.n_parameters(spec) == sum(params.values())


def test_minigpt_parameter_count_agrees_with_the_model_module():
    for name in ("tiny", "small", "minigpt-85m", "llama-7b", "llama-70b"):
        assert E.n_parameters(E.resolve_model(f"minigpt:{name}")) == parameter_count(preset_config(name))


@pytest.mark.parametrize("name,targets", [("small", "q,v"), ("small", "all-linear"),
                                          ("roberta-base", "q,v"), ("roberta-base", "all-linear"),
                                          ("llama-7b", "all-linear"), ("llama-70b", "q,v,k,o")])
def test_lora_trainable_count_matches_minigpt_lora(name, targets):
    spec = E.resolve_model(name)
    tg = E.resolve_targets(spec, targets)
    st = E.model_states(spec, "lora", "fp32", "adamw", 8, tg, False, "cpu")
    head = ("classifier",) if spec.task == "cls" else ()
    head_params = sum(t.numel for t in E.parameter_inventory(spec) if t.name.startswith("classifier."))
    assert st.n_trainable == lora_parameter_count(spec.config, 8, tg, trainable=head) + head_params


def test_targets_shorthand_resolves_per_architecture():
    assert E.resolve_targets(E.resolve_model("roberta-base"), "q,v") == ("query", "value")
    assert E.resolve_targets(E.resolve_model("llama-7b"), "q, v") == ("q_proj", "v_proj")
    assert E.resolve_targets(E.resolve_model("small"), ["q", "o"]) == ("q_proj", "o_proj")
    assert E.resolve_targets(E.resolve_model("small"), "ALL-LINEAR") == "all-linear"


@pytest.mark.parametrize("numel", [64, 4096, 4096 * 11008, 1000, 63, 65 * 257])
@pytest.mark.parametrize("dq", [False, True])
def test_nf4_bytes_match_minigpt_nf4(numel, dq):
    assert E.nf4_bytes(numel, dq) == nf4_nbytes(numel, 64, dq)


# ---------------------------------------------------------------------- model states
def _linear_weights(spec) -> int:
    return sum(t.numel for t in E.parameter_inventory(spec) if t.kind == "linear_w")


def test_bytes_per_parameter_fp32_amp_pure_and_fp16_master():
    spec = E.resolve_model("llama-7b")
    N = E.n_parameters(spec)
    counters = len([t for t in E.parameter_inventory(spec) if not t.kind.startswith("buffer")])
    for prec, (w, g, o) in {"fp32": (4, 4, 8), "amp-bf16": (4, 4, 8), "bf16": (2, 2, 4),
                            "fp16-master": (2, 2, 12)}.items():
        st = E.model_states(spec, "full", prec, "adamw", 8, (), False, "cuda")
        assert (st.weights_trainable, st.gradients, st.optimizer) == (w * N, g * N, o * N), prec
        assert st.host == 4 * counters          # AdamW step counters live on the host on CUDA
    # AMP: 16 persistent bytes per parameter, plus the 16-bit copy of every Linear weight = 18
    est = E.estimate("llama-7b", precision="amp-bf16", batch=1, seq=16)
    ms = est.model_state
    assert ms["weights_trainable"] + ms["gradients"] + ms["optimizer"] == 16 * N
    assert est.phases["forward"]["buckets"]["weight_copies"] >= 2 * _linear_weights(spec)
    # the client's draft accounting, done right: fp16 weights + grads + fp32 master + 2 moments = 16
    est = E.estimate("llama-7b", precision="fp16-master", batch=1, seq=16)
    assert sum(est.model_state[k] for k in ("weights_trainable", "gradients", "optimizer")) == 16 * N


def test_optimizer_bytes_sgd_8bit_and_paged():
    spec = E.resolve_model("small")
    inv = [t.numel for t in E.parameter_inventory(spec) if not t.kind.startswith("buffer")]
    sgd = E.model_states(spec, "full", "fp32", "sgd", 8, (), False, "cpu")
    assert sgd.optimizer == 4 * sum(inv)
    eight = E.model_states(spec, "full", "fp32", "adamw-8bit", 8, (), False, "cuda")
    expect = sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in inv) + 2 * 256 * 4
    assert eight.optimizer == expect
    paged = E.model_states(spec, "full", "fp32", "paged-adamw", 8, (), False, "cuda")
    assert paged.optimizer == sum(8 * n for n in inv if n < 100_000)
    assert paged.paged == sum(8 * n for n in inv if n >= 100_000)
    est = E.estimate("llama-7b", optimizer="paged-adamw", seq=16)
    assert est.model_state["optimizer"] < 0.001 * est.paged_bytes   # ~0 GPU-resident at the peak
    assert any("unified memory" in n for n in est.notes)
    # but bitsandbytes pages only tensors of >= 100,000 elements: LoRA adapters (r=8) are smaller,
    # so their (small) state stays on the GPU
    lora = E.estimate("llama-7b", method="lora", targets="all-linear", optimizer="paged-adamw", seq=16)
    assert lora.paged_bytes == 0 and lora.model_state["optimizer"] == 8 * lora.n_trainable


def test_qlora_frozen_bytes_are_nf4_with_and_without_double_quant():
    spec = E.resolve_model("llama-7b")
    lin = [(t.module, t.numel) for t in E.parameter_inventory(spec) if t.kind == "linear_w"]
    other = sum(t.numel for t in E.parameter_inventory(spec) if t.kind in ("embed", "norm"))
    buffers = sum(4 * t.numel for t in E.parameter_inventory(spec) if t.kind == "buffer_float")
    for dq in (False, True):
        st = E.model_states(spec, "qlora", "amp-bf16", "adamw", 8, "all-linear", dq, "cuda")
        nf4 = sum(E.nf4_bytes(n, dq) for m, n in lin if m != "lm_head")
        head = 4 * dict(lin)["lm_head"]
        assert st.weights_frozen == nf4 + head + 4 * other + buffers
    no_dq = E.model_states(spec, "qlora", "amp-bf16", "adamw", 8, "all-linear", False, "cuda")
    assert no_dq.weights_frozen > st.weights_frozen      # double quantisation saves ~0.37 bit/weight


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_zero_sharding_divides_model_states_by_the_gpu_count(zero):
    base = E.estimate("llama-7b", precision="amp-bf16", seq=64)
    sh = E.estimate("llama-7b", precision="amp-bf16", seq=64, gpus=8, zero=zero)
    b, s = base.model_state, sh.model_state
    ceil8 = lambda n: -(-n // 8)  # noqa: E731
    assert s["optimizer"] == (ceil8(b["optimizer"]) if zero >= 1 else b["optimizer"])
    assert s["gradients"] == (ceil8(b["gradients"]) if zero >= 2 else b["gradients"])
    assert s["weights_trainable"] == (ceil8(b["weights_trainable"]) if zero >= 3 else b["weights_trainable"])
    assert sh.activations == base.activations            # each GPU runs its own batch
    assert sh.peak <= base.peak


# ---------------------------------------------------------------------- activations
def test_gpt_block_reproduces_korthikanti_in_16_bit_with_dropout():
    """Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) bytes per GPT block, 16-bit, dropout,
    non-fused attention. Our walk of MiniGPT's block in pure fp16, eager attention, CUDA
    semantics (1-byte dropout masks) gives exactly that plus what the paper leaves out: the
    LayerNorms' mean and rstd (2 LayerNorms x 2 x b*s x 2 bytes) and the bool causal mask (s*s)."""
    B, T = 2, 64
    spec = E.resolve_model("small", dropout=0.1, attention="eager")
    ctx = E._Ctx(spec, B, T, "fp16", "cuda", "eager", 0.1, 0.1, "full", 8, frozenset(), frozenset(), ())
    block = E.forward_walk(ctx).blocks[1]
    paper = E.korthikanti_bytes(T, B, spec.d, spec.n_head)
    assert block == paper + 2 * 2 * B * T * 2 + T * T


def test_checkpointing_keeps_only_block_inputs():
    kw = dict(model="small", batch=4, seq=128, semantics="cpu")
    plain, ck = E.estimate(**kw), E.estimate(checkpointing=True, **kw)
    spec = E.resolve_model("small")
    outside = ck.activations - spec.n_layer * 4 * 128 * spec.d * 4
    assert 0 < outside < plain.activations / spec.n_layer
    assert ck.peak < plain.peak


def test_sdpa_saves_less_than_eager_and_dropout_adds_masks():
    kw = dict(model="small", batch=2, seq=128, semantics="cuda")
    sdpa, eager = E.estimate(attention="sdpa", **kw), E.estimate(attention="eager", **kw)
    assert eager.activations > sdpa.activations
    drop = E.estimate(attention="sdpa", dropout=0.1, **kw)
    spec = E.resolve_model("small")
    # CUDA: 1-byte masks after the embeddings and twice per block (attention dropout is in the kernel)
    assert drop.activations - sdpa.activations == (1 + 2 * spec.n_layer) * 2 * 128 * spec.d


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,words", [
    (dict(method="lorra"), "method"), (dict(precision="fp8"), "precision"),
    (dict(optimizer="adam9"), "optimizer"), (dict(attention="flash"), "attention"),
    (dict(semantics="tpu"), "semantics"), (dict(zero=4), "zero"), (dict(batch=0), "batch"),
    (dict(seq=4096), "seq"), (dict(dropout=1.5), "dropout"), (dict(model="gpt-5"), "model"),
    (dict(method="lora", rank=0), "rank"), (dict(method="lora", targets="foo"), "foo"),
    (dict(double_quant=True), "double_quant"), (dict(method="lora", rank=999), "rank"),
    (dict(method="lora", lora_dropout=1.0), "lora_dropout"), (dict(lora_dropout=0.1), "lora_dropout"),
])
def test_bad_arguments_get_one_sentence(kwargs, words):
    with pytest.raises(E.EstimateError) as err:
        E.estimate(**{"model": "small", **kwargs})
    msg = str(err.value)
    assert words in msg and msg.count("\n") == 0 and msg.endswith(".")


def test_table_and_to_dict():
    est = E.estimate("llama-7b", method="qlora", targets="all-linear", precision="amp-bf16", seq=512)
    d = est.to_dict()
    assert set(BUCKETS) <= set(d) and d["peak"] == sum(d[k] for k in BUCKETS)
    assert all(isinstance(d[k], int) for k in (*BUCKETS, "peak"))
    assert d["config"]["targets"] == "all-linear" and d["config"]["precision"] == "amp-bf16"
    t = est.table()
    assert "GiB (1 GiB = 2**30 bytes)" in t and t.startswith("estimated") and "nothing was run" in t


# ---------------------------------------------------------------------- against the tracker
@pytest.fixture(scope="module")
def grid():
    set_seed(0)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    rows = accuracy_grid(semantics="cpu")
    # true roberta-base shapes (fake tensors), one sequence length, no checkpointing
    rows += accuracy_grid(models=(("roberta-base", {}),), precisions=("amp-bf16",), seqs=(128,),
                          checkpointing=(False,), semantics="cpu")
    # LLaMA (transformers, reduced size; built for training with use_cache=False), CPU semantics
    llama = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256,
                 vocab_size=512)
    rows += accuracy_grid(models=(("llama-7b", llama),), precisions=("fp32", "amp-bf16"), seqs=(64,),
                          semantics="cpu")
    # simulated CUDA (cuda_rules), with and without checkpointing (the recomputation runs under
    # the same rules; CUDA autocast's cast applies to the simulated attention kernel)
    rows += accuracy_grid(methods=("full", "lora"), precisions=("fp32", "amp-bf16", "bf16"),
                          seqs=(128,), checkpointing=(False, True), semantics="cuda")
    # LoRA / QLoRA on every linear layer (the MLP's up/down projections too) of the true `small`
    # preset at lab 04's batch (4 x 64): three MLP-wide gradients at the down projection's input
    # (x@A.T's, the frozen layer's, their out-of-place sum), the fp32 x.to(A.dtype) under
    # autocast, NF4's decoded weight beside its input gradient
    small_all = dict(models=(("small", {}),), seqs=(64,), batch=4, targets="all-linear")
    rows += accuracy_grid(methods=("lora", "qlora"), precisions=("fp32", "amp-bf16"),
                          checkpointing=(False, True), semantics="cpu", **small_all)
    rows += accuracy_grid(methods=("lora",), precisions=("amp-bf16",), checkpointing=(False, True),
                          semantics="cuda", **small_all)
    # LoRA dropout (peft's lora_dropout): every adapter drops its own copy of its input and keeps
    # it, with the mask, for backward; BERT (MiniLM-shaped, lab 02) and LLaMA, both semantics
    minilm = dict(num_hidden_layers=2, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    for sem in ("cpu", "cuda"):
        rows += accuracy_grid(models=(("bert-large", minilm),), methods=("lora", "qlora"),
                              precisions=("fp32", "amp-bf16"), seqs=(64,), checkpointing=(False,),
                              semantics=sem, lora_dropout=0.1)
        rows += accuracy_grid(models=(("llama-7b", llama),), methods=("lora",), precisions=("amp-bf16",),
                              seqs=(64,), checkpointing=(True,), semantics=sem, lora_dropout=0.1)
    print("\n" + format_grid(rows))
    return rows


def test_model_state_buckets_equal_the_tracker_to_the_byte(grid):
    for r in grid:
        assert r["state_est"] == r["state_meas"], r


def test_the_grid_covers_lora_dropout(grid):
    assert {r["semantics"] for r in grid if r["lora_dropout"]} == {"cpu", "cuda"}


def test_peak_within_2_percent_without_checkpointing(grid):
    rows = [r for r in grid if not r["checkpointing"]]
    worst = max(rows, key=lambda r: abs(r["error"]))
    assert abs(worst["error"]) <= 2.0, worst


def test_peak_within_2_percent_with_checkpointing(grid):
    rows = [r for r in grid if r["checkpointing"]]
    assert rows and any(r["semantics"] == "cuda" for r in rows)
    worst = max(rows, key=lambda r: abs(r["error"]))
    assert abs(worst["error"]) <= 2.0, worst


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_minigpt_block_formulas_in_the_docstring(precision):
    """estimate.py's docstring: fp32 32*N*d + 8*N*f + 16*N + 4*b*H*s, AMP 24*N*d + 4*N*f + 16*N
    + 4*b*H*s bytes per MiniGPT block (full fine-tuning, fused attention, no dropout)."""
    B, T = 3, 40
    spec = E.resolve_model("small")
    N, d, f, H = B * T, spec.d, spec.ffn, spec.n_head
    ctx = E._Ctx(spec, B, T, precision, "cpu", "sdpa", 0.0, 0.0, "full", 8, frozenset(), frozenset(), ())
    block = E.forward_walk(ctx).blocks[1]
    nd, nf = (32, 8) if precision == "fp32" else (24, 4)
    assert block == nd * N * d + nf * N * f + 16 * N + 4 * B * H * T


def test_absurd_alpha_and_a_sequence_beyond_the_trained_positions_get_one_sentence():
    with pytest.raises(E.EstimateError, match="alpha must be a positive number"):
        E.estimate("tiny", method="lora", alpha=float("inf"), seq=32)
    with pytest.raises(E.EstimateError, match=r"longer than llama-7b's 2048 positions; use seq <= 2048 \(or a config"):
        E.estimate("llama-7b", method="lora", seq=1_000_000)


def test_qlora_and_lora_report_the_same_logical_parameter_count():
    """NF4 weights are buffers of packed 4-bit codes; the parameter count is still the model's."""
    lora = E.estimate("llama-7b", method="lora", targets="all-linear", seq=128)
    qlora = E.estimate("llama-7b", method="qlora", targets="all-linear", seq=128)
    assert qlora.n_params == lora.n_params == E.n_parameters(E.resolve_model("llama-7b")) + lora.n_trainable
    assert qlora.n_trainable == lora.n_trainable
    assert qlora.model_state["weights_frozen"] < lora.model_state["weights_frozen"] / 3   # storage differs
    from minigpt.memory.compare import measure
    kw = dict(model="tiny", method="qlora", targets="all-linear", seq=32)
    assert measure(mode="cpu", semantics="cpu", **kw).n_params == E.estimate(semantics="cpu", **kw).n_params \
        == E.estimate(**{**kw, "method": "lora"}).n_params


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_qlora_decode_of_large_layers_reads_byte_pairs(precision):
    """minigpt.nf4 decodes a layer of >= 2**20 weights through a table of byte pairs (5 B/weight +
    1 MiB at its worst, not 6; under bf16 compute the fp32-to-bf16 cast is then the worst moment):
    minigpt-85m's 768 x 3072 MLP layers take that path, against a fake-tensor trace."""
    kw = dict(model="minigpt-85m", method="qlora", targets="all-linear", precision=precision, semantics="cuda",
              batch=1, seq=64, n_layer=2)
    est, rep = E.estimate(**kw), measure(mode="fake", **kw)
    assert est.model_state == measured_model_state(rep)
    assert abs(est.peak - rep.peak) <= 0.001 * rep.peak, (est.peak, rep.peak)
