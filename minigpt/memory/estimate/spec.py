"""The model the estimator sizes: ModelSpec from a zoo name or a config, the parameter inventory, the
linear layers (minigpt.families) and which of them LoRA adapts; the argument names it accepts."""
from __future__ import annotations
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union
from ...families import linear_layers as family_linear_layers
from ...precision import PRECISIONS as PRECISION_TABLE


METHODS = ("full", "lora", "qlora", "head")   # head: only the task head trains (a linear probe)
ADAPTER_METHODS = ("lora", "qlora")           # the methods with LoRA adapters


PRECISIONS = tuple(PRECISION_TABLE)   # minigpt/precision.py: the one table of precision names


OPTIMIZERS = ("adamw", "sgd", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "adafactor")
# torch's implementations of AdamW (optimizer_impl): the device's default, or one of the three
OPTIMIZER_IMPLS = ("default", "for-loop", "foreach", "fused")


ATTENTIONS = ("sdpa", "eager")


SEMANTICS = ("cpu", "cuda")


ZERO_STAGES = (0, 1, 2, 3)


# bitsandbytes 0.50.2 (optim/optimizer.py, Optimizer2State.init_state / get_state_buffer)
BNB_8BIT_BLOCK = 256          # 8-bit optimizer states: one float32 absmax per 256 values


BNB_MIN_8BIT_SIZE = 4096      # smaller tensors keep float32 states


BNB_PAGED_MIN_NUMEL = 100_000  # smaller tensors are not paged


class EstimateError(ValueError):
    """A bad argument to estimate(): the message says what to change."""


def _choice(name: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise EstimateError(f"{name}={value!r} is not allowed; use one of: "
                            f"{', '.join(str(a) for a in allowed)}.")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the formulas need to know about a model, read from its config.

    family: "minigpt" (minigpt.model.GPT, an LM), "roberta"/"bert" (transformers
    ...ForSequenceClassification) or "llama" (transformers LlamaForCausalLM, and Mistral/Qwen2ForCausalLM,
    which are LLaMA's modules; Qwen2: ``o_bias=False`` with ``bias=True``).
    """
    name: str
    family: str
    vocab: int
    n_layer: int
    d: int
    n_head: int
    n_kv_head: int
    ffn: int
    positions: int                  # learned position-embedding rows (0 for rotary)
    type_vocab: int = 0             # BERT/RoBERTa token-type rows
    n_labels: int = 0               # classification heads
    bias: bool = True
    norm: str = "layernorm"         # "layernorm" | "rmsnorm"
    mlp: str = "gelu"               # "gelu" | "swiglu"
    tie: bool = True                # LM head tied to the token embedding
    hidden_dropout: float = 0.0     # model's default dropout on hidden states
    attn_dropout: float = 0.0       # model's default dropout on attention probabilities
    config: Any = None              # the GPTConfig / transformers config it was read from
    o_bias: Optional[bool] = None   # bias of the attention output (None: as ``bias``; Qwen2: q, k, v only)

    @property
    def head_dim(self) -> int:
        return self.d // self.n_head

    @property
    def kv_dim(self) -> int:
        return self.n_kv_head * self.head_dim

    @property
    def is_hf(self) -> bool:
        return self.family != "minigpt"

    @property
    def task(self) -> str:
        return "cls" if self.family in ("roberta", "bert") else "lm"


def spec_from_config(cfg: Any, name: Optional[str] = None) -> ModelSpec:
    """A ModelSpec from a minigpt GPTConfig or a transformers Roberta/Bert/Llama config."""
    from ...model import GPTConfig
    if isinstance(cfg, GPTConfig):
        return ModelSpec(name=name or "minigpt", family="minigpt", vocab=cfg.vocab_size,
                         n_layer=cfg.n_layer, d=cfg.n_embd, n_head=cfg.n_head, n_kv_head=cfg.kv_heads,
                         ffn=cfg.hidden, positions=cfg.block_size if cfg.pos == "learned" else 0,
                         bias=cfg.bias, norm=cfg.norm, mlp=cfg.mlp, tie=cfg.tie_weights,
                         hidden_dropout=cfg.dropout, attn_dropout=cfg.dropout, config=cfg)
    kind = getattr(cfg, "model_type", None)
    if kind in ("roberta", "bert"):
        return ModelSpec(name=name or kind, family=kind, vocab=cfg.vocab_size, n_layer=cfg.num_hidden_layers,
                         d=cfg.hidden_size, n_head=cfg.num_attention_heads,
                         n_kv_head=cfg.num_attention_heads, ffn=cfg.intermediate_size,
                         positions=cfg.max_position_embeddings, type_vocab=cfg.type_vocab_size,
                         n_labels=cfg.num_labels, bias=True, norm="layernorm", mlp="gelu", tie=False,
                         hidden_dropout=cfg.hidden_dropout_prob,
                         attn_dropout=cfg.attention_probs_dropout_prob, config=cfg)
    if kind in LLAMA_SHAPED:
        why = closed_form_reason(cfg)
        if why:
            raise EstimateError(f"{why}; pass the config to estimate() as model=, which traces it on fake "
                                f"tensors instead.")
        H = cfg.num_attention_heads
        qwen2 = kind == "qwen2"          # Qwen2Attention: bias on q, k, v; none on o
        return ModelSpec(name=name or kind, family="llama", vocab=cfg.vocab_size, n_layer=cfg.num_hidden_layers,
                         d=cfg.hidden_size, n_head=H, n_kv_head=cfg.num_key_value_heads or H,
                         ffn=cfg.intermediate_size, positions=0, bias=qwen2 or bool(getattr(cfg, "attention_bias", False)),
                         norm="rmsnorm", mlp="swiglu", tie=bool(cfg.tie_word_embeddings),
                         hidden_dropout=0.0, attn_dropout=float(cfg.attention_dropout), config=cfg,
                         o_bias=False if qwen2 else None)
    raise EstimateError(f"estimate() knows minigpt GPTConfig and transformers roberta, bert, llama, mistral and "
                        f"qwen2 configs, not {kind or type(cfg).__name__!r}; pass one of those or a model name.")


# transformers families whose modules are LLaMA's (modeling_mistral / modeling_qwen2 subclass
# modeling_llama's attention, MLP, decoder layer and CausalLM; Qwen2 adds q/k/v biases)
LLAMA_SHAPED = ("llama", "mistral", "qwen2")


def sliding_window(cfg: Any) -> Optional[int]:
    """The attention window a Mistral/Qwen2 model applies (None: full causal attention)."""
    if getattr(cfg, "model_type", None) == "qwen2":
        types = getattr(cfg, "layer_types", None) or ()
        return cfg.sliding_window if "sliding_attention" in types else None
    return getattr(cfg, "sliding_window", None)


def closed_form_reason(cfg: Any, seq: Optional[int] = None) -> Optional[str]:
    """None when the closed form describes the transformers config ``cfg`` (at sequence ``seq``),
    else why not, in a few words. Only what tests/memory/test_any_model.py checks against a fake
    trace is described: LLaMA-shaped configs with head_dim = hidden / heads, SiLU, no MLP bias, an untied
    head, and a sliding window (if any) longer than the sequence (SDPA then runs plain causal attention;
    at seq >= window transformers builds a (B, 1, T, T) mask)."""
    kind = getattr(cfg, "model_type", None)
    if kind in ("roberta", "bert"):
        return None
    if kind not in LLAMA_SHAPED:
        return f"the closed form does not describe {kind}"
    H = cfg.num_attention_heads
    win = sliding_window(cfg)
    for bad, what in (((getattr(cfg, "head_dim", None) or cfg.hidden_size // H) * H != cfg.hidden_size,
                       "head_dim x heads != hidden_size"),
                      (getattr(cfg, "hidden_act", "silu") != "silu", f"hidden_act {getattr(cfg, 'hidden_act', '')}"),
                      (getattr(cfg, "mlp_bias", False), "mlp_bias"),
                      (getattr(cfg, "tie_word_embeddings", False), "a tied LM head"),
                      # masking_utils._ignore_causal_mask_sdpa keeps is_causal only while kv_length < window
                      (win is not None and seq is not None and seq >= win, f"seq >= sliding_window {win}")):
        if bad:
            return f"the closed form does not describe this {kind} config: {what}"
    return None


def model_names() -> list[str]:
    """Every name ``estimate`` accepts (the names of minigpt.memory.zoo)."""
    from .. import zoo
    return zoo.names()


def is_config_source(model: Any) -> bool:
    """True for what minigpt.memory.hf_models reads: a path (config.json or a model directory), a
    dict with model_type, a transformers PretrainedConfig; a zoo name is not one."""
    from pathlib import Path
    if isinstance(model, str):
        from .. import zoo
        try:
            zoo.resolve(model)
            return False
        except ValueError:
            return True
    if isinstance(model, (dict, Path)):
        return True
    try:
        from transformers import PretrainedConfig
    except ImportError:     # pragma: no cover (transformers is a requirement)
        return False
    return isinstance(model, PretrainedConfig)


def resolve_config(model: Any, overrides: Optional[dict] = None, dropout: Optional[float] = None):
    """minigpt.memory.hf_models.resolve, its errors as EstimateError."""
    from .. import hf_models, zoo
    try:
        return hf_models.resolve(model, overrides, dropout, tuple(zoo.names()))
    except ValueError as e:
        raise EstimateError(str(e)) from None


@dataclass
class _ZooSource:
    """How a zoo model was given, for the --json spec (as hf_models.Resolved.describe)."""
    name: str
    config: Any
    overrides: dict

    def describe(self) -> dict:
        import dataclasses
        import json
        if hasattr(self.config, "described"):       # zoo.ZooConfig: no transformers import
            fields = self.config.described()
        elif dataclasses.is_dataclass(self.config):
            fields = dataclasses.asdict(self.config)
        else:
            fields = json.loads(self.config.to_json_string(use_diff=True))
        return {"source": f"zoo:{self.name}", "model_type": getattr(self.config, "model_type", "minigpt"),
                "config": fields, "overrides": dict(self.overrides)}


def zoo_source(name: str, spec: ModelSpec, overrides: dict) -> _ZooSource:
    return _ZooSource(name, spec.config, dict(overrides))


def resolve_model(model: Union[str, Any], **overrides) -> ModelSpec:
    """A name of minigpt.memory.zoo (with config overrides, e.g. n_layer=2 or num_hidden_layers=2),
    a GPTConfig, a transformers config, a config.json path or model directory, a dict, or a
    ModelSpec. Raises EstimateError for what the closed form does not describe."""
    if isinstance(model, ModelSpec):
        return model
    if is_config_source(model):
        src = resolve_config(model, overrides)
        return spec_from_config(src.config, src.name)
    if isinstance(model, str):
        from .. import zoo
        family, key = zoo._resolve(model)
        if family == "minigpt":
            from ...model import preset_config
            try:
                return spec_from_config(preset_config(key, **overrides), model)
            except (TypeError, ValueError) as e:
                raise EstimateError(str(e)) from None
        if not overrides:     # the closed form's fields without importing transformers
            return spec_from_config(zoo.light_config(key), model)
        try:
            cfg = zoo.hf_config(key, **overrides)
        except (TypeError, ValueError) as e:
            raise EstimateError(str(e)) from None
        fields = set(type(cfg)().to_dict()) | set(zoo.HF_CONFIGS[key])
        bad = [k for k in overrides if k not in fields]
        if bad:   # transformers configs accept any keyword silently
            raise EstimateError(f"--set {bad[0]}: the {cfg.model_type} config of {model!r} has no field {bad[0]!r}; "
                                f"its fields include {', '.join(sorted(k for k in zoo.HF_CONFIGS[key] if k != 'kind'))}.")
        return spec_from_config(cfg, model)
    return spec_from_config(model)


# ------------------------------------------------------------------ parameter inventory
@dataclass(frozen=True)
class PTensor:
    """One parameter (or buffer) tensor: qualified name, element count, role."""
    name: str
    numel: int
    kind: str      # "embed" | "linear_w" | "linear_b" | "norm" | "buffer_int" | "buffer_float"
    module: str = ""   # owning module's qualified name (Linear layers)
    rows: int = 0      # size of dim 0 (what FSDP2 shards); 0 = a 1-D tensor of numel rows

    @property
    def dim0(self) -> int:
        return self.rows or self.numel


def linear_layers(spec: ModelSpec) -> list[tuple[str, int, int, bool]]:
    """(qualified name, in, out, has bias) of every Linear layer, names as the model registers them
    (minigpt/families.py, the table LoRA's counts read too)."""
    return family_linear_layers(spec.family, n_layer=spec.n_layer, d=spec.d, ffn=spec.ffn, kv_dim=spec.kv_dim,
                                vocab=spec.vocab, n_labels=spec.n_labels, swiglu=spec.mlp == "swiglu",
                                bias=spec.bias, o_bias=spec.o_bias)


def parameter_inventory(spec: ModelSpec) -> list[PTensor]:
    """Every parameter and buffer tensor of the model (a tied head counted once), in closed form.

    tests/memory/test_estimate.py checks it against ``named_parameters()`` of the model built on
    the meta device for every zoo name.
    """
    d, L = spec.d, spec.n_layer
    inv: list[PTensor] = []
    lin = linear_layers(spec)

    def linears(prefix_filter) -> None:
        for name, fin, fout, b in lin:
            if prefix_filter(name):
                if name == "lm_head" and spec.tie:
                    continue
                inv.append(PTensor(name + ".weight", fin * fout, "linear_w", name, rows=fout))
                if b:
                    inv.append(PTensor(name + ".bias", fout, "linear_b", name))

    def norm(name: str) -> None:
        inv.append(PTensor(name + ".weight", d, "norm"))
        if spec.norm == "layernorm" and spec.bias:
            inv.append(PTensor(name + ".bias", d, "norm"))

    if spec.family == "minigpt":
        inv.append(PTensor("wte.weight", spec.vocab * d, "embed", rows=spec.vocab))
        if spec.positions:
            inv.append(PTensor("wpe.weight", spec.positions * d, "embed", rows=spec.positions))
        for i in range(L):
            norm(f"blocks.{i}.ln_1")
            linears(lambda n, i=i: n.startswith(f"blocks.{i}.attn."))
            norm(f"blocks.{i}.ln_2")
            linears(lambda n, i=i: n.startswith(f"blocks.{i}.mlp."))
        norm("ln_f")
        linears(lambda n: n == "lm_head")
    elif spec.family in ("roberta", "bert"):
        k = spec.family
        e = f"{k}.embeddings."
        inv += [PTensor(e + "word_embeddings.weight", spec.vocab * d, "embed", rows=spec.vocab),
                PTensor(e + "position_embeddings.weight", spec.positions * d, "embed", rows=spec.positions),
                PTensor(e + "token_type_embeddings.weight", spec.type_vocab * d, "embed", rows=spec.type_vocab)]
        norm(e + "LayerNorm")
        for i in range(L):
            p = f"{k}.encoder.layer.{i}."
            linears(lambda n, p=p: n.startswith(p + "attention."))
            norm(p + "attention.output.LayerNorm")
            linears(lambda n, p=p: n.startswith(p + "intermediate.") or n.startswith(p + "output."))
            norm(p + "output.LayerNorm")
        linears(lambda n: not n.startswith(f"{k}.encoder."))
        # non-persistent int64 buffers (1, max_positions): position_ids, token_type_ids
        inv += [PTensor(e + "position_ids", spec.positions, "buffer_int", rows=1),
                PTensor(e + "token_type_ids", spec.positions, "buffer_int", rows=1)]
    else:
        inv.append(PTensor("model.embed_tokens.weight", spec.vocab * d, "embed", rows=spec.vocab))
        for i in range(L):
            p = f"model.layers.{i}."
            linears(lambda n, p=p: n.startswith(p + "self_attn."))
            linears(lambda n, p=p: n.startswith(p + "mlp."))
            norm(p + "input_layernorm")
            norm(p + "post_attention_layernorm")
        norm("model.norm")
        linears(lambda n: n == "lm_head")
        half = spec.head_dim // 2  # rotary inv_freq and original_inv_freq, float32 (head_dim / 2,)
        inv += [PTensor("model.rotary_emb.inv_freq", half, "buffer_float"),
                PTensor("model.rotary_emb.original_inv_freq", half, "buffer_float")]
    return inv


def n_parameters(spec: ModelSpec) -> int:
    return sum(t.numel for t in parameter_inventory(spec) if not t.kind.startswith("buffer"))


# ------------------------------------------------------------------------ LoRA targets
_SHORTHAND = {"q": ("query", "q_proj"), "k": ("key", "k_proj"), "v": ("value", "v_proj"),
              "o": ("attention.output.dense", "o_proj")}


def resolve_targets(spec: ModelSpec, targets: Union[str, Sequence[str]]) -> Union[str, tuple[str, ...]]:
    """"all-linear", or Linear names with the shorthand q, k, v, o resolved for the architecture
    (MiniGPT/LLaMA: q_proj, k_proj, v_proj, o_proj; BERT/RoBERTa: query, key, value,
    attention.output.dense). A comma-separated string is split."""
    if isinstance(targets, str):
        if targets.strip().lower() == "all-linear":
            return "all-linear"
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not targets:
        raise EstimateError("targets is empty; give Linear layer names (e.g. q,v) or 'all-linear'.")
    bert = spec.family in ("roberta", "bert")
    out = []
    for t in targets:
        if t in _SHORTHAND:
            out.append(_SHORTHAND[t][0 if bert else 1])
        else:
            out.append(t)
    return tuple(dict.fromkeys(out))


def lora_plan(spec: ModelSpec, targets, head_trainable: bool) -> tuple[list[str], tuple[str, ...]]:
    """(names of the adapted Linear layers, fully trainable modules) exactly as minigpt.lora
    chooses them (its select_targets implements peft's rule)."""
    from ...lora import select_targets
    trainable = ("classifier",) if (spec.task == "cls" and head_trainable) else ()
    lin = [(n, i, o) for n, i, o, _ in linear_layers(spec)]
    outputs = {"lm_head"} if spec.task == "lm" else set()
    try:
        chosen = select_targets(lin, targets, trainable, outputs)
    except (TypeError, ValueError) as e:
        raise EstimateError(str(e)) from None
    return chosen, trainable


def head_plan(spec: ModelSpec) -> tuple[str, ...]:
    """The modules method="head" trains: a classification model's head, nothing else (no adapters)."""
    if spec.task != "cls":
        raise EstimateError(f"method='head' trains only a classification head, and {spec.name} is a language model "
                            f"with none; use method='full', 'lora' or 'qlora'.")
    return ("classifier",)


def _inside(name: str, keys: Sequence[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) == k or ".".join(parts[:i]).endswith("." + k)
               for i in range(1, len(parts) + 1) for k in keys)
