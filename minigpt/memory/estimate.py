"""Predict the memory of one training step in closed form, bucket by bucket, without running it.

    est = estimate("llama-7b", method="qlora", rank=8, targets="all-linear", precision="amp-bf16",
                   batch=1, seq=512)
    print(est.table())       # MiB or GiB (binary units; the table says which)
    est.to_dict()            # integer bytes: the buckets of buckets.py, "peak", and the configuration

The buckets mean what they mean in the tracker (buckets.py, tracker.py): an estimate and a
measurement of the same setup can be compared line by line (``python -m minigpt.memory compare``).

Model states (weights, gradients, optimizer state) per parameter tensor of numel n
-----------------------------------------------------------------------------------
=============  =========  =========  =====================================  ================
precision      weights    gradients  AdamW state                            weight copies
=============  =========  =========  =====================================  ================
fp32           4n         4n         8n (+4 B step counter per tensor)      0
amp-fp16/bf16  4n         4n         8n                                     2n per Linear weight
bf16 / fp16    2n         2n         4n (moments in the parameter dtype)    0
fp16-master    2n         2n         4n master copy + 8n moments = 12n      0
=============  =========  =========  =====================================  ================

So full fine-tuning costs 16 bytes per parameter in fp16-master (the accounting of Rajbhandari
et al. 2020, "ZeRO", section 3.1: 2 + 2 + K with K = 12) and 16 bytes *persistent* in PyTorch AMP
(4 + 4 + 8), plus 2 bytes per Linear weight for the autocast copies that live through the step:
18 at the peak. The step counters of ``torch.optim.AdamW`` are float32 scalars on the host when
the parameters are on a GPU (0 GPU bytes, semantics="cuda") and 4 bytes each on a CPU run.

* SGD with momentum: one buffer in the parameter dtype (4n in fp32), no counter.
* 8-bit AdamW (bitsandbytes 0.50.2 ``Optimizer2State``): for a tensor with n >= 4096 elements,
  two uint8 states (2n) plus two float32 absmax per block of 256 (8 * ceil(n / 256)); smaller
  tensors keep two float32 states (8n); plus the two 256-entry float32 code tables (2 KiB, shared).
* Paged AdamW (bitsandbytes ``PagedAdamW``): float32 states, but every tensor of >= 100,000
  elements is allocated with ``cudaMallocManaged`` (unified memory): the driver pages it to host
  RAM when the GPU runs short, so at the peak its GPU-resident bytes are about 0. Only the states
  of small tensors count here; the paged bytes are reported in ``Estimate.paged_bytes``.
* LoRA: only A (r x in) and B (out x r) of each adapted layer are trainable (fp32 adapters, as
  peft's ``autocast_adapter_dtype`` default and minigpt.lora); the base is frozen (weights_frozen).
* QLoRA: every Linear of the base except the LM head and the classifier head is stored in NF4
  (minigpt.nf4, bitsandbytes' format): ceil(n/2) bytes of 4-bit codes + 4 * ceil(n/64) bytes of
  float32 absmax; with double quantisation the absmax are uint8 (ceil(n/64) bytes) plus float32
  scales per block of 256 absmax (4 * ceil(n / 64 / 256)) and one float32 offset (4 bytes).
* Sharding over G GPUs (ZeRO, Rajbhandari et al. 2020; FSDP's FULL_SHARD = stage 3): stage 1
  divides the optimizer state by G, stage 2 also the gradients, stage 3 also the weights. Stage 3
  gathers one block's weights at a time (two with prefetch): 2 blocks of weights are added to
  weight_copies. Activations are per GPU (each GPU runs its own batch) and are not divided.

Activations: what autograd saves, per transformer block
-------------------------------------------------------
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
section 4.1) count, for a GPT block in 16-bit with dropout and non-fused attention,
``s*b*h*(34 + 5*a*s/h)`` bytes (s = sequence, b = batch, h = width, a = heads): 2 bytes for
every saved tensor element, 1 byte for every dropout mask element. We derive the same count for
each architecture from the model code, op by op, and add what real kernels do differently.
With N = b*s tokens, d = width, f = MLP width, H heads, e = bytes of a matmul output (4 fp32,
2 under autocast or in pure bf16/fp16), r = bytes of the residual stream (4 fp32 and AMP, 2 pure):

MiniGPT block (pre-norm, GELU MLP, minigpt/model.py), full fine-tuning, fused attention, p = 0,
with b*H*s logsumexp floats of the fused kernel (tests check these against the tracker):

    fp32:  N*d*(4 ln_1 input + 4 q/k/v input + 12 q, k, v + 4 attention output (read by o_proj
               in place) + 4 ln_2 input + 4 up input) + N*f*(4 GELU input + 4 down input)
               + 2 LayerNorms * 2 * 4N (mean, rstd) + 4*b*H*s
         = 32*N*d + 8*N*f + 16*N + 4*b*H*s          (= 64 N d + ... with f = 4d)
    AMP:   the residual stream (LayerNorm inputs) stays fp32; every Linear saves its own 16-bit
           cast of its input (q, k and v one each):
           N*d*(4 + 6 + 6 + 2 + 4 + 2) + N*f*(2 + 2) + 16*N + 4*b*H*s
         = 24*N*d + 4*N*f + 16*N + 4*b*H*s          (= 40 N d + ... with f = 4d)

In pure fp16 with eager attention and dropout on CUDA the same walk gives Korthikanti's
34*s*b*h + 5*a*s^2*b exactly, plus the LayerNorm statistics and the bool causal mask
(tests/test_memory_estimate.py). Eager attention adds the (b, H, s, s) probabilities and copies
of q, k, v made for the batched matmuls; dropout p > 0 adds a mask per dropout: 1 byte per
element on CUDA (``native_dropout``), the input's dtype on CPU (semantics="cpu"), where SDPA with
dropout also falls back to ATen's math path (three s x s fp32 tensors). On CUDA, flash /
memory-efficient attention never store the s x s matrix and apply dropout from a seed.

LoRA and QLoRA change what is saved: a frozen Linear saves no input (its weight gets no
gradient) but, when its input needs a gradient, keeps its weight, which under autocast is a
16-bit *copy* held until backward (weight_copies, 2 bytes per frozen Linear weight). Each adapter
saves the 16-bit cast of its input (N*in*2, fp32 adapters under autocast; the input itself in fp32)
and its rank-r intermediate (N*r*e). Block 0 of a LoRA model saves less: its input (frozen
embeddings) needs no gradient. QLoRA's NF4 layers save nothing: the weight is decoded again in
backward (6 bytes per weight of the layer while decoding: int32 codes + fp32 levels, transient).
transformers' LLaMA is built for training with ``use_cache=False`` (minigpt.memory.zoo), as
fine-tuning configs do: no KV cache is kept.

Gradient checkpointing (per block, ``torch.utils.checkpoint``, non-reentrant) keeps each block's
input (N*d*r) and recomputes one block at a time in backward.

How the estimate is computed. The formulas above are not typed in one by one: ``forward_walk``
walks each architecture's forward pass op by op on *symbolic* tensors (element count, bytes per
element, requires_grad; no torch, no memory), applying to each op the rule of what autograd saves
and what autocast casts; the activations are the sum of the saved shapes. ``replay_step`` then
replays the step in order -- forward (saved tensors, the autocast cache, tensors in flight),
backward in reverse (each op allocates its inputs' and parameters' gradients, then frees its
output's gradient and what it saved; checkpointed blocks are recomputed when backward reaches
them), optimizer step (foreach or for-loop temporaries) -- and the peak is the largest total met.
Model states are exact sums over the parameter tensors. Everything is arithmetic on shapes:
LLaMA-70B takes a few seconds on a laptop.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

from .buckets import BUCKETS, GiB, MiB, MODEL_STATE_BUCKETS, empty_buckets, fmt_bytes

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "amp-fp16", "amp-bf16", "bf16", "fp16", "fp16-master")
OPTIMIZERS = ("adamw", "sgd", "adamw-8bit", "paged-adamw", "paged-adamw-8bit")
ATTENTIONS = ("sdpa", "eager")
SEMANTICS = ("cpu", "cuda")
ZERO_STAGES = (0, 1, 2, 3)

# bitsandbytes 0.50.2 (optim/optimizer.py, Optimizer2State.init_state / get_state_buffer)
BNB_8BIT_BLOCK = 256          # 8-bit optimizer states: one float32 absmax per 256 values
BNB_MIN_8BIT_SIZE = 4096      # smaller tensors keep float32 states
BNB_PAGED_MIN_NUMEL = 100_000  # smaller tensors are not paged
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256


class EstimateError(ValueError):
    """A bad argument to estimate(): the message says what to change."""


def _choice(name: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise EstimateError(f"{name}={value!r} is not allowed; use one of: "
                            f"{', '.join(str(a) for a in allowed)}.")


# ====================================================================================
# The model: shapes by name or config
# ====================================================================================
@dataclass(frozen=True)
class ModelSpec:
    """Everything the formulas need to know about a model, read from its config.

    family: "minigpt" (minigpt.model.GPT, an LM), "roberta"/"bert" (transformers
    ...ForSequenceClassification) or "llama" (transformers LlamaForCausalLM).
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
    from ..model import GPTConfig
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
    if kind == "llama":
        H = cfg.num_attention_heads
        return ModelSpec(name=name or kind, family="llama", vocab=cfg.vocab_size, n_layer=cfg.num_hidden_layers,
                         d=cfg.hidden_size, n_head=H, n_kv_head=cfg.num_key_value_heads or H,
                         ffn=cfg.intermediate_size, positions=0, bias=bool(cfg.attention_bias),
                         norm="rmsnorm", mlp="swiglu", tie=bool(cfg.tie_word_embeddings),
                         hidden_dropout=0.0, attn_dropout=float(cfg.attention_dropout), config=cfg)
    raise EstimateError(f"estimate() knows minigpt GPTConfig and transformers roberta, bert and llama "
                        f"configs, not {kind or type(cfg).__name__!r}; pass one of those or a model name.")


def model_names() -> list[str]:
    """Every name ``estimate`` accepts (the names of minigpt.memory.zoo)."""
    from . import zoo
    return zoo.names()


def resolve_model(model: Union[str, Any], **overrides) -> ModelSpec:
    """A name of minigpt.memory.zoo (with config overrides, e.g. n_layer=2 or num_hidden_layers=2),
    a GPTConfig, a transformers config, or a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        from . import zoo
        try:
            family, key = zoo._resolve(model)
        except ValueError:
            raise EstimateError(f"Unknown model {model!r}; use one of: {', '.join(zoo.names())}.") from None
        if family == "minigpt":
            from ..model import preset_config
            try:
                return spec_from_config(preset_config(key, **overrides), model)
            except (TypeError, ValueError) as e:
                raise EstimateError(str(e)) from None
        try:
            return spec_from_config(zoo.hf_config(key, **overrides), model)
        except (TypeError, ValueError) as e:
            raise EstimateError(str(e)) from None
    return spec_from_config(model)


# ------------------------------------------------------------------ parameter inventory
@dataclass(frozen=True)
class PTensor:
    """One parameter (or buffer) tensor: qualified name, element count, role."""
    name: str
    numel: int
    kind: str      # "embed" | "linear_w" | "linear_b" | "norm" | "buffer_int" | "buffer_float"
    module: str = ""   # owning module's qualified name (Linear layers)


def linear_layers(spec: ModelSpec) -> list[tuple[str, int, int, bool]]:
    """(qualified name, in, out, has bias) of every Linear layer, names as the model registers them."""
    d, f, kv, L = spec.d, spec.ffn, spec.kv_dim, spec.n_layer
    out: list[tuple[str, int, int, bool]] = []
    if spec.family == "minigpt":
        b = spec.bias
        for i in range(L):
            a, m = f"blocks.{i}.attn.", f"blocks.{i}.mlp."
            out += [(a + "q_proj", d, d, b), (a + "k_proj", d, kv, b), (a + "v_proj", d, kv, b),
                    (a + "o_proj", d, d, b)]
            if spec.mlp == "swiglu":
                out.append((m + "gate_proj", d, f, b))
            out += [(m + "up_proj", d, f, b), (m + "down_proj", f, d, b)]
        out.append(("lm_head", d, spec.vocab, False))
    elif spec.family in ("roberta", "bert"):
        k = spec.family
        for i in range(L):
            p = f"{k}.encoder.layer.{i}."
            out += [(p + "attention.self.query", d, d, True), (p + "attention.self.key", d, d, True),
                    (p + "attention.self.value", d, d, True), (p + "attention.output.dense", d, d, True),
                    (p + "intermediate.dense", d, f, True), (p + "output.dense", f, d, True)]
        if k == "roberta":
            out += [("classifier.dense", d, d, True), ("classifier.out_proj", d, spec.n_labels, True)]
        else:
            out += [("bert.pooler.dense", d, d, True), ("classifier", d, spec.n_labels, True)]
    else:
        b = spec.bias
        for i in range(L):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            out += [(a + "q_proj", d, d, b), (a + "k_proj", d, kv, b), (a + "v_proj", d, kv, b),
                    (a + "o_proj", d, d, b), (m + "gate_proj", d, f, False), (m + "up_proj", d, f, False),
                    (m + "down_proj", f, d, False)]
        out.append(("lm_head", d, spec.vocab, False))
    return out


def parameter_inventory(spec: ModelSpec) -> list[PTensor]:
    """Every parameter and buffer tensor of the model (a tied head counted once), in closed form.

    tests/test_memory_estimate.py checks it against ``named_parameters()`` of the model built on
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
                inv.append(PTensor(name + ".weight", fin * fout, "linear_w", name))
                if b:
                    inv.append(PTensor(name + ".bias", fout, "linear_b", name))

    def norm(name: str) -> None:
        inv.append(PTensor(name + ".weight", d, "norm"))
        if spec.norm == "layernorm" and spec.bias:
            inv.append(PTensor(name + ".bias", d, "norm"))

    if spec.family == "minigpt":
        inv.append(PTensor("wte.weight", spec.vocab * d, "embed"))
        if spec.positions:
            inv.append(PTensor("wpe.weight", spec.positions * d, "embed"))
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
        inv += [PTensor(e + "word_embeddings.weight", spec.vocab * d, "embed"),
                PTensor(e + "position_embeddings.weight", spec.positions * d, "embed"),
                PTensor(e + "token_type_embeddings.weight", spec.type_vocab * d, "embed")]
        norm(e + "LayerNorm")
        for i in range(L):
            p = f"{k}.encoder.layer.{i}."
            linears(lambda n, p=p: n.startswith(p + "attention."))
            norm(p + "attention.output.LayerNorm")
            linears(lambda n, p=p: n.startswith(p + "intermediate.") or n.startswith(p + "output."))
            norm(p + "output.LayerNorm")
        linears(lambda n: not n.startswith(f"{k}.encoder."))
        # non-persistent int64 buffers (1, max_positions): position_ids, token_type_ids
        inv += [PTensor(e + "position_ids", spec.positions, "buffer_int"),
                PTensor(e + "token_type_ids", spec.positions, "buffer_int")]
    else:
        inv.append(PTensor("model.embed_tokens.weight", spec.vocab * d, "embed"))
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
    from ..lora import select_targets
    trainable = ("classifier",) if (spec.task == "cls" and head_trainable) else ()
    lin = [(n, i, o) for n, i, o, _ in linear_layers(spec)]
    outputs = {"lm_head"} if spec.task == "lm" else set()
    try:
        chosen = select_targets(lin, targets, trainable, outputs)
    except (TypeError, ValueError) as e:
        raise EstimateError(str(e)) from None
    return chosen, trainable


def _inside(name: str, keys: Sequence[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) == k or ".".join(parts[:i]).endswith("." + k)
               for i in range(1, len(parts) + 1) for k in keys)


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Stored bytes of one NF4 weight (minigpt.nf4.nf4_nbytes, bitsandbytes' layout)."""
    blocks = -(-numel // NF4_BLOCK)
    packed = (numel + 1) // 2
    if not double_quant:
        return packed + 4 * blocks
    return packed + blocks + 4 + 4 * -(-blocks // NF4_DQ_BLOCK)


# ====================================================================================
# Model states
# ====================================================================================
def _half(precision: str) -> bool:
    return precision in ("bf16", "fp16", "fp16-master")


def _param_bytes(precision: str) -> int:
    return 2 if _half(precision) else 4


@dataclass
class _States:
    weights_trainable: int = 0
    weights_frozen: int = 0
    gradients: int = 0
    optimizer: int = 0
    paged: int = 0                    # optimizer bytes in unified memory (paged optimizers)
    host: int = 0                     # step counters on the host (semantics="cuda")
    n_params: int = 0
    n_trainable: int = 0
    trainable: list = field(default_factory=list)   # [(name, numel, bytes per element)]
    frozen_linear: list = field(default_factory=list)  # [(module, in, out)] frozen float Linear weights
    nf4_linear: list = field(default_factory=list)     # [(module, in, out)]
    adapted: list = field(default_factory=list)        # adapted Linear names
    head_modules: tuple = ()


def model_states(spec: ModelSpec, method: str, precision: str, optimizer: str, rank: int,
                 targets, double_quant: bool, semantics: str, head_trainable: bool = True) -> _States:
    """Weights, gradients and optimizer bytes, tensor by tensor (exact: the tracker agrees to the byte)."""
    st = _States()
    wb = _param_bytes(precision)
    inv = parameter_inventory(spec)
    adapted: list[str] = []
    trainable_mods: tuple[str, ...] = ()
    if method != "full":
        adapted, trainable_mods = lora_plan(spec, targets, head_trainable)
    st.adapted, st.head_modules = adapted, trainable_mods
    linear_shape = {n: (i, o) for n, i, o, _ in linear_layers(spec)}
    # QLoRA: quantize_model(skip=("lm_head", "classifier")) turns every other Linear into NF4
    quantized = set()
    if method == "qlora":
        quantized = {n for n in linear_shape
                     if not (set(n.split(".")) & {"lm_head", "classifier"})}

    trainable: list[tuple[str, int, int]] = []
    for t in inv:
        if t.kind == "buffer_int":
            st.weights_frozen += 8 * t.numel
            continue
        if t.kind == "buffer_float":  # rotary tables: cast with the model in pure 16-bit
            st.weights_frozen += wb * t.numel
            continue
        st.n_params += t.numel
        if method == "full" or _inside(t.name, trainable_mods):
            trainable.append((t.name, t.numel, wb))
            continue
        if t.kind == "linear_w" and t.module in quantized:
            st.weights_frozen += nf4_bytes(t.numel, double_quant)
            st.nf4_linear.append((t.module, *linear_shape[t.module]))
            continue
        st.weights_frozen += wb * t.numel
        if t.kind == "linear_w":
            st.frozen_linear.append((t.module, *linear_shape[t.module]))
    if method == "qlora":
        # nn.Linear parameters counted above as weights; NF4 codes are buffers, not parameters
        st.n_params -= sum(i * o for _, i, o in st.nf4_linear)
    ab = wb  # adapters: fp32 (peft's autocast_adapter_dtype), cast with the model in pure 16-bit
    for name in adapted:
        fin, fout = linear_shape[name]
        trainable += [(name + ".A", rank * fin, ab), (name + ".B", fout * rank, ab)]
        st.n_params += rank * (fin + fout)
    st.trainable = trainable
    st.n_trainable = sum(n for _, n, _ in trainable)
    st.weights_trainable = sum(n * b for _, n, b in trainable)
    st.gradients = st.weights_trainable

    # optimizer state
    opt = 0
    counters = 0
    paged = 0
    for _, n, b in trainable:
        master = 4 * n if precision == "fp16-master" else 0
        if optimizer == "sgd":
            state = (4 if precision == "fp16-master" else b) * n
        elif optimizer == "adamw":
            state = 2 * (4 if precision == "fp16-master" else b) * n
            counters += 1
        elif optimizer in ("adamw-8bit", "paged-adamw-8bit"):
            if n >= BNB_MIN_8BIT_SIZE:
                state = 2 * n + 2 * 4 * -(-n // BNB_8BIT_BLOCK)
            else:
                state = 8 * n
        else:  # paged-adamw: float32 states
            state = 8 * n
        if optimizer.startswith("paged") and n >= BNB_PAGED_MIN_NUMEL:
            paged += state
            state = 0
        opt += state + master
    if optimizer in ("adamw-8bit", "paged-adamw-8bit") and any(n >= BNB_MIN_8BIT_SIZE for _, n, _ in trainable):
        opt += 2 * 256 * 4  # the signed and unsigned dynamic code tables
    if counters:
        if semantics == "cuda":
            st.host += 4 * counters
        else:
            opt += 4 * counters
    st.optimizer, st.paged = opt, paged
    return st


# ====================================================================================
# Activations: a symbolic walk through the forward pass
# ====================================================================================
class _T:
    """A symbolic tensor: storage id, elements, bytes per element, requires_grad."""
    __slots__ = ("sid", "numel", "el", "grad", "storage")
    _next = 0

    def __init__(self, numel: int, el: int, grad: bool):
        _T._next += 1
        self.sid, self.numel, self.el, self.grad = _T._next, int(numel), int(el), bool(grad)
        self.storage = self.numel * self.el

    @property
    def nbytes(self) -> int:
        """Bytes of the storage (a view keeps its whole base alive)."""
        return self.storage

    @property
    def gbytes(self) -> int:
        """Bytes of this tensor's gradient (a slice's backward fills a base-sized gradient)."""
        return self.storage

    def slice(self, numel: int) -> "_T":
        """A view of part of this tensor: fewer elements, the same storage."""
        v = object.__new__(_T)
        v.sid, v.numel, v.el, v.grad, v.storage = self.sid, int(numel), self.el, self.grad, self.storage
        return v


@dataclass
class _Ctx:
    spec: ModelSpec
    B: int
    T: int
    precision: str
    semantics: str
    attention: str
    p_hidden: float
    p_attn: float
    method: str
    rank: int
    adapted: frozenset      # adapted Linear names
    nf4: frozenset          # NF4 Linear names
    trainable_mods: tuple
    checkpointing: bool = False

    @property
    def N(self) -> int:
        return self.B * self.T

    @property
    def amp(self) -> bool:
        return self.precision.startswith("amp")

    @property
    def wb(self) -> int:
        return _param_bytes(self.precision)

    @property
    def lp(self) -> int:
        """Bytes of a matmul output."""
        return 2 if (self.amp or _half(self.precision)) else 4

    @property
    def cuda(self) -> bool:
        return self.semantics == "cuda"

    @property
    def full(self) -> bool:
        return self.method == "full"


@dataclass
class _Op:
    """One forward op, as the backward pass will meet it."""
    name: str
    ins: list                  # inputs that get a gradient
    outs: list                 # outputs
    saves: list                # [(sid, bytes, bucket)] saved for backward
    pgrads: list               # [(param key, numel, computed bytes/elem, final bytes/elem)]
    work: int = 0              # workspace allocated during its backward
    block: int = -1            # transformer block (-1: outside the blocks)
    passthrough: bool = False  # add / view: the gradient is passed on, not computed
    unpacks: bool = False      # its backward reads saved tensors (parameters included)
    work_before: int = 0       # backward transient freed before its gradients are written


class _Walk:
    """Walks the forward pass symbolically. Each method is one op of the model code, with its
    rule for what autograd saves; together they give the activations (a sum of shapes) and the
    op list the backward replay walks in reverse."""

    def __init__(self, ctx: _Ctx):
        self.c = ctx
        self.saved: dict[int, int] = {}        # sid -> bytes, activations
        self.held: dict[str, int] = {}         # weight copies kept for backward
        self.cache: dict[str, int] = {}        # autocast cache (trainable weights), until forward ends
        self.terms: dict[str, int] = {}        # label -> bytes (for the breakdown)
        self.log: list[tuple[str, int]] = []   # (label, bytes) in the order saved
        self.dequant = 0                       # largest transient of an NF4 decode (weight_copies)
        self.ops: list[_Op] = []
        self.block = -1
        self._pending: list = []
        self._held_sid: dict[str, int] = {}
        self.cache_block: dict[int, int] = {}  # autocast cache made inside each block
        self.anchors: list[_T] = []            # tensors the model code keeps referenced
        self._keep: Optional[list] = None      # intermediates a C++ function keeps until it returns
        self.kept: list[_T] = []               # tensors the model's output holds until backward ends
        self.fwd_peak = 0
        self.recompute_trace: dict[int, list] = {}   # per block: (saved + in flight, op saves?)
        self.block_start = 0
        self.block_held = 0
        self.anchor_base = 0
        self.block_input = -1
        self.block_input_pre_saved = False     # the block's input was saved before the block began
        self.bias = {n: b for n, _, _, b in linear_layers(ctx.spec)}

    # ---------------------------------------------------------------- bookkeeping
    def save(self, t: _T, label: str) -> None:
        self._pending.append((t.sid, t.nbytes, "activations"))
        if t.sid not in self.saved:
            self.saved[t.sid] = t.nbytes
            self.terms[label] = self.terms.get(label, 0) + t.nbytes
            self.log.append((label, t.nbytes))

    def save_bytes(self, nbytes: int, label: str) -> None:
        self.save(_T(nbytes, 1, False), label)

    def hold(self, key: str, nbytes: int) -> None:
        """A weight copy saved for backward (autocast's 16-bit cast of a weight)."""
        if key not in self._held_sid:
            self._held_sid[key] = _T(0, 0, False).sid
        self.held[key] = nbytes
        self._pending.append((self._held_sid[key], nbytes, "weight_copies"))

    def arg_anchor(self, t: _T) -> None:
        """A module's argument (a norm's output), referenced until the module returns, in the
        forward pass and when checkpointing recomputes the block."""
        self.anchors.append(t)

    def to_cache(self, key: str, nbytes: int) -> None:
        if key not in self.cache:
            self.cache[key] = nbytes
            self.cache_block[self.block] = self.cache_block.get(self.block, 0) + nbytes

    def record(self, name: str, ins: Sequence[_T], outs: Sequence[_T], pgrads=(), work: int = 0,
               passthrough: bool = False, fwd_work: int = 0, alive: Sequence[_T] = (),
               unpacks: bool = False, work_before: int = 0) -> None:
        op = _Op(name, [x for x in ins if x.grad], list(outs), self._pending, list(pgrads), work,
                 self.block, passthrough, bool(self._pending) or unpacks, work_before)
        self._pending = []
        if self._keep is not None:
            alive = (*alive, *self._keep)
        # forward peak: what is saved so far, the autocast cache, and the tensors in flight
        # (this op's inputs and outputs, the residual stream, the embedding output transformers
        # keeps in a local variable) unless they are saved already
        # (a kernel's workspace, e.g. an NF4 decode, is gone before its output is written)
        def in_flight(tensors) -> int:
            seen = {t.sid: t.nbytes for t in tensors if t.sid not in self.saved}
            new = {t.sid: t.nbytes for t in outs if t.sid not in self.saved and t.sid not in seen}
            return sum(seen.values()) + max(fwd_work, sum(new.values()))
        now = self.total() + sum(self.cache.values()) + in_flight((*ins, *alive, *self.anchors, *self.kept)) + \
            sum(b for k, b in self.held.items() if k not in self.cache)
        self.fwd_peak = max(self.fwd_peak, now)
        if self.block >= 0:   # the same inside the block alone: what recomputing it holds
            # (a module's argument, e.g. a norm's output, is referenced during the recomputation
            # as in the forward pass: the module holds it until it returns)
            inner = [t for t in (*ins, *alive) if t.sid != self.block_input] + \
                list(self.anchors[self.anchor_base:])
            held_blk = sum(b for k, b in self.held.items() if k not in self.cache) - self.block_held
            # the block's input, when an op of the block saves it (a norm), is the tensor the
            # checkpoint keeps: the backward replay counts it already
            own_input = self.saved.get(self.block_input, 0) if self.block_input_saved_in_block() else 0
            base = (self.total() - self.block_start - own_input) + \
                self.cache_block.get(self.block, 0) + held_blk
            blk = base + in_flight(inner)
            # torch.utils.checkpoint stops recomputing at the pack of the last saved tensor. An
            # ATen op saves its inputs before its kernel runs (VariableType: SavedVariable of the
            # inputs, then the call): if the block's last saving op saves inputs only, the
            # recomputation stops before its outputs and workspace are allocated.
            ins_sids = {t.sid for t in ins}
            inputs_only = bool(op.saves) and all(sid in ins_sids or bucket != "activations"
                                                 for sid, _, bucket in op.saves)
            seen = {t.sid: t.nbytes for t in inner if t.sid not in self.saved}
            blk_at_pack = base + sum(seen.values()) if inputs_only else blk
            self.recompute_trace.setdefault(self.block, []).append((blk, op.unpacks, blk_at_pack))
        if any(o.grad for o in outs) or op.saves:
            self.ops.append(op)

    def total(self) -> int:
        return sum(self.saved.values())

    def block_input_saved_in_block(self) -> bool:
        return self.block_input in self.saved and not self.block_input_pre_saved

    def cast(self, x: _T, el: int) -> _T:
        if x.el == el:
            return x
        y = _T(x.numel, el, x.grad)
        self.record("cast", [x], [y])
        return y

    def trainable(self, module: str) -> bool:
        return self.c.full or _inside(module, self.c.trainable_mods)

    def pgrad(self, key: str, numel: int, computed: Optional[int] = None) -> tuple:
        final = self.c.wb
        return (key, numel, computed or final, final)

    def add(self, x: _T, y: _T) -> _T:
        """x + y (residual): autograd passes the gradient on to both (cast to each dtype)."""
        out = _T(x.numel, max(x.el, y.el), x.grad or y.grad)
        self.record("add", [x, y], [out], passthrough=True)
        return out

    # ---------------------------------------------------------------- ops
    def embedding(self, key: str, rows: int, numel_w: int, trainable: bool, out_grad: bool) -> _T:
        """Token / position lookup (not autocast: output in the weights' dtype). Its backward
        builds a dense (vocab, d) gradient."""
        c = self.c
        out = _T(rows * c.spec.d, c.wb, trainable or out_grad)
        pg = [self.pgrad(key, numel_w)] if trainable else []
        self.record("embedding", [], [out], pg)
        return out

    def linear(self, x: _T, name: str, fin: int, fout: int) -> _T:
        """nn.Linear / LoRALinear / NF4Linear (+ LoRA) on x (..., fin)."""
        c = self.c
        rows = x.numel // fin
        if name in c.nf4:
            y = self._nf4(x, name, fin, fout, rows)
        else:
            y = self._plain(x, name, fin, fout, rows, self.trainable(name))
        if name in c.adapted:
            y = self._lora(x, y, name, fin, fout, rows)
        return y

    def _plain(self, x: _T, name: str, fin: int, fout: int, rows: int, w_grad: bool,
               wkey: Optional[str] = None) -> _T:
        """F.linear. It saves its input when the weight needs a gradient and the weight when the
        input does. Under autocast the input and the weight are cast to 16 bits first; the cast
        of a weight that requires grad is cached until the forward pass ends."""
        c = self.c
        wkey = wkey or name + ".weight"
        bias = self.bias.get(name, False)
        grad_out = x.grad or w_grad
        pg = []
        if w_grad:
            pg.append(self.pgrad(wkey, fin * fout, 2 if c.amp else None))
            if bias:
                pg.append(self.pgrad(name + ".bias", fout, 2 if c.amp else None))
        if c.amp:
            xin = self.cast(x, 2)
            wcopy = 2 * fin * fout
            if w_grad:      # autocast caches the cast of a leaf that requires grad
                self.to_cache(wkey, wcopy)
                self.to_cache(name + ".bias", 2 * fout if bias else 0)
            if x.grad:      # grad_input = grad_out @ W needs W: the 16-bit copy is kept
                self.hold(wkey, wcopy)
            if w_grad:
                self.save(xin, "linear inputs")
            y = _T(rows * fout, 2, grad_out)
            self.record("linear", [xin], [y], pg, unpacks=grad_out)
            return y
        if w_grad:
            self.save(x, "linear inputs")
        y = _T(rows * fout, c.lp, grad_out)
        self.record("linear", [x], [y], pg, unpacks=grad_out)   # (a frozen W is saved for x's grad)
        return y

    def _nf4(self, x: _T, name: str, fin: int, fout: int, rows: int) -> _T:
        """minigpt.nf4.NF4Linear: cast x to the compute dtype, decode W (transient), F.linear in a
        custom autograd Function that saves nothing, cast the output back to x's dtype. Backward
        decodes W again."""
        c = self.c
        cd = c.lp
        n = fin * fout
        # decode transients (minigpt.nf4.dequantize_nf4): int32 codes (2 B/weight) and the float32
        # levels they index (4 B) -> 6 B/weight at the worst moment; the decoded weight (the levels
        # scaled in place, 4 B, or its 16-bit cast) lives through the matmul. Forward and backward.
        dq = 6 * n
        self.dequant = max(self.dequant, dq)
        xc = self.cast(x, cd)
        y = _T(rows * fout, cd, x.grad)
        # the decoded weight (n elements in the compute dtype) is the matmul's input: it is alive
        # while the output is written (forward: y; backward: grad_out @ W, the input's gradient);
        # the 6 B/weight decode peak is over before that output exists
        self.record("nf4_linear", [xc], [y], work=n * cd, fwd_work=max(dq, n * cd + y.nbytes),
                    alive=[x], work_before=dq)
        return self.cast(y, x.el)

    def _lora(self, x: _T, y: _T, name: str, fin: int, fout: int, rows: int) -> _T:
        """minigpt.lora.LoRALinear: y + s * B(A(x)), adapters in the adapter dtype."""
        c = self.c
        r = c.rank
        ab = c.wb   # adapter dtype (fp32, or cast with a pure 16-bit model)
        # the module's argument x, the base layer's output y and x.to(A.dtype) (the forward's
        # local variables) are referenced until LoRALinear.forward returns
        outer = self._keep
        self._keep = [*(outer or ()), x, y]
        xa = self.cast(x, ab)              # x.to(A.dtype): an fp32 copy of a 16-bit x (not saved)
        self._keep.append(xa)
        ka, kb = name + ".A", name + ".B"
        if c.amp:
            xl = self.cast(xa, 2)          # autocast: the 16-bit copy the matmul saves
            self.to_cache(ka, 2 * r * fin)
            self.to_cache(kb, 2 * r * fout)
            self.save(xl, "LoRA inputs")
            if x.grad:                     # casts of A and B saved for the input's gradient
                self.hold(ka, 2 * r * fin)
            h = _T(rows * r, 2, True)
            self.record("lora_A", [xl], [h], [(ka, r * fin, 2, ab)])
            self.save(h, "LoRA rank-r")
            self.hold(kb, 2 * r * fout)
            delta = _T(rows * fout, 2, True)
            self.record("lora_B", [h], [delta], [(kb, r * fout, 2, ab)])
        else:
            self.save(xa, "LoRA inputs")
            h = _T(rows * r, ab, True)
            self.record("lora_A", [xa], [h], [(ka, r * fin, ab, ab)])
            self.save(h, "LoRA rank-r")
            delta = _T(rows * fout, ab, True)
            self.record("lora_B", [h], [delta], [(kb, r * fout, ab, ab)])
        scaled = _T(delta.numel, delta.el, True)
        self.record("scale", [delta], [scaled])          # * scaling: saves nothing
        out = self.add(y, scaled)                        # result + delta promotes
        out = self.cast(out, y.el)
        self._keep = outer
        return out

    def layernorm(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """native_layer_norm saves its input, mean and rstd (one per row) when anything needs a
        gradient. CUDA autocast runs it in fp32 (a cast copy of a 16-bit input)."""
        c = self.c
        d = c.spec.d
        rows = x.numel // d
        if c.cuda and c.amp:
            x = self.cast(x, 4)
        grad = x.grad or w_grad
        # mean and rstd: the CPU kernel keeps them in the input dtype (the CUDA kernel in fp32:
        # 2 bytes more per row in pure 16-bit; the simulated CUDA run uses the CPU kernel)
        stat = x.el
        if grad:
            self.save(x, "norm inputs")
            self.save_bytes(rows * stat, "norm stats")    # mean
            self.save_bytes(rows * stat, "norm stats")    # rstd
        y = _T(x.numel, x.el, grad)
        pg = [self.pgrad(key + ".weight", d), self.pgrad(key + ".bias", d)] if w_grad else []
        if w_grad and not (c.spec.bias or c.spec.is_hf):
            pg = pg[:1]
        self.record("layernorm", [x], [y], pg, unpacks=grad)
        return y

    def rmsnorm_hf(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """LlamaRMSNorm: x.to(fp32); pow(2).mean; x * rsqrt(var + eps); weight * .to(input dtype)."""
        d = self.c.spec.d
        rows = x.numel // d
        grad = x.grad or w_grad
        x32 = self.cast(x, 4)
        if x.grad:
            self.save(x32, "norm inputs")           # pow and mul save the fp32 input
            self.save(_T(rows, 4, True), "norm stats")   # rsqrt saves its output
        h = _T(x.numel, 4, grad)
        self.record("rms", [x32], [h], work=x32.nbytes)   # backward: grads through pow, mul
        hc = self.cast(h, x.el)
        if w_grad:
            self.save(hc, "norm outputs")           # weight * h saves h for the weight's grad
        y = _T(x.numel, x.el, grad)
        self.record("rms_weight", [hc], [y], [self.pgrad(key + ".weight", d)] if w_grad else [],
                    unpacks=grad)
        return y

    def rmsnorm_minigpt(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """F.rms_norm (ATen's composite): x32 = x.float(); x32 * rsqrt(mean(x32^2) + eps) * w in
        fp32, then cast to x's dtype. Saves x32 and rsqrt (for x), x32 * rsqrt (for w)."""
        d = self.c.spec.d
        rows = x.numel // d
        grad = x.grad or w_grad
        x32 = self.cast(x, 4)
        if x.grad:
            self.save(x32, "norm inputs")
            self.save(_T(rows, 4, True), "norm stats")
        h = _T(x.numel, 4, grad)
        self.record("rms", [x32], [h], work=x32.nbytes)
        if w_grad:
            self.save(h, "norm outputs")
        y = _T(x.numel, 4, grad)
        self.record("rms_weight", [h], [y], [self.pgrad(key + ".weight", d)] if w_grad else [],
                    unpacks=grad)
        return self.cast(y, x.el)

    def dropout(self, x: _T, p: float) -> _T:
        """F.dropout in training. CUDA (``native_dropout``): a 1-byte bool mask is saved. CPU
        (``_dropout_impl``): a noise tensor of x's dtype is saved. p = 0 returns x itself."""
        if p <= 0:
            return x
        if x.grad:
            if self.c.cuda:
                self.save(_T(x.numel, 1, False), "dropout masks")
            else:
                self.save(_T(x.numel, x.el, False), "dropout masks")
        y = _T(x.numel, x.el, x.grad)
        self.record("dropout", [x], [y])
        return y

    def act(self, x: _T, kind: str) -> _T:
        """GELU / SiLU save their input, tanh its output."""
        y = _T(x.numel, x.el, x.grad)
        if x.grad:
            self.save(y if kind == "tanh" else x, "activation-function inputs")
        self.record(kind, [x], [y])
        return y

    def mul(self, a: _T, b: _T) -> _T:
        """a * b saves both (each one's gradient needs the other)."""
        if b.grad:
            self.save(a, "products")
        if a.grad:
            self.save(b, "products")
        y = _T(a.numel, max(a.el, b.el), a.grad or b.grad)
        self.record("mul", [a, b], [y])
        return y

    def new_like(self, x: _T, el: Optional[int] = None, numel: Optional[int] = None) -> _T:
        """An elementwise op that saves nothing (rotary, scaling): a new tensor."""
        y = _T(numel or x.numel, el or x.el, x.grad)
        self.record("elementwise", [x], [y])
        return y

    # ---------------------------------------------------------------- attention
    def attention(self, q: _T, k: _T, v: _T, causal: bool, kind: str, family: str,
                  q_contiguous: bool = False) -> _T:
        """Scaled dot-product attention on (B, H, T, hd) views; returns the (B, T, d) output."""
        c = self.c
        B, T, H = c.B, c.T, c.spec.n_head
        hd = c.spec.head_dim
        grad = q.grad or k.grad or v.grad
        p = c.p_attn
        if kind == "sdpa":
            if c.amp:  # SDPA is on both autocast lists: 16-bit q, k, v
                q, k, v = self.cast(q, 2), self.cast(k, 2), self.cast(v, 2)
            el = q.el
            if c.spec.n_kv_head != H and family == "minigpt":   # repeat_interleave copies
                k, v = self.new_like(k, numel=q.numel), self.new_like(v, numel=q.numel)
            if c.cuda:
                # cuda_rules.CudaLikeSDPA: flash (16-bit) or memory-efficient (fp32) kernel
                flash = el == 2
                lse_T = T if flash else -(-T // 32) * 32
                out = _T(B * T * H * hd, el, grad)
                if grad:
                    for t in (q, k, v, out):
                        self.save(t, "attention q, k, v, out")
                    self.save(_T(B * H * lse_T, 4, False), "attention logsumexp")
                if flash:   # softmax_d (B, H, T128) and dq_accum (B, T128, H, hd32) in fp32
                    T128 = -(-T // 128) * 128
                    hd_r = -(-hd // (32 if hd <= 128 else 64)) * (32 if hd <= 128 else 64)
                    work = 4 * B * H * T128 + 4 * B * T128 * H * hd_r
                else:       # delta (B, H, T) fp32
                    work = 4 * B * H * T
                work += out.nbytes      # grad_out.contiguous() of the transposed gradient
                self.record("sdpa", [q, k, v], [out], work=work)
                return out
            if p == 0:
                # CPU flash kernel. Its output takes q's memory layout: (B, T, H, hd) when q is the
                # transposed view of a Linear output (then .transpose(1, 2).contiguous() copies
                # nothing), (B, H, T, hd) when q is a new contiguous tensor (MiniGPT's rotary cat)
                out = _T(B * T * H * hd, el, grad)
                if grad:
                    for t in (q, k, v, out):
                        self.save(t, "attention q, k, v, out")
                    self.save(_T(B * H * T, 4, False), "attention logsumexp")
                self.record("sdpa", [q, k, v], [out])
                return self.new_like(out) if q_contiguous else out
            # CPU math path (dropout): computed in fp32 even for 16-bit inputs (ATen upcasts on
            # CPU); q, k^T and v copied for bmm, then probabilities, dropout noise, dropped probs
            # (ATen's _scaled_dot_product_attention_math, C++: q * sqrt(s), k * sqrt(s) and the
            # raw scores stay referenced until it returns)
            q4, k4, v4 = self.cast(q, 4), self.cast(k, 4), self.cast(v, 4)
            qs, ks = self.new_like(q4), self.new_like(k4)
            self._keep = [qs, ks]
            o = self._matmuls(qs, ks, v4, 4, 4, 4, p, False, 4, causal, math=True)
            o = self.cast(o, el)
            self._keep = None
            return o
        # eager: written out. Under autocast the matmuls run in 16 bits.
        el = 2 if c.amp else q.el
        probs_el = 4 if (c.cuda and c.amp) else el   # CUDA autocast: softmax in fp32
        if family == "llama":
            probs_el = 4                               # softmax(..., dtype=float32)
        if causal and family == "minigpt" and grad:
            self.save(_T(T * T, 1, False), "attention causal mask")   # ~mask, saved by masked_fill
        pv_el = el if (family == "llama" or c.amp) else probs_el
        qq, kk, vv = (self.cast(q, 2), self.cast(k, 2), self.cast(v, 2)) if c.amp else (q, k, v)
        return self._matmuls(qq, kk, vv, el, probs_el, pv_el, p, family == "llama", q.el, causal)

    def _matmuls(self, q: _T, k: _T, v: _T, el: int, probs_el: int, pv_el: int, p: float,
                 llama: bool, q_el: int, causal: bool, math: bool = False,
                 contiguous_kv: bool = False) -> _T:
        """softmax(q k^T) v with batched matmuls on (B*H, T, hd) copies of q, k^T, v.
        matmul(a, b) saves a if b needs a gradient and b if a does; softmax saves its output;
        dropout its mask (CPU: noise of the probabilities' dtype). ``pv_el``: the probabilities
        as the second matmul reads them (cast back to 16 bits under autocast)."""
        c = self.c
        B, T, H, hd = c.B, c.T, c.spec.n_head, c.spec.head_dim
        s_grad = q.grad or k.grad
        qc = self.new_like(q, el)      # q, k^T reshaped (copied) for bmm
        kc = k if (contiguous_kv and k.el == el) else self.new_like(k, el, numel=q.numel)
        if k.grad:
            self.save(qc, "attention q, k, v copies")
        if q.grad:
            self.save(kc, "attention q, k, v copies")
        scores = _T(B * H * T * T, el, s_grad)
        self.record("bmm", [qc, kc], [scores])
        if math:
            self._keep.append(scores)
        scores = self.new_like(scores)                   # * scale, + mask / masked_fill
        if causal:
            scores = self.new_like(scores)
        probs = _T(B * H * T * T, probs_el, s_grad)
        if s_grad:
            self.save(probs, "attention probabilities")          # softmax output
        self.record("softmax", [scores], [probs])
        if llama:
            probs = self.cast(probs, q_el)          # .to(query.dtype): fp32 q under autocast (rotary)
        pa = self.cast(self.dropout(probs, p), pv_el)
        vc = v if (contiguous_kv and v.el == el) else self.new_like(v, el, numel=q.numel)
        if v.grad:
            self.save(pa, "attention probabilities")             # probabilities read by @ v
        if pa.grad:
            self.save(vc, "attention q, k, v copies")
        o = _T(B * T * H * hd, el, pa.grad or vc.grad)
        self.record("bmm", [pa, vc], [o])
        if math:
            return o
        return self.new_like(o)                                   # transpose(1, 2).contiguous()

    def loss(self, logits: _T, V: int) -> _T:
        """cross_entropy over (rows, V) logits. Autocast runs it in fp32 (CPU: cross_entropy_loss
        is on the fp32 list; CUDA: log_softmax is): log_softmax's fp32 output is saved, and
        nll_loss saves a 0-dim total_weight."""
        el = 4 if self.c.amp else logits.el
        x = self.cast(logits, el)
        lsm = _T(logits.numel, el, logits.grad)
        if logits.grad:
            self.save(lsm, "loss (log-softmax)")
        self.record("log_softmax", [x], [lsm])
        if logits.grad:
            self.save_bytes(el, "loss (log-softmax)")      # nll_loss's total_weight
        loss = _T(1, el, logits.grad)
        self.record("nll_loss", [lsm], [loss])
        return loss


# ------------------------------------------------------------------------ the families
def _block_minigpt(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f, kv = s.d, s.ffn, s.kv_dim
    a, m = f"blocks.{i}.attn.", f"blocks.{i}.mlp."
    ln_w = c.full
    norm = w.layernorm if s.norm == "layernorm" else w.rmsnorm_minigpt
    h = norm(x, ln_w, f"blocks.{i}.ln_1")
    w.arg_anchor(h)                     # the attention's argument, referenced until it returns
    q = w.linear(h, a + "q_proj", d, d)
    k = w.linear(h, a + "k_proj", d, kv)
    v = w.linear(h, a + "v_proj", d, kv)
    if s.positions == 0:  # rotary (apply_rope): new q and k, promoted to the tables' dtype
        r_el = c.wb
        q, k = w.new_like(q, max(q.el, r_el)), w.new_like(k, max(k.el, r_el))
    y = w.attention(q, k, v, True, c.attention, "minigpt", q_contiguous=s.positions == 0)
    y = w.dropout(w.linear(y, a + "o_proj", d, d), c.p_hidden)
    w.anchors.pop()
    x = w.add(x, y)                                           # residual
    w.anchors.append(x)
    h = norm(x, ln_w, f"blocks.{i}.ln_2")
    w.arg_anchor(h)                     # the MLP's argument
    if s.mlp == "swiglu":
        g = w.act(w.linear(h, m + "gate_proj", d, f), "silu")
        u = w.linear(h, m + "up_proj", d, f)
        hid = w.mul(g, u)
    else:
        hid = w.act(w.linear(h, m + "up_proj", d, f), "gelu")
    y = w.dropout(w.linear(hid, m + "down_proj", f, d), c.p_hidden)
    w.anchors.pop()
    out = w.add(x, y)
    w.anchors.pop()
    return out


def _block_bert(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f = s.d, s.ffn
    p = f"{s.family}.encoder.layer.{i}."
    q = w.linear(x, p + "attention.self.query", d, d)
    k = w.linear(x, p + "attention.self.key", d, d)
    v = w.linear(x, p + "attention.self.value", d, d)
    y = w.attention(q, k, v, False, c.attention, "bert")
    y = w.dropout(w.linear(y, p + "attention.output.dense", d, d), c.p_hidden)
    x = w.layernorm(w.add(y, x), c.full, p + "attention.output.LayerNorm")
    w.anchors.append(x)                     # RobertaOutput's input_tensor, for the last add
    hid = w.act(w.linear(x, p + "intermediate.dense", d, f), "gelu")
    w.anchors.append(hid)                   # feed_forward_chunk's intermediate_output
    y = w.dropout(w.linear(hid, p + "output.dense", f, d), c.p_hidden)
    w.anchors.append(y)                     # the local hidden_states until LayerNorm returns
    out = w.layernorm(w.add(y, x), c.full, p + "output.LayerNorm")
    del w.anchors[-3:]
    return out


def _block_llama(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f, kv = s.d, s.ffn, s.kv_dim
    a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    h = w.rmsnorm_hf(x, c.full, f"model.layers.{i}.input_layernorm")
    w.arg_anchor(h)                     # the attention's argument
    q = w.linear(h, a + "q_proj", d, d)
    k = w.linear(h, a + "k_proj", d, kv)
    v = w.linear(h, a + "v_proj", d, kv)
    # apply_rotary_pos_emb: q * cos + rotate_half(q) * sin; the muls save cos and sin (shared,
    # counted once). cos and sin have the residual stream's dtype, so under autocast the rotated
    # q and k are fp32 (type promotion), and attention casts them back to 16 bits.
    r_el = c.wb
    q, k = w.new_like(q, max(q.el, r_el)), w.new_like(k, max(k.el, r_el))
    # (no KV cache: zoo builds LLaMA for training with use_cache=False, as fine-tuning configs do)
    if s.n_kv_head != s.n_head and c.attention == "eager":      # repeat_kv copies
        k, v = w.new_like(k, numel=q.numel), w.new_like(v, numel=q.numel)
    y = w.attention(q, k, v, True, c.attention, "llama")
    y = w.linear(y, a + "o_proj", d, d)
    w.anchors.pop()
    x = w.add(x, y)
    w.anchors.append(x)                     # the residual
    h = w.rmsnorm_hf(x, c.full, f"model.layers.{i}.post_attention_layernorm")
    w.arg_anchor(h)                         # the MLP's argument
    g = w.act(w.linear(h, m + "gate_proj", d, f), "silu")
    u = w.linear(h, m + "up_proj", d, f)
    y = w.linear(w.mul(g, u), m + "down_proj", f, d)
    w.anchors.pop()
    out = w.add(x, y)
    w.anchors.pop()
    return out


@dataclass
class _Forward:
    """The results of the forward walk (bytes)."""
    blocks: list               # activations saved by each block (without checkpointing)
    held: list                 # weight copies each block keeps for backward (autocast casts)
    pre: int                   # activations saved before the first block (embeddings)
    post: int                  # after the last block (final norm, head, loss)
    held_post: int             # weight copies kept by the head
    cache: int                 # autocast cache at the end of forward (casts of trainable weights)
    logits: int                # the model output, alive until backward ends
    loss_transient: int        # the fp32 copy of the logits the loss makes (autocast)
    residual: int              # one (B, T, d) residual-stream tensor
    dequant: int               # NF4 decode transient (largest layer)
    ops: list = field(default_factory=list)
    terms: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    ckpt_inputs: list = field(default_factory=list)   # checkpointing: block inputs kept (bytes)
    cache_block: dict = field(default_factory=dict)   # autocast cache made inside each block
    ckpt_sids: list = field(default_factory=list)     # storage of each checkpointed block's input
    held_keys: dict = field(default_factory=dict)
    cache_keys: dict = field(default_factory=dict)
    fwd_peak: int = 0           # saved + cache + in flight, at the worst op of the forward pass
    kept: int = 0               # held by the model output until backward ends, not saved
    recompute_peak: dict = field(default_factory=dict)

    @property
    def copies_end_forward(self) -> int:
        """Weight copies alive when the forward pass ends: the autocast cache plus the copies of
        frozen weights kept for backward (not cached)."""
        held = {} if self.ckpt_inputs else self.held_keys
        return self.cache + sum(b for k, b in held.items() if k not in self.cache_keys)

    @property
    def activations(self) -> int:
        """Activations at the end of the forward pass."""
        if self.ckpt_inputs:
            return self.pre + sum(self.ckpt_inputs) + self.post
        return self.pre + sum(self.blocks) + self.post

    @property
    def held_total(self) -> int:
        return (0 if self.ckpt_inputs else sum(self.held)) + self.held_post


def _recompute_peaks(trace: dict) -> dict:
    """Per block, the largest total while checkpointing recomputes it. Non-reentrant
    checkpointing stops early: ops after the last one that saves a tensor are not rerun."""
    out = {}
    for blk, steps in trace.items():
        last = max((i for i, (_, saves, _) in enumerate(steps) if saves), default=-1)
        if last < 0:
            out[blk] = 0
            continue
        # the last saving op counts only up to its pack (see _Walk.record)
        out[blk] = max([b for b, _, _ in steps[:last]] + [steps[last][2]])
    return out


def _input_grad_leaf(w: "_Walk", x: _T, full: bool, emb_grad: bool) -> None:
    """enable_input_require_grads() on frozen embeddings: the hook calls requires_grad_() on the
    embedding output, a tensor without history, which makes it a *leaf* that requires grad. The
    graph's AccumulateGrad node references it until backward frees the graph (measured: it is
    alive at the start of backward)."""
    if emb_grad and not full:
        w.kept.append(x)


def forward_walk(ctx: _Ctx) -> _Forward:
    """Walk the model's forward pass once, symbolically, and return what is saved where."""
    s = ctx.spec
    w = _Walk(ctx)
    N, d, V = ctx.N, s.d, s.vocab
    full = ctx.full
    r_el = ctx.wb                     # residual stream dtype: the weights' (fp32 under AMP)
    # transformers' gradient_checkpointing_enable() calls enable_input_require_grads(): the
    # embedding output requires grad even when the embeddings are frozen (LoRA)
    emb_grad = full or (ctx.checkpointing and s.is_hf)
    # ---- embeddings
    if s.family == "minigpt":
        x = w.embedding("wte.weight", N, s.vocab * d, full, emb_grad)
        if s.positions:
            if full:   # the embedding's backward needs its indices (arange positions)
                w.save(_T(ctx.T, 8, False), "embedding indices")
            pos = w.embedding("wpe.weight", ctx.T, s.positions * d, full, False)
            x = w.add(x, pos)
        else:        # rotary tables cos, sin (T, hd/2), saved by apply_rope's muls
            w.save(_T(ctx.T * s.head_dim // 2, r_el, False), "rotary cos/sin")
            w.save(_T(ctx.T * s.head_dim // 2, r_el, False), "rotary cos/sin")
            w.record("rope_tables", [], [_T(0, 0, False)])
        x = w.dropout(x, ctx.p_hidden)
    elif s.family in ("roberta", "bert"):
        e = f"{s.family}.embeddings."
        if full:
            w.save(_T(N, 8, False), "embedding indices")         # position ids (from input ids)
            w.save(_T(N, 8, False), "embedding indices")         # token type ids (buffer, expanded)
        x = w.embedding(e + "word_embeddings.weight", N, s.vocab * d, full, emb_grad)
        _input_grad_leaf(w, x, full, emb_grad)
        x = w.add(x, w.embedding(e + "token_type_embeddings.weight", N, s.type_vocab * d, full, False))
        x = w.add(x, w.embedding(e + "position_embeddings.weight", N, s.positions * d, full, False))
        x = w.layernorm(x, full, e + "LayerNorm")
        x = w.dropout(x, ctx.p_hidden)
    else:
        x = w.embedding("model.embed_tokens.weight", N, s.vocab * d, full, emb_grad)
        _input_grad_leaf(w, x, full, emb_grad)
        hd = s.head_dim
        # rotary cos, sin (1, T, hd) in the activation dtype (computed in no_grad, saved by the muls)
        w.save(_T(ctx.T * hd, r_el, False), "rotary cos/sin")
        w.save(_T(ctx.T * hd, r_el, False), "rotary cos/sin")
        w.record("rope_tables", [], [_T(0, 0, False)])
    if s.is_hf:   # transformers keeps the embedding output in a local variable all along
        w.anchors.append(x)
    pre = w.total()
    block_fn = {"minigpt": _block_minigpt, "roberta": _block_bert, "bert": _block_bert,
                "llama": _block_llama}[s.family]
    blocks, held, ckpt_inputs, ckpt_sids = [], [], [], []
    for i in range(s.n_layer):
        before, before_h = w.total(), sum(w.held.values())
        w.block = i
        if ctx.checkpointing:
            ckpt_inputs.append(x.nbytes)
            ckpt_sids.append(x.sid)
        w.anchors.append(x)                 # the caller holds the block's input
        w.block_start, w.anchor_base, w.block_input = w.total(), len(w.anchors), x.sid
        w.block_input_pre_saved = x.sid in w.saved
        w.block_held = sum(b for k, b in w.held.items() if k not in w.cache)
        x = block_fn(w, x, i)
        w.anchors.pop()
        blocks.append(w.total() - before)
        held.append(sum(w.held.values()) - before_h)
    w.block = -1
    after, after_h = w.total(), sum(w.held.values())
    # ---- head and loss
    loss_transient = 0
    if s.task == "lm":
        if s.family == "minigpt":
            h = (w.layernorm if s.norm == "layernorm" else w.rmsnorm_minigpt)(x, full, "ln_f")
            wkey = "wte.weight" if s.tie else "lm_head.weight"
        else:
            h = w.rmsnorm_hf(x, full, "model.norm")
            wkey = "lm_head.weight"
        logits = w._plain(h, "lm_head", d, V, N, full, wkey=wkey)
        if s.family == "llama":
            # transformers' ForCausalLMLoss: logits.float(), labels padded and shifted by one: the
            # shifted copy (N int64) is saved by nll_loss
            w.loss(w.cast(logits, 4), V)
            if logits.grad:
                w.save(_T(N, 8, False), "loss (log-softmax)")
                w.record("labels", [], [])
            loss_transient = N * V * 4 if logits.el != 4 else 0
        else:
            w.loss(logits, V)
            loss_transient = N * V * 4 if ctx.amp else 0
    else:
        pooled = x.slice(ctx.B * d)   # features[:, 0, :]: a view of the last hidden states
        w.record("slice", [x], [pooled], passthrough=True)
        if s.family == "roberta":
            y = w.dropout(pooled, ctx.p_hidden)
            y = w.act(w.linear(y, "classifier.dense", d, d), "tanh")
            y = w.dropout(y, ctx.p_hidden)
            logits = w.linear(y, "classifier.out_proj", d, s.n_labels)
        else:
            y = w.act(w.linear(pooled, "bert.pooler.dense", d, d), "tanh")
            y = w.dropout(y, ctx.p_hidden)
            logits = w.linear(y, "classifier", d, s.n_labels)
        w.loss(logits, s.n_labels)
    return _Forward(blocks=blocks, held=held, pre=pre, post=w.total() - after,
                    held_post=sum(w.held.values()) - after_h, cache=sum(w.cache.values()),
                    logits=logits.nbytes, loss_transient=loss_transient, residual=N * d * r_el,
                    dequant=w.dequant, ops=w.ops, terms=dict(w.terms), log=w.log,
                    ckpt_inputs=ckpt_inputs, ckpt_sids=ckpt_sids, cache_block=dict(w.cache_block), held_keys=dict(w.held),
                    cache_keys=dict(w.cache), fwd_peak=w.fwd_peak,
                    recompute_peak=_recompute_peaks(w.recompute_trace),
                    kept=sum({t.sid: t.nbytes for t in w.kept
                              if t.sid not in w.saved and t.sid not in ckpt_sids}.values()))


# ====================================================================================
# The step: forward, backward replayed in reverse, optimizer
# ====================================================================================
def batch_bytes(spec: ModelSpec, B: int, T: int) -> int:
    """The batch tensors (int64), alive through the step (the tracker books them as temporaries).
    MiniGPT: idx, targets; LLaMA: input_ids, labels; BERT/RoBERTa: input_ids, attention_mask, labels."""
    if spec.task == "cls":
        return 8 * (2 * B * T + B)
    return 8 * 2 * B * T


class _Live:
    """Bucket totals during the replay, and the largest total seen per phase."""

    def __init__(self, static: dict[str, int]):
        self.b = dict(static)
        self.peaks: dict[str, tuple[int, dict]] = {}
        self.where: dict[str, str] = {}      # the op at each phase's peak (for explanations)
        self.at = "start"

    def total(self) -> int:
        return sum(self.b.values())

    def add(self, bucket: str, n: int) -> None:
        self.b[bucket] += n

    def check(self, phase: str, extra: Optional[dict] = None) -> None:
        b = dict(self.b)
        for k, v in (extra or {}).items():
            b[k] += v
        t = sum(b.values())
        if phase not in self.peaks or t > self.peaks[phase][0]:
            self.peaks[phase] = (t, b)
            self.where[phase] = self.at


def _optimizer_temporaries(states: _States, optimizer: str, precision: str, semantics: str) -> int:
    """Temporaries of optimizer.step().

    torch AdamW, foreach (CUDA's default, torch/optim/adam.py ``_multi_tensor_adam``):
    ``torch._foreach_sqrt(exp_avg_sqs)`` makes one tensor per parameter at once: the size of all
    trainable parameters. For-loop (CPU's default, ``_single_tensor_adam``): ``denom =
    (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`` makes two tensors of one parameter's
    size while the previous parameter's ``denom`` is still referenced. SGD with momentum updates
    in place. bitsandbytes' 8-bit and paged optimizers run one fused kernel per tensor.
    """
    sizes = [n * b for _, n, b in states.trainable]
    if not sizes:
        return 0
    if optimizer == "adamw":
        if precision == "fp16-master":   # fp32 master copies: the update reads fp32 gradients
            return max(4 * n for _, n, _ in states.trainable) * 2
        if semantics == "cuda":
            return sum(sizes)
        best, prev = 0, 0
        for sz in sizes:
            best = max(best, prev + 2 * sz)
            prev = sz
        return best
    if precision == "fp16-master":
        return max(4 * n for _, n, _ in states.trainable)
    return 0


def replay_step(fw: _Forward, ctx: _Ctx, states: _States, optimizer: str, grad_scale: int = 1,
                opt_scale: int = 1, extra_copies: int = 0) -> dict:
    """Peak bucket totals of the forward pass, the backward pass and the optimizer step.

    The backward pass is replayed over the forward's op list in reverse, as autograd runs it:
    each op allocates the gradients of its inputs (and of its parameters, plus any kernel
    workspace), then frees the gradient of its output and the tensors it saved, and only then
    hands the new gradients on. A gradient that reaches a tensor twice (a residual stream, a
    layer's input read by its frozen weight and its LoRA adapter) is summed out of place: the sum
    is a new tensor, briefly beside both parts. A parameter's gradient becomes
    a ``.grad`` (bucket gradients) once all its contributions are summed (the tied LM head and
    embedding contribute twice). Under autocast the 16-bit gradient of a weight is cast to fp32.
    With checkpointing, a block's saved tensors come back (recomputed) when backward reaches it.
    """
    static = empty_buckets()
    static["weights_trainable"] = states.weights_trainable
    static["weights_frozen"] = states.weights_frozen
    static["optimizer"] = states.optimizer
    static["temporaries"] = batch_bytes(ctx.spec, ctx.B, ctx.T)
    static["weight_copies"] = extra_copies      # ZeRO-3 gather buffers
    live = _Live(static)
    ops = fw.ops
    ckpt = ctx.checkpointing

    # ---------------- forward: everything saved, the autocast cache, the logits and the loss copy
    end = dict(static)
    end["activations"] = fw.activations
    end["weight_copies"] = fw.copies_end_forward
    end["temporaries"] += fw.logits + fw.kept
    live.peaks["forward"] = (sum(end.values()), end)
    extra = fw.fwd_peak - (end["activations"] + end["weight_copies"] + fw.logits + fw.kept)
    if ctx.checkpointing:
        extra = 0   # (the blocks' insides are freed as they go; not modelled)
    if extra > 0:
        peak_fwd = dict(end)
        peak_fwd["temporaries"] += extra
        live.peaks["forward"] = (sum(peak_fwd.values()), peak_fwd)

    # ---------------- backward
    # alive at its start: saved tensors (refcounted: a storage can be saved by several ops)
    rc: dict[int, int] = {}
    size: dict[int, tuple[int, str]] = {}
    for op in ops:
        if ckpt and op.block >= 0:
            continue
        for sid, b, bucket in op.saves:
            rc[sid] = rc.get(sid, 0) + 1
            size[sid] = (b, bucket)
    live.b["temporaries"] += fw.logits + fw.kept
    for sid, (b, bucket) in size.items():
        live.add(bucket, b)
    ckpt_alive = {}
    if ckpt:
        for i, b in enumerate(fw.ckpt_inputs):
            ckpt_alive[i] = b
            live.add("activations", b)
    live.check("backward")

    gbuf: dict[int, list] = {}          # id(tensor) -> [bytes, refs] (shared by pass-through)

    def release(buf: list) -> None:
        buf[1] -= 1
        if buf[1] == 0:
            live.add("temporaries", -buf[0])

    def give(x: _T, buf: list) -> None:
        """x receives gradient buffer buf (accumulating into what it has)."""
        old = gbuf.get(id(x))
        if old is None:
            gbuf[id(x)] = buf
            return
        # out-of-place sum: autograd's InputBuffer adds in place only into a plain dense tensor
        # it holds the last reference to, and not into a view: a Linear's input gradient is a
        # view of mm's output (reshaped back to (..., in)), a pass-through gradient is shared,
        # and fake tensors (a tensor subclass) are never added in place. Tracked (fake and CPU):
        # every accumulation in a MiniGPT backward is an add.Tensor, e.g. x@A.T's gradient + the
        # frozen down_proj's: 3 MLP-wide tensors at once with LoRA on the MLP.
        new = [old[0], 1]
        live.add("temporaries", new[0])
        live.check("backward")
        release(old)
        release(buf)
        gbuf[id(x)] = new

    contributions: dict[str, int] = {}
    for op in ops:
        for key, *_ in op.pgrads:
            contributions[key] = contributions.get(key, 0) + 1
    pending: dict[str, int] = {}
    recomputed: set = set()
    current_block = None
    loss_op = [op for op in ops if op.name == "nll_loss"][-1]
    gbuf[id(loss_op.outs[0])] = [4, 1]
    live.add("temporaries", 4)
    for op in reversed(ops):
        if not any(id(o) in gbuf for o in op.outs):
            continue
        if ckpt and op.block != current_block:
            if current_block is not None and current_block >= 0 and current_block in ckpt_alive:
                live.add("activations", -ckpt_alive.pop(current_block))
            current_block = op.block
        if ckpt:
            if op.block >= 0 and op.block not in recomputed and op.unpacks:
                # (triggered by the first saved tensor backward unpacks; ops that saved nothing,
                # e.g. an NF4 layer, run their backward before it)
                recomputed.add(op.block)
                # recomputing the block: its saved tensors, the autocast cache and the tensors
                # in flight at the worst op, then only the saved ones stay for its backward
                live.at = f"recomputing block {op.block}"
                live.check("backward", {"temporaries": fw.recompute_peak.get(op.block, 0)})
                for o2 in ops:
                    if o2.block != op.block:
                        continue
                    for sid, b, bucket in o2.saves:
                        if sid == fw.ckpt_sids[op.block]:
                            continue      # the block's input: the checkpoint kept it already
                        if sid not in rc:
                            live.add(bucket, b)
                            size[sid] = (b, bucket)
                        rc[sid] = rc.get(sid, 0) + 1
        live.at = f"{op.name} (block {op.block})" if op.block >= 0 else op.name
        out_buf = gbuf.get(id(op.outs[0]))
        new_bufs = []
        for x in op.ins:
            if op.passthrough and out_buf is not None and x.el == op.outs[0].el \
                    and x.gbytes == op.outs[0].gbytes:
                out_buf[1] += 1
                new_bufs.append((x, out_buf))
            else:
                buf = [x.gbytes, 1]
                live.add("temporaries", buf[0])
                new_bufs.append((x, buf))
        pg = sum(n * ce for _, n, ce, _ in op.pgrads)
        live.add("temporaries", pg)
        if op.work_before:   # (e.g. an NF4 decode, before the gradients it computes exist)
            fresh = pg + sum(buf[0] for x, buf in new_bufs if buf is not out_buf)
            live.check("backward", {"temporaries": op.work_before - fresh})
        live.check("backward", {"temporaries": op.work})
        # autograd's engine (evaluate_function): the node's incoming gradient goes when
        # call_function returns and its saved tensors with release_variables(), both before
        # the new gradients are added into the next nodes' input buffers
        for o in op.outs:
            buf = gbuf.pop(id(o), None)
            if buf is not None:
                release(buf)
        for sid, b, bucket in op.saves:
            if sid in rc:
                rc[sid] -= 1
                if rc[sid] == 0:
                    live.add(size[sid][1], -size[sid][0])
                    del rc[sid]
        for x, buf in new_bufs:
            give(x, buf)
        for key, n, ce, fe in op.pgrads:
            if ce != fe:   # the 16-bit gradient of an autocast copy, cast to the weight's dtype
                live.add("temporaries", n * fe)
                live.check("backward")
                live.add("temporaries", -n * ce)
            contributions[key] -= 1
            pending[key] = n * fe
            if contributions[key] == 0:   # (ZeRO-2/3: reduce-scattered, each GPU keeps 1/G)
                live.add("temporaries", -n * fe)
                live.add("gradients", _shard(n * fe, grad_scale))
        live.check("backward")
    # the graph is freed: whatever is still saved goes, and the output (logits) is dropped
    for sid in list(rc):
        live.add(size[sid][1], -size[sid][0])
    for b in ckpt_alive.values():
        live.add("activations", -b)
    for buf in {id(b): b for b in gbuf.values()}.values():
        live.add("temporaries", -buf[0] * (buf[1] > 0))
    live.b["temporaries"] = static["temporaries"]
    live.b["weight_copies"] = 0
    live.b["activations"] = 0
    live.b["gradients"] = states.gradients
    live.at = "end of backward"
    live.check("backward")
    live.at = "optimizer.step()"
    # ---------------- optimizer step
    live.check("optimizer", {"temporaries": _shard(_optimizer_temporaries(
        states, optimizer, ctx.precision, ctx.semantics), opt_scale)})
    live.peaks["_where"] = live.where
    return live.peaks


# ====================================================================================
# The public API
# ====================================================================================
LABEL = "estimated (closed form from the shapes; nothing was run or measured)"


@dataclass
class Estimate:
    """A predicted training step. Sizes are integer bytes.

    ``buckets`` is the split at the predicted peak (same keys and meaning as MemoryReport.buckets);
    ``model_state`` the full persistent amounts per GPU (weights, all gradients, optimizer state);
    ``phases`` the largest total of each phase with its split.
    """
    peak: int
    buckets: dict
    peak_phase: str
    phases: dict
    model_state: dict
    activations: int                 # saved for backward at the end of the forward pass
    config: dict
    n_params: int
    n_trainable: int
    paged_bytes: int = 0             # optimizer state in unified memory (paged optimizers)
    host_bytes: int = 0              # optimizer step counters kept on the host
    activation_terms: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    label: str = LABEL

    def to_dict(self) -> dict:
        """The bucket keys as integer bytes, ``peak``, and the echoed configuration."""
        out = {k: int(self.buckets[k]) for k in BUCKETS}
        out.update({
            "peak": int(self.peak), "peak_phase": self.peak_phase,
            "phases": {p: {"peak": int(v["peak"]), "buckets": {k: int(b) for k, b in v["buckets"].items()}}
                       for p, v in self.phases.items()},
            "model_state": {k: int(v) for k, v in self.model_state.items()},
            "activations_end_of_forward": int(self.activations),
            "activation_terms": {k: int(v) for k, v in self.activation_terms.items()},
            "n_params": self.n_params, "n_trainable": self.n_trainable,
            "paged_bytes": int(self.paged_bytes), "host_bytes": int(self.host_bytes),
            "config": dict(self.config), "label": self.label, "notes": list(self.notes),
        })
        return out

    def table(self, unit: str = "auto") -> str:
        """Bucket split at the peak and at each phase's own peak, in MiB or GiB (says which)."""
        if unit == "auto":
            unit = "GiB" if self.peak >= GiB else "MiB"
        div = {"MiB": MiB, "GiB": GiB}.get(unit)
        if div is None:
            raise EstimateError(f"unit must be 'MiB', 'GiB' or 'auto', got {unit!r}.")
        c = self.config
        cols = [p for p in ("forward", "backward", "optimizer") if p in self.phases]
        w = 18
        shard = f"  gpus={c['gpus']} zero={c['zero']}" if c["gpus"] > 1 or c["zero"] else ""
        lines = [self.label,
                 f"model={c['model']}  method={c['method']}" +
                 (f" (r={c['rank']}, targets={c['targets']}{', double-quant' if c['double_quant'] else ''})"
                  if c["method"] != "full" else "") +
                 f"  precision={c['precision']}  optimizer={c['optimizer']}",
                 f"batch={c['batch']}  seq={c['seq']}  attention={c['attention']}  dropout={c['dropout']}  "
                 f"checkpointing={c['checkpointing']}  semantics={c['semantics']}{shard}",
                 f"params={self.n_params:,} (trainable {self.n_trainable:,})",
                 f"units: {unit} (1 {unit} = 2**{20 if unit == 'MiB' else 30} bytes)",
                 f"{'bucket':<{w}}{'at peak':>12}" + "".join(f"{p + ' pk':>14}" for p in cols)]
        for k in BUCKETS:
            lines.append(f"{k:<{w}}{self.buckets[k] / div:>12.2f}" +
                         "".join(f"{self.phases[p]['buckets'][k] / div:>14.2f}" for p in cols))
        lines.append(f"{'total':<{w}}{self.peak / div:>12.2f}" +
                     "".join(f"{self.phases[p]['peak'] / div:>14.2f}" for p in cols))
        lines.append(f"peak {fmt_bytes(self.peak, unit)} = {self.peak:,} bytes, during {self.peak_phase}")
        ms = self.model_state
        lines.append("model state per GPU: " + ", ".join(f"{k} {fmt_bytes(ms[k], unit)}" for k in MODEL_STATE_BUCKETS))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EstimateError(f"{name} must be a positive integer, got {v!r}.")
    return v


def _max_seq(spec: ModelSpec) -> Optional[int]:
    if spec.family == "minigpt":
        return spec.config.block_size
    if spec.family == "roberta":
        return spec.positions - 2        # positions start after the padding index (1)
    if spec.family == "bert":
        return spec.positions
    return None                           # rotary: no table to run out of


def _shard(n: int, g: int) -> int:
    return -(-n // g)


def estimate(model: Union[str, Any] = "small", method: str = "full", rank: int = 8, alpha: float = 16.0,
             targets: Union[str, Sequence[str]] = "q,v", double_quant: bool = False,
             precision: str = "fp32", optimizer: str = "adamw", attention: str = "sdpa",
             dropout: Optional[float] = None, batch: int = 1, seq: int = 128,
             checkpointing: bool = False, semantics: str = "cuda", gpus: int = 1, zero: int = 0,
             head_trainable: bool = True, **overrides) -> Estimate:
    """Predict the peak memory of one training step, bucket by bucket, from shapes alone.

    Args:
        model: a name of minigpt.memory.zoo (tiny, small, minigpt-85m, roberta-base, bert-large,
            llama-7b/13b/70b, minigpt:<preset>), a GPTConfig or a transformers Roberta/Bert/Llama
            config. ``overrides`` change config fields (e.g. n_layer=2, num_hidden_layers=2).
        method: "full", "lora" or "qlora" (NF4 base, minigpt.nf4 = bitsandbytes' format).
        rank, alpha, targets: LoRA rank, scale (bytes do not depend on it) and target layers,
            "all-linear" or names; the shorthand q, k, v, o is resolved per architecture.
            Sequence-classification heads are trained in full (peft's task_type="SEQ_CLS").
        double_quant: QLoRA double quantisation of the NF4 scales.
        precision: "fp32", "amp-fp16", "amp-bf16" (torch.autocast, fp32 weights), "bf16", "fp16"
            (pure: weights, gradients, optimizer state in 16 bits) or "fp16-master" (16-bit
            weights and gradients, fp32 master weights in the optimizer).
        optimizer: "adamw", "sgd" (momentum), "adamw-8bit", "paged-adamw", "paged-adamw-8bit".
        attention: "sdpa" (fused kernel) or "eager" (materialises the T x T scores).
        dropout: probability for every dropout of the model; None keeps the model's default
            (MiniGPT 0, BERT/RoBERTa 0.1, LLaMA 0).
        batch, seq: batch size and sequence length (per GPU).
        checkpointing: gradient checkpointing of every block.
        semantics: "cuda" (what CUDA kernels hold: bool dropout masks, flash attention, CUDA's
            autocast lists, foreach optimizers, step counters on the host) or "cpu".
        gpus, zero: data-parallel GPUs and ZeRO stage (0 none; 1 optimizer state, 2 + gradients,
            3 + weights sharded; FSDP FULL_SHARD = 3).
    """
    _choice("method", method, METHODS)
    _choice("precision", precision, PRECISIONS)
    _choice("optimizer", optimizer, OPTIMIZERS)
    _choice("attention", attention, ATTENTIONS)
    _choice("semantics", semantics, SEMANTICS)
    _choice("zero", zero, ZERO_STAGES)
    batch, seq, gpus = _positive_int("batch", batch), _positive_int("seq", seq), _positive_int("gpus", gpus)
    if method != "full":
        _positive_int("rank", rank)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise EstimateError(f"alpha must be a positive number (LoRA scale = alpha / rank), got {alpha!r}.")
    if double_quant and method != "qlora":
        raise EstimateError("double_quant applies to method='qlora' only; drop it or use method='qlora'.")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= dropout < 1.0):
        raise EstimateError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
    if zero and gpus == 1:
        pass   # allowed: ZeRO over one GPU divides by 1
    # the model, with its attention kernel and dropout
    name = model if isinstance(model, str) else getattr(model, "model_type", None) or type(model).__name__
    if isinstance(model, str):
        from . import zoo
        fam = None
        try:
            fam, key = zoo._resolve(model)
        except ValueError:
            raise EstimateError(f"Unknown model {model!r}; use one of: {', '.join(zoo.names())}.") from None
        ov = dict(overrides)
        if dropout is not None:
            if fam == "minigpt":
                ov["dropout"] = float(dropout)
            elif zoo.HF_CONFIGS[key]["kind"] == "llama":
                ov["attention_dropout"] = float(dropout)
            else:
                ov["hidden_dropout_prob"] = ov["attention_probs_dropout_prob"] = float(dropout)
        if fam == "minigpt":
            ov["attention"] = attention
        spec = resolve_model(model, **ov)
    else:
        if overrides:
            raise EstimateError("config overrides only work with a model name; change the config object instead.")
        spec = resolve_model(model)
        if dropout is not None:
            spec = ModelSpec(**{**asdict_shallow(spec), "hidden_dropout": 0.0 if spec.family == "llama" else float(dropout),
                                "attn_dropout": float(dropout)})
    limit = _max_seq(spec)
    if limit is not None and seq > limit:
        raise EstimateError(f"seq={seq} is longer than {spec.name}'s {limit} positions; use seq <= {limit}.")
    tg = resolve_targets(spec, targets) if method != "full" else ()
    states = model_states(spec, method, precision, optimizer, rank, tg, double_quant, semantics, head_trainable)
    shapes = {n: (i, o) for n, i, o, _ in linear_layers(spec)}
    for n in states.adapted:
        fin, fout = shapes[n]
        if rank > min(fin, fout):
            raise EstimateError(f"rank={rank} is too large for layer {n!r} ({fin} -> {fout}); use rank <= {min(fin, fout)}.")
    ctx = _Ctx(spec, batch, seq, precision, semantics, attention, spec.hidden_dropout, spec.attn_dropout,
               method, rank, frozenset(states.adapted), frozenset(n for n, _, _ in states.nf4_linear),
               states.head_modules, checkpointing)
    fw = forward_walk(ctx)

    # sharding (ZeRO): divide the model states each GPU keeps
    notes: list[str] = []
    grad_scale = 1
    if zero >= 1:
        states.optimizer = _shard(states.optimizer, gpus)
    if zero >= 2:
        grad_scale = gpus
        states.gradients = _shard(states.gradients, gpus)
    gather = 0
    if zero >= 3:
        states.weights_trainable = _shard(states.weights_trainable, gpus)
        states.weights_frozen = _shard(states.weights_frozen, gpus)
        block_w = sum(t.numel for t in parameter_inventory(spec) if ".0." in t.name and not t.kind.startswith("buffer"))
        gather = 2 * block_w * _param_bytes(precision)
        notes.append("ZeRO-3 gathers one block's weights at a time, two with prefetch: "
                     f"{fmt_bytes(gather)} in weight_copies.")
    peaks = replay_step(fw, ctx, states, optimizer, grad_scale=grad_scale, opt_scale=gpus if zero >= 1 else 1,
                        extra_copies=gather)
    where = peaks.pop("_where", {})
    phase = max(peaks, key=lambda p: peaks[p][0])
    peak, split = peaks[phase]
    if optimizer.startswith("paged"):
        notes.append(f"paged optimizer: {fmt_bytes(states.paged)} of state (tensors >= 100,000 elements) live "
                     "in CUDA unified memory and page out to host RAM under pressure; counted as 0 GPU bytes "
                     "at the peak (an upper bound adds them back).")
    if states.host and semantics == "cuda":
        notes.append(f"AdamW step counters ({states.host} B) live on the host (non-capturable AdamW).")
    if precision == "fp16-master":
        notes.append("fp16-master: fp16 weights and gradients, fp32 master weights counted in optimizer "
                     "(the ZeRO paper's K = 12 bytes per parameter for Adam).")
    if precision.startswith("amp") and method == "full":
        notes.append("autocast keeps a 16-bit copy of every Linear weight through the step (weight_copies): "
                     "16 persistent bytes per parameter + 2 at the peak.")
    if where.get(phase):
        notes.append(f"peak at: {phase}, {where[phase]}.")
    config = dict(model=name, method=method, rank=rank if method != "full" else None,
                  alpha=alpha if method != "full" else None,
                  targets=(tg if isinstance(tg, str) else ",".join(tg)) if method != "full" else None,
                  double_quant=bool(double_quant), precision=precision, optimizer=optimizer,
                  attention=attention, dropout=spec.attn_dropout if dropout is None else float(dropout),
                  batch=batch, seq=seq, checkpointing=bool(checkpointing), semantics=semantics,
                  gpus=gpus, zero=zero)
    model_state = {"weights_trainable": states.weights_trainable, "weights_frozen": states.weights_frozen,
                   "gradients": states.gradients, "optimizer": states.optimizer}
    return Estimate(peak=peak, buckets=split, peak_phase=phase,
                    phases={p: {"peak": v[0], "buckets": v[1]} for p, v in peaks.items()},
                    model_state=model_state, activations=fw.activations, config=config,
                    n_params=states.n_params, n_trainable=states.n_trainable, paged_bytes=states.paged,
                    host_bytes=states.host, activation_terms=dict(fw.terms), notes=notes)


def asdict_shallow(spec: ModelSpec) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def korthikanti_bytes(s: int, b: int, h: int, a: int, layers: int = 1) -> int:
    """Korthikanti et al. 2022, eq. 1: activation bytes of ``layers`` GPT blocks in 16-bit with
    dropout and non-fused attention, s*b*h*(34 + 5*a*s/h) per block."""
    return layers * (34 * s * b * h + 5 * a * s * s * b)
