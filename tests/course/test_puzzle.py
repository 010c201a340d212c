"""course.puzzle: the learner's experiment (lab 05, theory 03) -- lengths, specs, and the claims that
lab 05 and file 03 make about its traces (read from theory/traces.json, so these tests are fast)."""
from __future__ import annotations

import pytest
import torch

from course import docs, puzzle
from minigpt.memory.zoo import hf_config


def test_sequence_lengths_are_cut_at_robertas_positions():
    assert puzzle.seq_len(1) == puzzle.T_SHORT
    assert puzzle.seq_len(puzzle.SCALE) == min(puzzle.T_SHORT * puzzle.SCALE, puzzle.MAX_TOKENS)
    assert puzzle.seq_len(100) == puzzle.MAX_TOKENS
    # RoBERTa's position table has 2 entries before the first token (padding_idx + 1)
    assert puzzle.MAX_TOKENS == hf_config("roberta-base").max_position_embeddings - 2
    with pytest.raises(ValueError, match="positive"):
        puzzle.seq_len(0)


def test_padded_lengths_take_the_longest_row_of_each_batch():
    lengths = torch.tensor([3, 9, 4, 2, 7, 600])
    assert puzzle.padded_lengths(lengths, 2, cap=None).tolist() == [9, 4, 600]
    assert puzzle.padded_lengths(lengths, 2).tolist() == [9, 4, puzzle.MAX_TOKENS]
    assert puzzle.padded_lengths(lengths, 4, cap=None).tolist() == [9, 600]


def test_bpe_lengths_are_deterministic_and_give_the_short_length():
    texts = ["a truly great film", "dull, dull, dull."]
    a, b = puzzle._bpe.__wrapped__(puzzle.BPE_VOCAB), puzzle._bpe.__wrapped__(puzzle.BPE_VOCAB)
    assert [e.ids for e in a.encode_batch(texts)] == [e.ids for e in b.encode_batch(texts)]
    lengths = puzzle.token_lengths("train")
    # T_SHORT is the mean padded length of batches of BATCH snippets, rounded
    assert round(puzzle.padded_lengths(lengths, puzzle.BATCH, cap=None).float().mean().item()) == puzzle.T_SHORT


def test_docs_grid_is_the_puzzle_grid():
    assert (docs.ROBERTA_B, docs.ROBERTA_SHORT, docs.ROBERTA_SCALE) == (puzzle.BATCH, puzzle.T_SHORT, puzzle.SCALE)
    keys = {s.key() for s in docs.all_trace_specs()}
    for p in puzzle.PRECISIONS:
        for m in puzzle.METHODS:
            for s in puzzle.SCALES:
                assert puzzle.spec(p, m, s).key() in keys
    assert {s.key() for s in puzzle.mechanism_specs().values()} <= keys
    # default extra fields stay out of the cache key, so older cached traces keep their keys
    assert "base_dtype" not in puzzle.spec("fp32", "full").key()
    assert '"base_dtype": "fp16"' in puzzle.spec("fp32", "lora", base_dtype="fp16").key()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be"):
        puzzle.spec("fp32", "qlora")


def test_the_claims_of_lab_05_hold():
    """File 03 (Q4) and lab 05's part 6 state these comparisons in words: check them on the traces."""
    act = puzzle.forward_activations
    S, L = puzzle.SCALES
    pk = lambda p, m, s: docs.roberta(p, m, s)["peak"]  # noqa: E731
    mech = docs._mechanisms()
    allx = lambda p, s: mech[puzzle.all_linear_name(p, s)]["peak"]  # noqa: E731
    # q,v adapters: below full fine-tuning everywhere (the learner's fp16 result did not reproduce)
    assert all(pk(p, "lora", s) < pk(p, "full", s) for p in puzzle.PRECISIONS for s in puzzle.SCALES)
    # all-linear: above full with long inputs in both precisions, below with short ones
    assert all(allx(p, L) > pk(p, "full", L) and allx(p, S) < pk(p, "full", S) for p in puzzle.PRECISIONS)
    # LoRA dropout keeps copies; the head alone keeps almost nothing
    assert mech["fp16 LoRA, LoRA dropout 0"]["peak"] < pk("amp-fp16", "lora", L)
    assert act(mech["fp16 head only (no adapters)"]) < act(docs.roberta("amp-fp16", "lora", L)) / 100
    # fp16 base: fp32 adapters cost more than fp16 ones, by the formula, yet stay below pure-fp16 full
    f32, f16 = mech["fp16 base, fp32 adapters"], mech["fp16 base, fp16 adapters"]
    cfg = hf_config("roberta-base")
    assert act(f32) - act(f16) == puzzle.fp32_adapter_extra_bytes(
        puzzle.BATCH, puzzle.seq_len(L), cfg.hidden_size, puzzle.LORA["r"], 2 * cfg.num_hidden_layers)
    assert f16["peak"] < f32["peak"] < mech["pure fp16 full"]["peak"]
    assert mech["fp16 base, fp32 adapters, dropout 0"]["peak"] < f32["peak"]


def test_every_trace_is_a_run_spec():
    """course.traces builds and measures each theory trace from its RunSpec: the mechanisms of lab 05
    (a 16-bit base, fp16 adapters, the head alone) map onto RunSpec fields, and a TraceSpec that no
    RunSpec describes is refused in one sentence."""
    import pytest
    from course import puzzle
    from course.traces import TraceSpec
    mech = puzzle.mechanism_specs()
    runs = {name: s.run_spec() for name, s in mech.items()}
    base16 = runs["fp16 base, fp32 adapters"]
    assert (base16.precision, base16.adapter_dtype, base16.alpha) == ("fp16", "fp32", 16)
    assert runs["fp16 base, fp16 adapters"].adapter_dtype == "fp16"
    assert runs["fp16 head only (no adapters)"].method == "head"
    assert puzzle.spec("amp-fp16", "lora", 8).run_spec().lora_dropout == puzzle.LORA["dropout"]
    with pytest.raises(ValueError, match="use precision='fp32' with it"):
        TraceSpec(model="roberta-base", batch=1, seq=8, base_dtype="fp16", precision="amp-fp16").run_spec()
    with pytest.raises(ValueError, match="use trainable=\\('classifier',\\)"):
        TraceSpec(model="roberta-base", batch=1, seq=8, method="lora", targets=("query",)).run_spec()
