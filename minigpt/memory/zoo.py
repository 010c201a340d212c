"""Models by name, built locally from configs (random init, nothing downloaded), and their batches.

    model = build("llama-7b", device="meta")        # true shapes, no memory
    make = factory("roberta-base")                  # zero-argument builder for measure_step
    batch = make_batch("roberta-base", batch_size=8, seq_len=128)

Names:
    tiny, small, minigpt-85m      minigpt presets (``minigpt.from_preset``); batch = (idx, targets)
    minigpt:<preset>              any minigpt preset, including minigpt:llama-7b (our own LLaMA shape)
    roberta-base, bert-large      transformers ...ForSequenceClassification, 2 labels;
                                  batch = {input_ids (B, S), attention_mask (B, S), labels (B,)}
    llama-7b, llama-13b, llama-70b  transformers LlamaForCausalLM from a LlamaConfig with the
                                  published shapes (70b: grouped-query attention, 8 kv heads);
                                  batch = {input_ids (B, S), labels (B, S)}

transformers models choose their attention with ``attn_implementation="sdpa"`` (default) or
``"eager"`` (materialises the (B, H, S, S) scores).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..model import PRESETS, from_preset


# transformers shapes. LLaMA: Touvron et al. 2023 (table 2) and LLaMA-2 (70B: GQA with 8 kv heads);
# RoBERTa-base and BERT-large: the published configs (hidden, layers, heads, FFN width, vocabulary).
HF_CONFIGS: dict[str, dict] = {
    "llama-7b": dict(kind="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama-13b": dict(kind="llama", vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                      num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                      max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama-70b": dict(kind="llama", vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                      num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                      max_position_embeddings=4096, rms_norm_eps=1e-5),
    "roberta-base": dict(kind="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                         type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, num_labels=2),
    "bert-large": dict(kind="bert", vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                       num_attention_heads=16, intermediate_size=4096, max_position_embeddings=512,
                       type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, num_labels=2),
}
MINIGPT_NAMES = tuple(n for n in PRESETS if n not in HF_CONFIGS)


def names() -> list[str]:
    """Every name build() knows."""
    return [*MINIGPT_NAMES, *HF_CONFIGS, *(f"minigpt:{p}" for p in PRESETS)]


def resolve(name: str) -> tuple[str, str]:
    """("minigpt", preset) or ("hf", name); an unknown name raises with the list of known ones."""
    if name.startswith("minigpt:") and name[len("minigpt:"):] in PRESETS:
        return "minigpt", name[len("minigpt:"):]
    if name in MINIGPT_NAMES:
        return "minigpt", name
    if name in HF_CONFIGS:
        return "hf", name
    raise ValueError(f"Unknown model name {name!r}; the known names are: {', '.join(names())}.")


_resolve = resolve  # the estimator and CLI use this name


def _known(name: str) -> bool:
    try:
        resolve(name)
        return True
    except ValueError:
        return False


def hf_config(name: str, attn_implementation: str = "sdpa", **overrides):
    """The transformers config of a zoo name (overrides: any config field, e.g. num_hidden_layers=2)."""
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}.")
    spec = dict(HF_CONFIGS[name])
    kind = spec.pop("kind")
    if (kind == "llama" and "num_attention_heads" in overrides and "num_key_value_heads" not in overrides
            and spec["num_key_value_heads"] == spec["num_attention_heads"]):
        overrides["num_key_value_heads"] = overrides["num_attention_heads"]  # keep "no GQA" when shrinking
    spec.update(overrides)
    if kind == "llama":
        from transformers import LlamaConfig as C
        spec.setdefault("tie_word_embeddings", False)
        # training, not generation: fine-tuning configs switch the KV cache off (with the default
        # use_cache=True, LlamaModel builds a DynamicCache whose k and v copies the output holds
        # through backward). Pass use_cache=True to see that cost.
        spec.setdefault("use_cache", False)
    elif kind == "roberta":
        from transformers import RobertaConfig as C
    else:
        from transformers import BertConfig as C
    cfg = C(**spec)
    cfg._attn_implementation = attn_implementation
    return cfg


# transformers' defaults that HF_CONFIGS leaves out: the fields the closed form reads and the rest of
# what to_json_string(use_diff=True) writes (transformers 5: LlamaConfig, RobertaConfig, BertConfig;
# tests/memory/test_estimator_speed.py compares both with the real configs for every zoo name)
_ENCODER_DEFAULTS = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, add_cross_attention=False,
                         classifier_dropout=None, hidden_act="gelu", initializer_range=0.02, is_decoder=False,
                         tie_word_embeddings=True, use_cache=True)
_LIGHT_DEFAULTS: dict[str, dict] = {
    "llama": dict(attention_bias=False, attention_dropout=0.0, mlp_bias=False, hidden_act="silu",
                  tie_word_embeddings=False, use_cache=False, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.02, pad_token_id=None, pretraining_tp=1),
    "roberta": _ENCODER_DEFAULTS,
    "bert": dict(_ENCODER_DEFAULTS, bos_token_id=None, eos_token_id=None),
}
_NOT_DESCRIBED = ("zoo_name", "rope_scaling", "num_labels")   # attributes to_json_string(use_diff=True) omits


class ZooConfig(SimpleNamespace):
    """The fields of a zoo model's transformers config, without importing transformers (~3 s on 2
    cores): what the closed form resolves a zoo name given without overrides to."""

    def described(self) -> dict:
        """json.loads(hf_config(name).to_json_string(use_diff=True)), for the --json spec."""
        from importlib.metadata import version
        d = {k: v for k, v in vars(self).items() if k not in _NOT_DESCRIBED}
        d["transformers_version"] = version("transformers")
        return dict(sorted(d.items()))


def light_config(name: str) -> ZooConfig:
    """hf_config(name) as plain attributes (no overrides: a changed field goes through transformers,
    which validates it)."""
    spec = dict(HF_CONFIGS[name])
    kind = spec.pop("kind")
    spec.update(_LIGHT_DEFAULTS[kind])
    if kind == "llama":
        spec["head_dim"] = spec["hidden_size"] // spec["num_attention_heads"]
        spec["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "default"}
        spec["rope_scaling"] = dict(spec["rope_parameters"])
    return ZooConfig(model_type=kind, zoo_name=name, **spec)


def build(name: str, device: Optional[str | torch.device] = "cpu", attn_implementation: str = "sdpa",
          **overrides) -> nn.Module:
    """Build a model by name, with random weights, on ``device`` ("meta" allocates nothing).

    ``device=None`` builds on the current default device, so a call inside ``FakeTensorMode``
    makes fake parameters. ``overrides`` change the config (minigpt: GPTConfig fields, e.g.
    ``n_layer=2``; transformers: config fields, e.g. ``num_hidden_layers=2``).
    """
    family, key = _resolve(name)
    ctx = torch.device(device) if device is not None else _Null()
    if family == "minigpt":
        if overrides.get("attention") is None and attn_implementation != "sdpa":
            overrides["attention"] = attn_implementation
        with ctx:
            return from_preset(key, device=torch.get_default_device(), **overrides)
    cfg = hf_config(key, attn_implementation, **overrides)
    from transformers import (BertForSequenceClassification, LlamaForCausalLM,
                              RobertaForSequenceClassification)
    cls = {"llama": LlamaForCausalLM, "roberta": RobertaForSequenceClassification,
           "bert": BertForSequenceClassification}[HF_CONFIGS[key]["kind"]]
    with ctx:
        return cls(cfg)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def factory(name: str, device: Optional[str | torch.device] = None, attn_implementation: str = "sdpa",
            seed: int = 0, **overrides) -> Callable[[], nn.Module]:
    """A zero-argument builder (for measure_step): seeds, then build(name, device, ...)."""
    _resolve(name)  # fail now, not inside measure_step

    def make() -> nn.Module:
        torch.manual_seed(seed)
        return build(name, device=device, attn_implementation=attn_implementation, **overrides)
    make.__name__ = f"build_{name}"
    return make


def vocab_size(name: str, **overrides) -> int:
    family, key = _resolve(name)
    if family == "minigpt":
        return overrides.get("vocab_size", PRESETS[key].get("vocab_size", 79))
    return overrides.get("vocab_size", HF_CONFIGS[key]["vocab_size"])


def make_batch(name: str, batch_size: int = 1, seq_len: int = 128, seed: int = 0, pad: int = 0,
               **overrides) -> Any:
    """A random batch of the right kind for ``name`` (token ids below the vocabulary size).

    minigpt: a tuple ``(idx, targets)``, each (B, S). LLaMA: ``{input_ids, labels}`` (B, S).
    ``name`` may also be a config.json path, a model directory, a dict or a PretrainedConfig
    (minigpt.memory.hf_models.make_batch; ``overrides`` are config fields).
    RoBERTa/BERT: ``{input_ids (B, S), labels (B,)}`` with 2 classes; with ``pad > 0`` also an
    ``attention_mask`` (B, S) whose first row ends in ``pad`` padding tokens. (No mask by default:
    transformers drops an all-ones mask after looking at its values, which fake tensors cannot do,
    so a real and a fake run would hold different tensors.)
    """
    if not isinstance(name, str) or not _known(name):   # a config.json / model dir / dict / PretrainedConfig
        from . import hf_models
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}.")
        return hf_models.make_batch(hf_models.load_config(name, overrides), batch_size, seq_len, seed)
    family, key = _resolve(name)
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}.")
    g = torch.Generator().manual_seed(seed)
    V = vocab_size(name, **overrides)
    ids = torch.randint(3, V, (batch_size, seq_len), generator=g)          # (B, S)
    if family == "minigpt":
        return ids, torch.randint(0, V, (batch_size, seq_len), generator=g)
    if HF_CONFIGS[key]["kind"] == "llama":
        return {"input_ids": ids, "labels": ids.clone()}
    batch = {"input_ids": ids, "labels": torch.randint(0, 2, (batch_size,), generator=g)}
    if pad > 0:
        if pad >= seq_len:
            raise ValueError(f"pad={pad} must be smaller than seq_len={seq_len}.")
        mask = torch.ones_like(ids)                                          # (B, S)
        mask[0, seq_len - pad:] = 0
        ids[0, seq_len - pad:] = HF_CONFIGS[key].get("pad_token_id", 0)
        batch["attention_mask"] = mask
    return batch
