"""Training loop, checkpoints, and the shipped pretrained checkpoint."""
import re
from pathlib import Path

import pytest
import torch

from minigpt.data import encode_corpus, lm_batch, shakespeare_text
from minigpt.model import GPTClassifier, from_preset
from course.pretrain import CARD_PATH, heldout_loss
from minigpt.repro import set_seed
from minigpt.train import (PRETRAINED_PATH, History, evaluate, load_checkpoint, load_pretrained,
                           lr_at, save_checkpoint, train)


@pytest.fixture(scope="module")
def val_ids() -> torch.Tensor:
    return encode_corpus(shakespeare_text("val"))


def fixed_batches(ids, n=4, batch_size=8, block=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [lm_batch(ids, batch_size, block, g) for _ in range(n)]


def cycle(batches):
    state = {"i": 0}

    def get_batch():
        state["i"] += 1
        return batches[(state["i"] - 1) % len(batches)]
    return get_batch


def test_short_training_run_on_tiny_lowers_the_loss(val_ids):
    set_seed(0)
    model = from_preset("tiny")
    held_out = fixed_batches(val_ids, seed=1)
    before = evaluate(model, cycle(held_out), len(held_out))
    g = torch.Generator().manual_seed(0)
    h = train(model, lambda: lm_batch(val_ids, 8, 64, g), steps=40, lr=3e-3, eval_every=20,
              eval_fn=cycle(held_out), eval_iters=len(held_out), progress=False)
    after = evaluate(model, cycle(held_out), len(held_out))
    assert isinstance(h, History)
    assert h.step == list(range(1, 41)) and len(h.train_loss) == len(h.seconds_per_step) == 40
    assert h.eval_step == [20, 40] and len(h.val_loss) == 2
    assert h.val_loss[-1] == pytest.approx(after)
    assert after < before - 0.5, (before, after)      # from ~ln(79) = 4.37 to well below
    assert all(s > 0 for s in h.seconds_per_step)
    assert "train loss" in h.summary()


def test_only_trainable_parameters_are_optimised(val_ids):
    set_seed(0)
    clf = GPTClassifier(from_preset("tiny"), n_classes=2)
    for p in clf.gpt.parameters():
        p.requires_grad_(False)
    frozen = {n: p.clone() for n, p in clf.gpt.named_parameters()}
    head = clf.classifier.weight.clone()
    x = val_ids[:8 * 32].view(8, 32)
    labels = torch.tensor([0, 1] * 4)
    lengths = torch.full((8,), 32)
    train(clf, lambda: (x, labels, lengths), steps=3, lr=1e-2, progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in clf.gpt.named_parameters())
    assert not torch.equal(clf.classifier.weight, head)


def test_gradient_checkpointing_trains_identically_and_is_switched_off_after(val_ids):
    batches = fixed_batches(val_ids)
    losses = []
    for checkpointing in (False, True):
        set_seed(0)
        model = from_preset("tiny")
        h = train(model, cycle(batches), steps=4, checkpointing=checkpointing, progress=False)
        assert model.gradient_checkpointing is False
        losses.append(h.train_loss)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # inside a classifier the GPT body is found and switched too
    clf = GPTClassifier(from_preset("tiny"))
    train(clf, lambda: (batches[0][0], torch.zeros(8, dtype=torch.long)), 1, checkpointing=True, progress=False)


def test_bf16_autocast_trains_on_cpu_and_fp16_on_cpu_is_a_clear_error(val_ids):
    set_seed(0)
    model = from_preset("tiny")
    h = train(model, cycle(fixed_batches(val_ids)), steps=2, precision="amp-bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(h.train_loss)))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 weights
    with pytest.raises(ValueError, match="'amp-fp16' needs a CUDA GPU .*use 'amp-bf16' or 'fp32' on the CPU"):
        train(model, cycle(fixed_batches(val_ids)), steps=1, precision="amp-fp16", progress=False)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        train(model, cycle(fixed_batches(val_ids)), steps=1, precision="fp8", progress=False)


def test_learning_rate_schedule_and_own_optimizer(val_ids):
    lrs = [lr_at(s, 100, 1e-3, 10, "cosine", 1e-4) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)      # linear warmup
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))                        # then decays
    # a caller's optimizer keeps its own learning rate (here 0: nothing may change)
    model = from_preset("tiny")
    before = [p.clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train(model, cycle(fixed_batches(val_ids)), steps=2, optimizer=opt, schedule="cosine", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_training_arguments_are_clear_errors(val_ids):
    model = from_preset("tiny")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, cycle(fixed_batches(val_ids)), steps=1, progress=False)
    with pytest.raises(ValueError, match="eval_every is set but eval_fn is None"):
        train(from_preset("tiny"), cycle(fixed_batches(val_ids)), steps=1, eval_every=1, progress=False)


def test_checkpoint_round_trip_is_exact_and_weights_only(tmp_path, val_ids):
    set_seed(0)
    model = from_preset("tiny").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, model.config, {"steps": 3, "losses": [1.5, 1.2]})
    raw = torch.load(path, weights_only=True)               # plain types and tensors only
    assert isinstance(raw["config"], dict) and raw["extra"]["steps"] == 3
    loaded, meta = load_checkpoint(path)
    x, _ = fixed_batches(val_ids, n=1)[0]
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert meta["config"] == model.config and meta["losses"] == [1.5, 1.2]
    assert loaded.lm_head.weight is loaded.wte.weight       # the tie survives the round trip

    clf = GPTClassifier(from_preset("tiny"), n_classes=3).eval()
    loaded_clf, _ = load_checkpoint(save_checkpoint(tmp_path / "c.pt", clf, clf.gpt.config))
    with torch.no_grad():
        assert torch.equal(clf(x)[0], loaded_clf(x)[0])

    with pytest.raises(TypeError, match=r"extra\['when'\] is a \w*Path; checkpoints store only tensors"):
        save_checkpoint(tmp_path / "bad.pt", model, model.config, {"when": Path(".")})


# ------------------------------------------------------------------ the shipped checkpoint
def card_value(label: str) -> float:
    m = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \|$", CARD_PATH.read_text(), flags=re.M)
    assert m, f"'{label}' not found in {CARD_PATH}"
    return float(m.group(1))


def test_shipped_checkpoint_loads_and_matches_its_model_card():
    assert PRETRAINED_PATH.stat().st_size <= 20 * 10**6     # <= 20 MB (10^6 bytes)
    model, meta = load_pretrained()
    assert meta["config"].to_dict() == from_preset("small", device="meta").config.to_dict()
    card = CARD_PATH.read_text()
    assert f"{meta['parameters']:,} parameters" in card and f"| steps | {meta['steps']} |" in card
    assert card_value("final val loss") == pytest.approx(meta["val_loss"], abs=5e-5)
    # recompute the card's validation loss on the same seeded batches
    set_seed(0)
    val = heldout_loss(model, "val")
    assert val < card_value("final val loss") + 0.02
    assert val < 2.5    # far below a uniform guess, ln(79) = 4.37: the model really learned
