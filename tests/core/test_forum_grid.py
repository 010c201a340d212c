"""The forum's grid on MiniLM (minigpt.classify_memory, benchmarks/bench_forum_grid.py): the learner's
"8 x length" inputs, one tracked step at fp32 and under bf16 autocast, and the committed results of
``make benchmark-grid`` checked against today's code where that is cheap (estimates, trainable counts,
the RoBERTa-base trace beside them) and against what theory 03 and lab 05 say about them."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from course import puzzle  # noqa: E402
from minigpt.classify_memory import (GRID_METHODS, GRID_PRECISIONS, GRID_SCALES, MAX_POSITIONS,  # noqa: E402
                                     grid_estimate, grid_memory, repeat_text, scaled_reviews)
from minigpt.encoder import load_tokenizer  # noqa: E402
from minigpt.finetune import build_classifier  # noqa: E402
from minigpt.hf_data import review_loader, reviews_dataset  # noqa: E402
from minigpt.lora import trainable_parameters  # noqa: E402

CELLS = [(p, m, s) for p in GRID_PRECISIONS for m in GRID_METHODS for s in GRID_SCALES]


@pytest.fixture(scope="module")
def measured():
    return puzzle.measured_grid()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_repeat_text_is_the_review_written_scale_times():
    assert repeat_text("a fine film", 1) == "a fine film"
    assert repeat_text("a fine film", 3) == "a fine film a fine film a fine film"
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        repeat_text("x", 0)


def test_scaled_reviews_repeat_and_report_the_cap(tokenizer):
    one, info1 = scaled_reviews("train", 4, 1, tokenizer)
    eight, info8 = scaled_reviews("train", 4, 8, tokenizer)
    for a, b in zip(one["input_ids"], eight["input_ids"]):
        # [CLS] body [SEP] -> [CLS] body x 8 [SEP]: WordPiece splits a word the same way in every copy
        assert len(b) - 2 == 8 * (len(a) - 2)
    assert info1["rows_cut"] == info8["rows_cut"] == 0 and info8["rows"] == 4
    long, info = scaled_reviews("train", 4, 40, tokenizer)          # 40 copies pass 512 positions
    uncut = [len(tokenizer(repeat_text(t, 40))["input_ids"]) for t in reviews_dataset("train", n=4)["text"]]
    assert [len(x) for x in long["input_ids"]] == [min(n, MAX_POSITIONS) for n in uncut]
    assert info["rows_cut"] == sum(n > MAX_POSITIONS for n in uncut) >= 1
    assert info["max_tokens_uncut"] == max(uncut)


def test_grid_memory_autocast_copies_the_weights_and_fp32_does_not(tokenizer):
    ds, _ = scaled_reviews("train", 1, 1, tokenizer)
    batch = next(iter(review_loader(ds, tokenizer, batch_size=1)))
    fp32, amp = grid_memory("lora", batch, "fp32"), grid_memory("lora", batch, "amp-bf16")
    assert fp32.phases["forward"]["buckets"]["weight_copies"] == 0
    assert amp.phases["forward"]["buckets"]["weight_copies"] > 0       # the frozen base, cast per forward
    assert fp32.buckets["weights_frozen"] == amp.buckets["weights_frozen"]
    with pytest.raises(ValueError, match="precision must be one of"):
        grid_memory("lora", batch, "fp16")


def test_committed_grid_matches_todays_estimator_and_counts(measured):
    assert set(measured["cells"]) == {f"{p}/{m}/x{s}" for p, m, s in CELLS}
    batch = measured["settings"]["batch_size"]
    counts = {m: trainable_parameters(build_classifier(m))[0] for m in GRID_METHODS}
    for p, m, s in CELLS:
        c = puzzle.measured_cell(measured, p, m, s)
        assert c["tokens"] == measured["inputs"][f"x{s}"]["memory_batch_tokens"]
        est = grid_estimate(m, batch, c["tokens"], p)
        assert c["memory"]["estimated_peak"] == int(est.to_dict()["peak"]), (p, m, s)
        assert c["trainable_params"] == counts[m]
        mem = c["memory"]
        assert mem["peak"] == sum(mem[k] for k in ("weights_trainable", "weights_frozen", "weight_copies",
                                                   "gradients", "optimizer", "activations", "temporaries"))


def test_committed_roberta_cells_are_todays_puzzle_trace(measured):
    c = puzzle.measured_cell(measured, "amp-bf16", "lora", 8)
    t = puzzle.trace(puzzle.spec(puzzle.MINILM_PRECISION["amp-bf16"], "lora", 8))
    assert c["roberta_base"]["peak"] == t["peak"]


def test_what_theory_03_and_lab_05_say_of_the_grid_holds(measured):
    cell = lambda p, m, s: puzzle.measured_cell(measured, p, m, s)["memory"]  # noqa: E731
    for p in GRID_PRECISIONS:
        for s in GRID_SCALES:
            assert cell(p, "lora", s)["peak"] < cell(p, "full", s)["peak"]           # LoRA below full, every setting
    # activations grow faster than the tokens (the T^2 attention scores of the CPU math path)
    t1, t8 = (measured["inputs"][f"x{s}"]["memory_batch_tokens"] for s in GRID_SCALES)
    assert cell("fp32", "lora", 8)["activations"] / cell("fp32", "lora", 1)["activations"] > t8 / t1
    # autocast shrinks the activations
    for s in GRID_SCALES:
        assert cell("amp-bf16", "lora", s)["activations"] < cell("fp32", "lora", s)["activations"]
    # every setting ran its planned training steps and was scored (theory 03 quotes the accuracy range)
    st = measured["settings"]
    for c in measured["cells"].values():
        assert c["steps"] == -(-st["train_reviews"] // st["train_batch_size"]) and 0 <= c["accuracy"] <= 1
