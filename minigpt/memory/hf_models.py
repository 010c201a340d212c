"""Any Hugging Face model from its config: read it, override fields, build it for training, batch it.

    cfg = load_config("configs/mistral-7b.json", {"num_hidden_layers": 2})   # or a dir, a dict, a config
    model = build_model(cfg, device="meta")           # AutoModelForCausalLM.from_config: nothing downloaded
    batch = make_batch(cfg, batch_size=2, seq_len=128)

What is built (``task_of``): a decoder LM is ``AutoModelForCausalLM`` (batch: input_ids and labels,
the shifted-token loss); an encoder (BERT, RoBERTa, DistilBERT, ...) is
``AutoModelForSequenceClassification`` with ``num_labels=2`` (batch: input_ids and one label per
row; its head is trained in full under LoRA). T5 has no encoder-only classifier in transformers:
it is ``T5EncoderModel`` under ``EncoderClassifier`` (mean of the last hidden states over the
sequence, one Linear named ``classifier``, cross-entropy). Weights are float32 whatever the
config's ``torch_dtype`` says (the precision flag decides), the KV cache is off (``use_cache=False``,
as fine-tuning configs set it). Errors are ``ConfigError`` (a ValueError): one sentence naming the
flag to change.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

N_LABELS = 2
# encoders transformers also lists as causal LMs (BertLMHeadModel, ...): built as classifiers
ENCODER_TYPES = ("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "camembert", "deberta",
                 "deberta-v2", "mpnet", "modernbert", "megatron-bert", "xlm-roberta-xl")
T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# position tables that start after the padding index (pad_token_id + 1 rows unused)
PADDED_POSITIONS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


# accepted by transformers 5 configs and converted (rope_parameters), absent from to_dict()
LEGACY_FIELDS = {"rope_scaling", "rope_theta"}


class ConfigError(ValueError):
    """A config that cannot be read or built; the message says which flag to change."""


# ------------------------------------------------------------------------ --set key=value
def parse_value(s: str) -> Any:
    """'2' -> 2, '0.1' -> 0.1, 'true'/'false' -> bool, 'none'/'null' -> None, '{...}' or '[...]' -> JSON
    (e.g. rope_scaling), anything else a str."""
    low = s.strip().lower()
    if low[:1] in ("{", "["):
        try:
            return json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--set value {s!r} starts like JSON but is not ({e.msg}); write valid JSON.") from None
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def parse_set(items: Optional[list[str]]) -> dict:
    """``--set key=value`` items as a dict of config overrides."""
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r} needs the form key=value (e.g. --set num_hidden_layers=2).")
        out[key.strip()] = parse_value(value)
    return out


# ------------------------------------------------------------------------ reading a config
def read_config_file(path: str, zoo_names: tuple = ()) -> dict:
    """The JSON of a config.json, or of the config.json inside a model directory (``zoo_names``: the
    names the error message offers instead)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"--model {path!r} is neither a zoo name nor an existing config.json or model directory "
                          f"holding one; use one of: {', '.join(zoo_names) or 'a zoo name'}, or a path to a config.json.")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--model {path!r}: {p} is not valid JSON ({e}); give a transformers config.json.") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--model {path!r}: {p} holds a JSON {type(d).__name__}, not an object; "
                          f"give a transformers config.json.")
    return d


def _fit_shrunk(d: dict, orig: dict, overrides: dict) -> None:
    """Keep the fields derived from the ones an override changes consistent (as the zoo does)."""
    H0, Hkv0 = orig.get("num_attention_heads"), orig.get("num_key_value_heads")
    if "num_attention_heads" in overrides and "num_key_value_heads" not in overrides and Hkv0 is not None \
            and Hkv0 == H0:
        d["num_key_value_heads"] = overrides["num_attention_heads"]          # keep "no GQA"
    hd0, d0 = orig.get("head_dim"), orig.get("hidden_size")
    if "head_dim" not in overrides and hd0 is not None and H0 and d0 == hd0 * H0 \
            and {"hidden_size", "num_attention_heads"} & set(overrides):
        d.pop("head_dim")                                                    # derived: d / heads
    n = overrides.get("num_hidden_layers")
    types = d.get("layer_types")
    if n is not None and "layer_types" not in overrides and isinstance(types, list) and types:
        d["layer_types"] = [types[i % len(types)] for i in range(n)]         # the pattern, cut or cycled


def load_config(source: Any, overrides: Optional[dict] = None, zoo_names: tuple = ()):
    """A transformers config from a config.json path, a model directory, a dict with ``model_type`` or
    a PretrainedConfig, with ``overrides`` (each must be a field the config has) applied."""
    import transformers
    from transformers import AutoConfig, PretrainedConfig
    overrides = dict(overrides or {})
    if isinstance(source, PretrainedConfig):
        orig = json.loads(source.to_json_string(use_diff=True))
        orig["model_type"] = source.model_type
    elif isinstance(source, dict):
        orig = dict(source)
    elif isinstance(source, (str, Path)):
        orig = read_config_file(str(source), zoo_names)
    else:
        raise ConfigError(f"--model must be a zoo name, a config.json path, a model directory, a dict or a "
                          f"transformers PretrainedConfig, not {type(source).__name__}.")
    kind = orig.get("model_type")
    if not kind:
        raise ConfigError("the config has no model_type; add one (e.g. \"model_type\": \"llama\") to the --model config.")
    try:
        defaults = AutoConfig.for_model(kind).to_dict()
    except (ValueError, KeyError):
        raise ConfigError(f"model_type {kind!r} is not one transformers {transformers.__version__} knows; give a "
                          f"--model config of a type it builds (e.g. llama, mistral, qwen2, gpt2, bert).") from None
    # the names every config answers to (num_hidden_layers is GPT-2's n_layer, T5's num_layers, ...)
    alias = dict(getattr(type(AutoConfig.for_model(kind)), "attribute_map", {}) or {})
    overrides = {alias.get(k, k): v for k, v in overrides.items()}
    known = set(defaults) | set(orig) | LEGACY_FIELDS
    for k in overrides:
        if k not in known:
            near = sorted(f for f in known if isinstance(defaults.get(f, orig.get(f)), (int, float))
                          and not isinstance(defaults.get(f, orig.get(f)), bool))[:12]
            raise ConfigError(f"--set {k}: the {kind} config has no field {k!r}; its numeric fields include "
                              f"{', '.join(near)}.")
    d = {**orig, **overrides}
    _fit_shrunk(d, orig, overrides)
    V, pad = d.get("vocab_size", defaults.get("vocab_size")), d.get("pad_token_id", defaults.get("pad_token_id"))
    if "vocab_size" in overrides and "pad_token_id" not in overrides and isinstance(pad, int) and isinstance(V, int) \
            and pad >= V:
        d["pad_token_id"] = None       # a shrunk vocabulary: no padding row (it changes no byte)
    H, Hkv = d.get("num_attention_heads"), d.get("num_key_value_heads")
    if isinstance(H, int) and isinstance(Hkv, int) and (Hkv < 1 or H % Hkv):
        raise ConfigError(f"num_attention_heads={H} is not a multiple of num_key_value_heads={Hkv}; "
                          f"--set num_key_value_heads to a divisor of it.")
    d.pop("model_type")
    task = _task(kind)
    if task != "lm":          # a classifier of N_LABELS classes (the config's label names dropped)
        d.pop("id2label", None)
        d.pop("label2id", None)
        d["num_labels"] = overrides.get("num_labels", source.num_labels if isinstance(source, PretrainedConfig)
                                        else N_LABELS)
    if "use_cache" not in overrides:
        d["use_cache"] = False        # training: no KV cache (see minigpt.memory.zoo)
    try:
        return AutoConfig.for_model(kind, **d)
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"the {kind} config with these --set overrides is inconsistent "
                          f"({str(e).splitlines()[0].rstrip('.')}); change the overrides.") from None


# ------------------------------------------------------------------------ what is built
def _task(kind: str) -> str:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    if kind in T5_ENCODERS:
        return "t5-encoder"
    if kind in ENCODER_TYPES and kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "cls"
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "lm"
    if kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "cls"
    raise ConfigError(f"model_type {kind!r} has neither a causal-LM nor a sequence-classification class in "
                      f"transformers; give a --model config of a decoder LM or an encoder.")


def task_of(cfg) -> str:
    """"lm" (AutoModelForCausalLM), "cls" (AutoModelForSequenceClassification) or "t5-encoder"."""
    return _task(cfg.model_type)


def max_positions(cfg) -> Optional[int]:
    """The longest sequence the model's positions allow (None: relative positions, or RoPE scaling)."""
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return None
    n = getattr(cfg, "max_position_embeddings", None)
    if n is not None and cfg.model_type in PADDED_POSITIONS:
        n -= (getattr(cfg, "pad_token_id", None) or 0) + 1
    return n


def dropout_overrides(cfg, p: Optional[float]) -> dict:
    """Overrides that set every dropout probability of ``cfg`` (fields named *dropout* or *pdrop*
    holding a number) to ``p``; None keeps the config's."""
    if p is None:
        return {}
    d = cfg.to_dict() if not isinstance(cfg, dict) else cfg
    return {k: float(p) for k, v in d.items() if ("dropout" in k or "pdrop" in k)
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def build_model(cfg, attention: str = "sdpa", device: Optional[str] = None):
    """The model of ``cfg`` (see ``task_of``), float32, random weights, on ``device`` (None: the
    current default, so inside FakeTensorMode the parameters are fake; "meta": no memory)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    task = task_of(cfg)
    kw = dict(dtype=torch.float32, attn_implementation=attention)
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    try:
        with ctx:
            if task == "t5-encoder":
                enc = getattr(transformers, T5_ENCODERS[cfg.model_type])._from_config(cfg, **kw)
                return EncoderClassifier(enc, cfg.d_model, cfg.num_labels)
            auto = AutoModelForCausalLM if task == "lm" else AutoModelForSequenceClassification
            return auto.from_config(cfg, **kw)
    except ValueError as e:
        if attention == "sdpa" and "sdpa" in str(e).lower():
            raise ConfigError(f"{cfg.model_type} has no SDPA attention in transformers; use --attention eager.") from None
        raise


def linears_as_nn_linear(model) -> int:
    """Swap GPT-2's Conv1D layers (x @ W + b, W stored in x out) for nn.Linear of the same shape, so
    LoRA and NF4 can wrap them; the bytes (weight, bias, what the matmul saves) are the same."""
    from transformers.pytorch_utils import Conv1D
    n = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, Conv1D):
            parent, _, child = name.rpartition(".")
            lin = nn.Linear(m.nx, m.nf, device=m.weight.device)
            setattr(model.get_submodule(parent) if parent else model, child, lin)
            n += 1
    return n


def make_batch(cfg, batch_size: int = 1, seq_len: int = 128, seed: int = 0) -> dict:
    """Random token ids below the vocabulary size (B, S); labels (B, S) for an LM, (B,) otherwise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg.vocab_size, (batch_size, seq_len), generator=g)       # (B, S)
    if task_of(cfg) == "lm":
        return {"input_ids": ids, "labels": ids.clone()}
    return {"input_ids": ids, "labels": torch.randint(0, cfg.num_labels, (batch_size,), generator=g)}


def pad_last_row(batch: dict, pad: int) -> dict:
    """A causal LM's batch with dynamic padding: an attention_mask (B, T) int64 whose last row ends in
    ``pad`` zeros, the labels -100 there (the loss skips them); ``pad`` 0 leaves the batch as it is."""
    if pad:
        ids = batch["input_ids"]
        mask = ids.new_ones(ids.shape)                                      # (B, T) int64
        mask[-1, ids.shape[1] - pad:] = 0
        batch["labels"][-1, ids.shape[1] - pad:] = -100
        batch["attention_mask"] = mask
    return batch


class EncoderClassifier(nn.Module):
    """An encoder with no classifier of its own (T5): mean over the sequence of its last hidden states
    (B, S, d) -> (B, d), one Linear ``classifier`` (d -> labels), cross-entropy in fp32."""

    def __init__(self, encoder: nn.Module, d: int, n_labels: int):
        super().__init__()
        self.encoder, self.classifier = encoder, nn.Linear(d, n_labels)

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.encoder.gradient_checkpointing_enable(**kw)

    def forward(self, input_ids, labels=None, attention_mask=None):
        from transformers.modeling_outputs import SequenceClassifierOutput
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, S, d)
        if attention_mask is None:
            pooled = h.mean(dim=1)                                               # (B, d)
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)                         # (B, S, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.classifier(pooled)                                         # (B, labels)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# ------------------------------------------------------------------------ a resolved model
@dataclass
class Resolved:
    """A model given by config: its name, the transformers config, and how it was given."""
    name: str
    config: Any
    source: str
    overrides: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """What reproduces it: the source, the config fields that differ from the type's defaults
        (pass this dict as ``model=``), and the overrides."""
        fields = json.loads(self.config.to_json_string(use_diff=True))
        fields["model_type"] = self.config.model_type
        return {"source": self.source, "model_type": self.config.model_type, "task": task_of(self.config),
                "config": fields, "overrides": dict(self.overrides)}


def resolve(model: Any, overrides: Optional[dict] = None, dropout: Optional[float] = None,
            zoo_names: tuple = ()) -> Resolved:
    """A config path / directory / dict / PretrainedConfig with overrides and (optionally) every
    dropout set to ``dropout``."""
    overrides = dict(overrides or {})
    cfg = load_config(model, overrides, zoo_names)
    if dropout is not None:
        cfg = load_config(model, {**overrides, **dropout_overrides(cfg, dropout)})
    if isinstance(model, (str, Path)):
        p = Path(model)
        name, source = (p.name if p.is_dir() else p.stem), str(model)
    else:
        name, source = cfg.model_type, type(model).__name__
    return Resolved(name=name, config=cfg, source=source, overrides=overrides)
