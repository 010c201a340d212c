"""MiniGPT model: parameter counts, meta-device presets, attention paths, checkpointing, classifier."""
import pytest
import torch

from minigpt.model import (GPT, PRESETS, GPTClassifier, GPTConfig, from_preset, parameter_count,
                           preset_config)
from minigpt.repro import set_seed

# Published parameter counts (Touvron et al. 2023 / 2023b; the Hugging Face LLaMA checkpoints).
LLAMA_PUBLISHED = {"llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320, "llama-70b": 68_976_648_192}
# A small LLaMA-shaped config (rotary, RMSNorm, SwiGLU, grouped-query attention, no biases).
LLAMA_TINY = dict(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=48,
                  bias=False, mlp="swiglu", norm="rmsnorm", pos="rope", tie_weights=False)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_count_matches_closed_form(name):
    model = from_preset(name, device="meta")
    assert model.num_parameters() == parameter_count(model.config)
    # the same count from the modules, each tensor once (the tied head shares the embedding)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == parameter_count(model.config)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_on_cpu_count_the_same_as_on_meta(name):
    assert from_preset(name).num_parameters() == from_preset(name, device="meta").num_parameters()


def test_closed_form_covers_biases_untied_heads_and_gqa():
    for overrides in (dict(bias=False), dict(tie_weights=False), dict(n_kv_head=1), dict(ffn_hidden=100)):
        cfg = preset_config("tiny", **overrides)
        assert GPT(cfg).num_parameters() == parameter_count(cfg), overrides
    cfg = GPTConfig(**LLAMA_TINY)
    assert GPT(cfg).num_parameters() == parameter_count(cfg)


@pytest.mark.parametrize("name,published", list(LLAMA_PUBLISHED.items()))
def test_llama_presets_have_the_published_parameter_counts(name, published):
    assert parameter_count(preset_config(name)) == published
    assert from_preset(name, device="meta").num_parameters() == published


def test_preset_names_match_their_sizes():
    # names truncate: 85.5M parameters is "85m", 3.21M is "3.2M"
    assert int(parameter_count(preset_config("minigpt-85m")) / 1e6) == 85
    assert int(parameter_count(preset_config("small")) / 1e5) == 32


def test_meta_preset_allocates_nothing():
    model = from_preset("minigpt-85m", device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.is_meta for t in tensors)


def _copy_with(model: GPT, **overrides) -> GPT:
    other = GPT(GPTConfig(**{**model.config.to_dict(), **overrides}))
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_sdpa_and_eager_attention_agree(shape):
    set_seed(0)
    cfg = preset_config("tiny") if shape == "gpt2" else GPTConfig(**LLAMA_TINY)
    sdpa = GPT(cfg).eval()
    eager = _copy_with(sdpa, attention="eager").eval()
    idx = torch.randint(cfg.vocab_size, (3, cfg.block_size))
    with torch.no_grad():
        a, _ = sdpa(idx)
        b, _ = eager(idx)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_grads_and_saves_less():
    set_seed(0)
    model = from_preset("tiny").train()
    x = torch.randint(model.config.vocab_size, (4, 64))
    y = torch.randint(model.config.vocab_size, (4, 64))
    loss, grads = _loss_and_grads(model, x, y)
    model.set_gradient_checkpointing(True)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, x, y)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)

    # and it is really on: autograd keeps fewer bytes of activations for backward
    def saved_bytes() -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, y)
        return total
    with_ckpt = saved_bytes()
    model.set_gradient_checkpointing(False)
    assert with_ckpt < saved_bytes()


def test_classifier_shapes_and_padding_is_ignored():
    set_seed(0)
    clf = GPTClassifier(from_preset("tiny"), n_classes=3).eval()
    idx = torch.randint(79, (4, 20))
    labels = torch.tensor([0, 1, 2, 1])
    lengths = torch.tensor([20, 5, 12, 1])
    logits, loss = clf(idx, labels, lengths)
    assert logits.shape == (4, 3) and loss.shape == ()
    # tokens after each row's length are padding: changing them must not change the logits
    padded = idx.clone()
    for row, n in enumerate(lengths.tolist()):
        padded[row, n:] = 0
    torch.testing.assert_close(clf(padded, lengths=lengths)[0], logits)
    assert clf(idx)[1] is None


def test_classifier_mean_pooling_averages_the_real_tokens_only():
    set_seed(0)
    clf = GPTClassifier(from_preset("tiny"), n_classes=2, pooling="mean").eval()
    idx = torch.randint(79, (3, 16))
    lengths = torch.tensor([16, 7, 1])
    logits = clf(idx, lengths=lengths)[0]
    with torch.no_grad():
        h = clf.gpt.hidden_states(idx)
        expected = torch.stack([clf.classifier(h[row, :n].mean(0)) for row, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(logits, expected)
    padded = idx.clone()
    for row, n in enumerate(lengths.tolist()):
        padded[row, n:] = 0
    torch.testing.assert_close(clf(padded, lengths=lengths)[0], logits)
    # without lengths every token is real
    torch.testing.assert_close(clf(idx)[0], clf.classifier(clf.gpt.hidden_states(idx).mean(1)))
    assert GPTClassifier(from_preset("tiny")).pooling == "last"   # the default is unchanged
    with pytest.raises(ValueError, match="pooling"):
        GPTClassifier(from_preset("tiny"), pooling="max")


# ------------------------------------------------------------------------- clear errors
def test_unknown_preset_is_one_clear_error():
    with pytest.raises(ValueError, match=r"Unknown preset 'gpt-5'; choose one of: tiny, small"):
        from_preset("gpt-5")


def test_sequence_longer_than_context_is_one_clear_error():
    model = from_preset("tiny")
    with pytest.raises(ValueError, match=r"Sequence length 65 is longer than the context block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="must be divisible by n_head"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="attention='flash' is not known"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match="has no field"):
        preset_config("tiny", n_layers=3)
