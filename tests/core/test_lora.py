"""minigpt.lora against peft 0.21.2: same adapted layers, outputs, gradients, counts, merges.

Every comparison builds our LoRA model and a peft LoRA model from copies of the same base
weights, puts the same non-zero A and B into both (a fresh adapter has B = 0, which would hide
any mistake in the A/B path), and compares in fp32.
"""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn as nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from peft import LoraConfig, get_peft_model                         # noqa: E402
from peft.tuners.lora import LoraLayer                              # noqa: E402
from transformers import (LlamaConfig, LlamaForCausalLM, RobertaConfig,  # noqa: E402
                          RobertaForSequenceClassification)

from minigpt.lora import (LoRALinear, apply_lora, lora_layers, lora_linear_shapes,  # noqa: E402
                          lora_parameter_count, merge_lora, trainable_parameters, unmerge_lora)
from minigpt.model import GPTClassifier, from_preset, preset_config  # noqa: E402
from minigpt.repro import set_seed                                    # noqa: E402

# transformers 5.23 warns about its own deprecated attribute when peft reads it
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
TOL = 1e-5
PEFT_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------- builders
def small_roberta_config() -> RobertaConfig:
    # dropout 0 so train-mode forwards are deterministic; 64 wide, 2 layers: fast on CPU
    return RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=40, num_labels=2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def small_roberta() -> RobertaForSequenceClassification:
    set_seed(0)
    return RobertaForSequenceClassification(small_roberta_config())


def roberta_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randint(3, 100, (3, 12), generator=g),), torch.tensor([0, 1, 1])


def roberta_loss(model, batch):
    (ids,), labels = batch
    logits = model(input_ids=ids).logits
    return logits, nn.functional.cross_entropy(logits, labels)


def tiny_gpt():
    set_seed(0)
    return from_preset("tiny")


def gpt_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 79, (2, 16), generator=g),), torch.randint(0, 79, (2, 16), generator=g)


def gpt_loss(model, batch):
    (idx,), targets = batch
    logits, loss = model(idx, targets)
    return logits, loss


def tiny_classifier():
    set_seed(0)
    return GPTClassifier(from_preset("tiny"), n_classes=2)


def classifier_loss(model, batch):
    (idx,), _ = batch
    logits, loss = model(idx, torch.tensor([0, 1]))
    return logits, loss


# ----------------------------------------------------------------------------- helpers
def peft_lora_modules(pm) -> dict[str, nn.Module]:
    return {n[len(PEFT_PREFIX):]: m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def build_pair(build, r, alpha, targets, trainable=(), dropout=0.0, peft_extra=None):
    """Our LoRA model and peft's, on the same base weights, with the same non-zero A and B."""
    base = build()
    ours = apply_lora(copy.deepcopy(base), r, alpha, dropout=dropout, targets=targets, trainable=trainable)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=targets if isinstance(targets, str) else list(targets),
                     modules_to_save=list(trainable) or None, **(peft_extra or {}))
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    ours_layers, their_layers = lora_layers(ours), peft_lora_modules(theirs)
    assert sorted(ours_layers) == sorted(their_layers)      # the same layers were adapted
    g = torch.Generator().manual_seed(2)
    for name, layer in ours_layers.items():
        A = torch.randn(layer.A.shape, generator=g) * 0.1
        B = torch.randn(layer.B.shape, generator=g) * 0.1
        layer.A.data.copy_(A)
        layer.B.data.copy_(B)
        their_layers[name].lora_A["default"].weight.data.copy_(A)
        their_layers[name].lora_B["default"].weight.data.copy_(B)
    return base, ours, theirs


def assert_match(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to 1e-5, and to 1e-5 of the tensor's own scale when that is below 1: some
    gradients here are ~1e-5 in size, where a bare atol of 1e-5 would check nothing.
    (On one machine the two are in fact bit-identical: the same ops run in the same order.)"""
    torch.testing.assert_close(ours, theirs, atol=TOL * min(1.0, theirs.abs().max().item()), rtol=0)


def assert_same_outputs_and_grads(base, ours, theirs, loss_fn, batch):
    out_ours, loss_ours = loss_fn(ours, batch)
    out_theirs, loss_theirs = loss_fn(theirs, batch)
    assert_match(out_ours, out_theirs)
    with torch.no_grad():   # the adapters move the output far more than the tolerance
        assert (out_ours - loss_fn(base, batch)[0]).abs().max() > 100 * TOL
    loss_ours.backward()
    loss_theirs.backward()
    their_layers = peft_lora_modules(theirs)
    for name, layer in lora_layers(ours).items():
        assert layer.A.grad.abs().sum() > 0 and layer.B.grad.abs().sum() > 0
        assert_match(layer.A.grad, their_layers[name].lora_A["default"].weight.grad)
        assert_match(layer.B.grad, their_layers[name].lora_B["default"].weight.grad)
    return out_ours


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------ equal to peft: RoBERTa (HF)
@pytest.mark.parametrize("targets", [("query", "value"), "all-linear"])
def test_roberta_outputs_grads_and_counts_match_peft(targets):
    base, ours, theirs = build_pair(small_roberta, r=4, alpha=8, targets=targets, trainable=("classifier",))
    assert_same_outputs_and_grads(base, ours, theirs, roberta_loss, roberta_batch())
    # the fully trained head gets the same gradient in both (peft trains a copy of it)
    assert_match(ours.classifier.dense.weight.grad,
                 theirs.base_model.model.classifier.modules_to_save["default"].dense.weight.grad)
    head = n_params(base.classifier)
    closed = lora_parameter_count(small_roberta_config(), 4, targets, trainable=("classifier",))
    peft_trainable, peft_total = theirs.get_nb_trainable_parameters()
    assert trainable_parameters(ours) == (closed + head, n_params(base) + closed)
    assert peft_trainable == closed + head
    assert peft_total == n_params(base) + closed + head  # peft also keeps the original head


def test_roberta_all_linear_without_trainable_adapts_the_head_like_peft():
    # No modules_to_save and no task_type: peft cannot tell the classification head apart
    # (get_output_embeddings() is None), so "all-linear" adapts classifier.dense and
    # classifier.out_proj too. out_proj maps 64 -> 2, so r must be <= 2.
    base, ours, theirs = build_pair(small_roberta, r=2, alpha=4, targets="all-linear")
    assert {"classifier.dense", "classifier.out_proj"} <= set(lora_layers(ours))
    assert_same_outputs_and_grads(base, ours, theirs, roberta_loss, roberta_batch())
    closed = lora_parameter_count(small_roberta_config(), 2, "all-linear")
    assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == closed


def test_roberta_seq_cls_task_type_equals_trainable_classifier():
    # peft's task_type="SEQ_CLS" adds "classifier" to modules_to_save: same as our trainable=
    base = small_roberta()
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                            task_type="SEQ_CLS"))
    ours = apply_lora(copy.deepcopy(base), 4, 8, targets="all-linear", trainable=("classifier",))
    assert sorted(lora_layers(ours)) == sorted(peft_lora_modules(theirs))
    assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]


def test_lora_dropout_matches_peft_in_train_mode():
    _, ours, theirs = build_pair(small_roberta, r=4, alpha=8, targets=("query", "value"),
                                 trainable=("classifier",), dropout=0.25)
    ours.train(), theirs.train()
    batch = roberta_batch()
    torch.manual_seed(5)
    out_ours = roberta_loss(ours, batch)[0]
    torch.manual_seed(5)
    out_theirs = roberta_loss(theirs, batch)[0]
    assert_match(out_ours, out_theirs)
    ours.eval()
    assert not torch.allclose(out_ours, roberta_loss(ours, batch)[0])  # dropout did act


# ------------------------------------------------------------------ equal to peft: MiniGPT
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), "all-linear"])
def test_minigpt_outputs_grads_and_counts_match_peft(targets):
    # peft cannot find the head of a plain nn.Module; exclude lm_head as our all-linear does
    extra = {"exclude_modules": ["lm_head"]} if targets == "all-linear" else None
    base, ours, theirs = build_pair(tiny_gpt, r=4, alpha=16, targets=targets, peft_extra=extra)
    assert "lm_head" not in lora_layers(ours)
    assert ours.lm_head.weight is ours.wte.weight                 # still tied, still one tensor
    assert_same_outputs_and_grads(base, ours, theirs, gpt_loss, gpt_batch())
    closed = lora_parameter_count(preset_config("tiny"), 4, targets)
    assert trainable_parameters(ours) == (closed, n_params(base) + closed)
    assert theirs.get_nb_trainable_parameters() == (closed, n_params(base) + closed)


def test_peft_all_linear_on_a_plain_module_would_adapt_the_tied_head():
    # Why our all-linear drops lm_head itself: on a non-transformers model peft keeps it.
    theirs = get_peft_model(tiny_gpt(), LoraConfig(r=4, target_modules="all-linear"))
    ours = apply_lora(tiny_gpt(), 4, 8, targets="all-linear")
    assert set(peft_lora_modules(theirs)) - set(lora_layers(ours)) == {"lm_head"}


def test_minigpt_classifier_with_trainable_head_matches_peft():
    base, ours, theirs = build_pair(tiny_classifier, r=4, alpha=8, targets="all-linear",
                                    trainable=("classifier",), peft_extra={"exclude_modules": ["lm_head"]})
    assert "classifier" not in lora_layers(ours) and "gpt.lm_head" not in lora_layers(ours)
    assert_same_outputs_and_grads(base, ours, theirs, classifier_loss, gpt_batch())
    closed = lora_parameter_count(preset_config("tiny"), 4, "all-linear")
    head = n_params(base.classifier)
    assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == closed + head
    assert ours.classifier.weight.requires_grad and not ours.gpt.wte.weight.requires_grad


# ----------------------------------------------------------------------- basic properties
def test_zero_init_B_is_a_no_op_and_A_is_kaiming_uniform():
    base = tiny_gpt().eval()
    ours = apply_lora(copy.deepcopy(base), 8, 16, targets="all-linear").eval()
    (idx,), _ = gpt_batch()
    assert torch.equal(ours(idx)[0], base(idx)[0])               # exactly, not approximately
    for layer in lora_layers(ours).values():
        assert torch.count_nonzero(layer.B) == 0
        bound = 1 / layer.in_features ** 0.5                     # kaiming_uniform_(a=sqrt(5))
        assert 0 < layer.A.abs().max() <= bound and layer.A.std() > bound / 3
        assert layer.scaling == 16 / 8


def test_frozen_base_gets_no_gradient():
    _, ours, _ = build_pair(tiny_classifier, r=4, alpha=8, targets=("q_proj", "v_proj"), trainable=("classifier",))
    classifier_loss(ours, gpt_batch())[1].backward()
    for name, p in ours.named_parameters():
        trained = name.endswith((".A", ".B")) or name.startswith("classifier.")
        assert p.requires_grad == trained, name
        assert (p.grad is not None) == trained, name


def test_merge_matches_unmerged_and_peft():
    _, ours, theirs = build_pair(tiny_gpt, r=4, alpha=16, targets="all-linear",
                                 peft_extra={"exclude_modules": ["lm_head"]})
    ours.eval(), theirs.eval()
    (idx,), _ = gpt_batch()
    weights = {n: m.base.weight.detach().clone() for n, m in lora_layers(ours).items()}
    with torch.no_grad():
        before = ours(idx)[0]
        merge_lora(ours)
        after = ours(idx)[0]
        theirs.merge_adapter()
    # Close, not equal: merged computes x @ (W + s B A)^T in one matmul, unmerged computes
    # x @ W^T + s (x @ A^T) @ B^T; float addition is not associative, so rounding differs.
    torch.testing.assert_close(after, before, atol=TOL, rtol=0)
    their_layers = peft_lora_modules(theirs)
    for name, layer in lora_layers(ours).items():
        assert layer.merged
        assert torch.equal(layer.base.weight, their_layers[name].base_layer.weight)  # bit-identical to peft

    unmerge_lora(ours)
    theirs.unmerge_adapter()
    exact = []
    for name, layer in lora_layers(ours).items():
        w, w0 = layer.base.weight, weights[name]
        # unmerge is NOT bit-exact: (w + d) - d rounds twice. It is within fp32 rounding ...
        eps = torch.finfo(torch.float32).eps
        assert ((w - w0).abs() <= 2 * eps * (w0.abs() + layer.delta_weight().abs())).all(), name
        exact.append(torch.equal(w, w0))
        # ... and peft's unmerge lands on exactly the same (inexact) weights
        assert torch.equal(w, their_layers[name].base_layer.weight)
    assert not all(exact)                 # at least one weight did not come back bit-exactly
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], before, atol=TOL, rtol=0)


def test_adapter_dtype_follows_peft_for_an_fp16_base():
    base = tiny_gpt().half()
    ours = apply_lora(copy.deepcopy(base), 4, 8)
    ours_none = apply_lora(copy.deepcopy(base), 4, 8, adapter_dtype=None)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    theirs = get_peft_model(copy.deepcopy(base), cfg)  # autocast_adapter_dtype=True (default)
    theirs_off = get_peft_model(copy.deepcopy(base), copy.deepcopy(cfg), autocast_adapter_dtype=False)
    dtypes = lambda m: {p.dtype for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert dtypes(ours) == dtypes(theirs) == {torch.float32}
    assert dtypes(ours_none) == dtypes(theirs_off) == {torch.float16}


def test_fp16_input_with_fp32_adapter_matches_peft_and_keeps_an_fp32_copy_of_x():
    set_seed(0)
    base = nn.Linear(32, 48).half().requires_grad_(False)
    ours = LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    nn.init.normal_(ours.B)
    theirs = get_peft_model(nn.Sequential(copy.deepcopy(base)), LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = theirs.base_model.model[0]
    layer.lora_A["default"].weight.data.copy_(ours.A.data)
    layer.lora_B["default"].weight.data.copy_(ours.B.data)
    x = torch.randn(5, 32, dtype=torch.float16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ours(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, theirs(x), atol=1e-3, rtol=0)   # fp16 output: fp16 tolerance
    # the comment in LoRALinear.forward: autograd keeps an fp32 copy of x (2x its bytes)
    copies = [t for t in saved if t.shape == x.shape and t.dtype == torch.float32]
    assert len(copies) == 1 and copies[0].data_ptr() != x.data_ptr()
    # merging the fp32 delta into the fp16 weight rounds exactly as peft's merge does
    ours.merge(), theirs.merge_adapter()
    assert torch.equal(ours.base.weight, layer.base_layer.weight)
    ours.unmerge(), theirs.unmerge_adapter()
    assert torch.equal(ours.base.weight, layer.base_layer.weight)
    # in fp32 there is no copy: what is saved is x itself
    ours32 = LoRALinear(nn.Linear(32, 48), r=4, alpha=8)
    x32, saved = torch.randn(5, 32, requires_grad=True), []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours32(x32)
    assert [t.data_ptr() for t in saved if t.shape == x32.shape] == [x32.data_ptr()]


class QuantLinearStub(nn.Module):
    """Stands in for NF4Linear: int8 weight in a buffer, in_features/out_features, a forward."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = linear.weight.abs().max() / 127
        self.register_buffer("q", torch.round(linear.weight.detach() / scale).to(torch.int8))
        self.register_buffer("scale", scale.detach())

    def forward(self, x):
        return x @ (self.q.float() * self.scale).T


def test_lora_wraps_any_linear_like_base_but_merges_only_nn_linear():
    model = nn.Sequential(QuantLinearStub(nn.Linear(16, 8)), nn.ReLU(), nn.Linear(8, 4))
    apply_lora(model, r=2, alpha=4, targets=("0",))
    layer = model[0]
    assert isinstance(layer, LoRALinear) and layer.A.dtype == torch.float32
    nn.init.normal_(layer.B)
    model(torch.randn(3, 16)).sum().backward()
    assert layer.A.grad is not None and layer.B.grad is not None
    with pytest.raises(TypeError, match="merge\\(\\)/unmerge\\(\\) need an nn.Linear base; this base is a QuantLinearStub"):
        layer.merge()


# ------------------------------------------------------------------------- closed form
def test_closed_form_llama_7b_and_minigpt_85m():
    from minigpt.model import parameter_count
    llama = preset_config("llama-7b")
    assert lora_parameter_count(llama, 8, ("q_proj", "v_proj")) == 4_194_304
    assert lora_parameter_count(llama, 8, "all-linear") == 19_988_480
    assert lora_parameter_count([(4096, 4096)] * 64, 8) == 4_194_304      # 32 layers x (q, v)
    # the GPT preset on the meta device (allocates nothing) agrees with the closed form
    for name, targets in [("llama-7b", "all-linear"), ("minigpt-85m", ("q_proj", "v_proj")),
                          ("minigpt-85m", "all-linear"), ("llama-70b", ("q_proj", "k_proj", "v_proj"))]:
        cfg = preset_config(name)
        model = apply_lora(from_preset(name, device="meta"), 8, 16, targets=targets)
        closed = lora_parameter_count(cfg, 8, targets)
        assert trainable_parameters(model) == (closed, parameter_count(cfg) + closed), (name, targets)
    assert lora_parameter_count(preset_config("minigpt-85m"), 8, ("q_proj", "v_proj")) == 294_912


def llama_7b_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)


def linear_shapes_of(model: nn.Module) -> list[tuple[str, int, int]]:
    return [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_closed_form_transformers_configs_match_built_models():
    # true roberta-base and LLaMA-7B shapes, built on the meta device: counts only
    cfg_rb = RobertaConfig()
    with torch.device("meta"):
        roberta = RobertaForSequenceClassification(cfg_rb)
        llama = LlamaForCausalLM(llama_7b_config())
    assert lora_linear_shapes(cfg_rb) == linear_shapes_of(roberta)
    cfg_bert = transformers.BertConfig(num_labels=3)
    with torch.device("meta"):
        bert = transformers.BertForSequenceClassification(cfg_bert)
    assert lora_linear_shapes(cfg_bert) == linear_shapes_of(bert)
    assert lora_linear_shapes(llama_7b_config()) == linear_shapes_of(llama)
    head = n_params(roberta.classifier)
    for targets, n_lora in [(("query", "value"), 294_912), ("all-linear", 1_327_104)]:
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=targets if isinstance(targets, str) else list(targets),
                         modules_to_save=["classifier"])
        theirs = get_peft_model(copy.deepcopy(roberta), cfg).get_nb_trainable_parameters()[0]
        ours = trainable_parameters(apply_lora(copy.deepcopy(roberta), 8, 16, targets=targets,
                                               trainable=("classifier",)))[0]
        closed = lora_parameter_count(cfg_rb, 8, targets, ("classifier",))
        assert ours == theirs == closed + head and closed == n_lora, targets
    theirs = get_peft_model(copy.deepcopy(llama), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    assert theirs.get_nb_trainable_parameters()[0] == 19_988_480
    apply_lora(llama, 8, 16, targets="all-linear")
    assert "lm_head" not in lora_layers(llama)                     # via get_output_embeddings()
    assert trainable_parameters(llama)[0] == lora_parameter_count(llama_7b_config(), 8, "all-linear") == 19_988_480


def test_closed_form_small_llama_with_gqa_matches_peft():
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    set_seed(0)
    model = LlamaForCausalLM(cfg)
    assert lora_linear_shapes(cfg) == linear_shapes_of(model)
    for targets in (("q_proj", "v_proj"), "all-linear"):
        theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=targets if isinstance(targets, str) else list(targets)))
        ours = apply_lora(copy.deepcopy(model), 4, 8, targets=targets)
        assert sorted(lora_layers(ours)) == sorted(peft_lora_modules(theirs))
        assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == lora_parameter_count(cfg, 4, targets)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0, alpha=8), r"LoRA rank r must be a positive integer, got 0\."),
    (dict(r=2.5, alpha=8), r"LoRA rank r must be a positive integer, got 2\.5\."),
    (dict(r=4, alpha=0), r"LoRA alpha must be a positive number \(scaling = alpha / r\), got 0\."),
    (dict(r=4, alpha=-1.0), r"LoRA alpha must be a positive number"),
    (dict(r=65, alpha=8), r"r=65 is too large for layer 'blocks\.0\.attn\.q_proj', which maps 64 -> 64 features; use r <= 64"),
    (dict(r=4, alpha=8, targets=("qproj",)),
     r"Target 'qproj' matches no linear layer; the model's linear layers are named \(last part\): "
     r"q_proj, k_proj, v_proj, o_proj, up_proj, down_proj, lm_head\."),
    (dict(r=4, alpha=8, trainable=("classifer",)),
     r"trainable module 'classifer' is not in the model; its top-level modules are: wte, wpe, drop, blocks, ln_f, lm_head\."),
    (dict(r=4, alpha=8, dropout=1.0), r"LoRA dropout must be in \[0, 1\), got 1\.0\."),
])
def test_bad_arguments_raise_one_clear_error_and_change_nothing(kwargs, message):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **kwargs)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_other_errors():
    model = tiny_classifier()
    with pytest.raises(ValueError, match=r"Target 'classifier' only matches layers inside trainable=\('classifier',\)"):
        apply_lora(model, 4, 8, targets=("classifier",), trainable=("classifier",))
    apply_lora(model, 4, 8)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, 4, 8)
    layer = model.gpt.blocks[0].attn.q_proj
    with pytest.raises(RuntimeError, match=r"not merged; call merge\(\) first"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match=r"already merged; call unmerge\(\) first"):
        layer.merge()
    with pytest.raises(ValueError, match=r"r=3 is too large for layer 'classifier\.out_proj', which maps 64 -> 2"):
        lora_parameter_count(small_roberta_config(), 3, "all-linear")
    with pytest.raises(ValueError, match="knows GPTConfig and transformers configs of type roberta, bert and llama"):
        lora_parameter_count(transformers.GPT2Config(), 8)
    with pytest.raises(TypeError, match="needs a base layer with integer in_features and out_features"):
        LoRALinear(nn.ReLU(), 4, 8)


def test_n_lora_table_matches_hand_arithmetic():
    # N_lora = n_layer * r * sum over adapted layers of (in + out), written out by hand
    def by_hand(L, d, h, r):
        return {"qv": L * r * 2 * (d + d), "gelu": L * r * (4 * (d + d) + 2 * (d + h)),
                "swiglu": L * r * (4 * (d + d) + 3 * (d + h))}
    from minigpt.lora import n_lora_table
    rows = {(row["model"], row["r"]): row for row in n_lora_table((8, 16))}
    for r in (8, 16):
        for model, (L, d, h, mlp) in {"MiniGPT-85M": (12, 768, 3072, "gelu"), "RoBERTa-base": (12, 768, 3072, "gelu"),
                                      "LLaMA-7B": (32, 4096, 11008, "swiglu")}.items():
            hand = by_hand(L, d, h, r)
            assert (rows[model, r]["qv"], rows[model, r]["all_linear"]) == (hand["qv"], hand[mlp]), (model, r)
    assert rows["LLaMA-7B", 8]["qv"] == 4_194_304 and rows["LLaMA-7B", 8]["all_linear"] == 19_988_480
