"""LoRA from scratch (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear layer W (out x in) gets a trainable low-rank update:

    y = W x + (alpha / r) * B A x        A: (r, in), B: (out, r), r << min(in, out)

Only A and B are trained, so a layer costs r * (in + out) trainable parameters instead of
in * out. B starts at zero, so step 0 is exactly the base model.

The public API, checked against ``peft`` 0.21.2 in tests/core/test_lora.py (same outputs, same
gradients, same trainable-parameter counts, same merged weights):

    LoRALinear(base, r, alpha, dropout=0.0, adapter_dtype=torch.float32)
    apply_lora(model, r, alpha, dropout=0.0, targets=("q_proj", "v_proj"), trainable=())
    merge_lora(model) / unmerge_lora(model) / lora_layers(model)
    lora_parameter_count(spec, r, targets=..., trainable=())   closed form, no model built
    trainable_parameters(model) -> (trainable, total)

How targets are chosen (peft's rule for a list of names): a layer is adapted when its qualified
name equals a target or ends with "." + target. ``targets="all-linear"`` adapts every linear
layer except the output layer, as peft 0.21.2 does (``_maybe_include_all_linear_layers``):

* peft drops ``model.get_output_embeddings()`` (the LM head of a transformers model). It cannot
  see the head of a plain ``nn.Module`` such as MiniGPT, so it would adapt MiniGPT's ``lm_head``
  (which is the token-embedding matrix, tied). We also drop any linear named ``lm_head`` and any
  linear whose weight *is* an ``nn.Embedding`` weight (a tied head).
* Linear layers inside a module listed in ``trainable`` (peft's ``modules_to_save``) are trained
  in full and never wrapped, for explicit targets and "all-linear" alike (peft does the same).
* Nothing else is dropped. ``RobertaForSequenceClassification`` has no output embeddings, so its
  head's two linears (``classifier.dense``, ``classifier.out_proj``) ARE adapted by
  "all-linear" unless ``trainable=("classifier",)`` (peft: ``modules_to_save=["classifier"]``
  or ``task_type="SEQ_CLS"``, which adds it) makes the head fully trainable instead.

Differences from peft, on purpose: targets are names only (no regex string); a target that
matches no layer is an error (peft only errors when *no* target matches); a layer is any
``nn.Linear`` or any leaf module with integer ``in_features``/``out_features`` (so QLoRA is
``LoRALinear`` around ``minigpt.nf4.NF4Linear``); HF GPT-2's ``Conv1D`` is not supported.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import OUTPUT_LAYER, linear_layers  # noqa: E402

ALL_LINEAR = "all-linear"
Targets = Union[str, Sequence[str]]


# ------------------------------------------------------------------------------ validation
def _check_r_alpha(r, alpha, dropout: float = 0.0) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a positive number (scaling = alpha / r), got {alpha!r}.")
    if not math.isfinite(alpha):   # inf passes `alpha > 0`, then trains to NaN without a word
        raise ValueError(f"LoRA alpha must be finite (scaling = alpha / r), got {alpha!r}; use a value such as 2 * r.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}.")


def _check_adapter_dtype(adapter_dtype) -> None:
    # A and B are trained, and autograd only trains floating-point tensors
    if adapter_dtype is not None and not (isinstance(adapter_dtype, torch.dtype)
                                          and adapter_dtype.is_floating_point):
        raise ValueError(f"adapter_dtype must be a floating-point dtype (torch.float32, torch.bfloat16, "
                         f"torch.float16) or None for the base layer's dtype, got {adapter_dtype!r}.")


def _check_rank_fits(r: int, in_features: int, out_features: int, name: str) -> None:
    if r > min(in_features, out_features):
        raise ValueError(f"r={r} is too large for layer {name!r}, which maps {in_features} -> "
                         f"{out_features} features; use r <= {min(in_features, out_features)}, or keep that "
                         f"layer out of the adapters (name targets explicitly, or list its module in trainable).")


# ------------------------------------------------------------------------------ the layer
class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``base(x) + s * B A x``.

    ``base`` is an ``nn.Linear`` or any module with ``in_features``, ``out_features`` and a
    forward (e.g. an NF4-quantised linear for QLoRA). Its parameters are frozen here.

    Initialisation follows loralib and peft: ``A`` is Kaiming-uniform with a=sqrt(5) (the
    default init of ``nn.Linear``, i.e. U(-1/sqrt(in), 1/sqrt(in))) and ``B`` is zero. The LoRA
    paper (Hu et al. 2021, section 4.1) describes A as random *Gaussian*; peft offers that as
    ``init_lora_weights="gaussian"`` but defaults to Kaiming-uniform, and so do we. Either way
    B = 0 makes the adapter a no-op at step 0.

    Adapter dtype: ``A`` and ``B`` are created on the base's device in ``adapter_dtype``
    (fp32 by default; ``None`` means the base's own floating dtype). This mirrors peft 0.21.2:
    ``get_peft_model(..., autocast_adapter_dtype=True)`` (the default) first creates the adapter
    in the base layer's dtype, then ``cast_adapter_dtype`` upcasts fp16/bf16 (and fp8) adapters
    to fp32 -- so an fp16 model gets fp32 adapters. ``autocast_adapter_dtype=False`` keeps them
    fp16, which is ``adapter_dtype=None`` here. A quantised base (integer weight storage) gets
    fp32 adapters in both.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 adapter_dtype: Optional[torch.dtype] = torch.float32, name: str = "base"):
        super().__init__()
        _check_r_alpha(r, alpha, dropout)
        _check_adapter_dtype(adapter_dtype)
        fin, fout = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if not (isinstance(fin, int) and isinstance(fout, int)):
            raise TypeError(f"LoRALinear needs a base layer with integer in_features and out_features; "
                            f"{name!r} is a {type(base).__name__} without them.")
        _check_rank_fits(r, fin, fout, name)

        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = fin, fout
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        tensors = list(base.parameters()) + list(base.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
        if adapter_dtype is None:     # peft: follow the base weight's dtype if it is a float
            w = getattr(base, "weight", None)
            float_w = isinstance(w, torch.Tensor) and w.is_floating_point()
            adapter_dtype = w.dtype if float_w else torch.float32
        self.A = nn.Parameter(torch.empty(r, fin, device=device, dtype=adapter_dtype))   # (r, in)
        self.B = nn.Parameter(torch.zeros(fout, r, device=device, dtype=adapter_dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    # transformers code sometimes reads layer.weight / layer.bias (peft forwards them too)
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return getattr(self.base, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:           # W already holds W + s * B A
            return result
        result_dtype = result.dtype
        # Mirror peft's lora.Linear.forward: run the adapter in A's dtype, add, cast back.
        # The extra copies this makes (the fp16-LoRA memory puzzle; tests check the first one):
        # * x.to(fp32) of an fp16/bf16 x is a NEW tensor of twice x's bytes, and autograd keeps
        #   it until backward because A's gradient needs it. Every adapted layer makes its own,
        #   even q and v that read the same x, which a plain linear would have saved once (or
        #   not at all when its weight is frozen). Under torch.autocast that fp32 copy is cast
        #   back to a fresh fp16 copy for the matmul, and that copy is what is kept: still one
        #   extra copy of x per adapted layer.
        # * dropout (p > 0) writes one more x-sized tensor and keeps it for backward.
        # * result + delta promotes the fp16 base output to fp32, .to() casts it back: two
        #   short-lived output-sized tensors. In fp32 training x.to() returns x itself: no copy.
        if x.dtype != self.A.dtype:
            x = x.to(self.A.dtype)
        # F.linear(F.linear(x, A), B) == x @ A.T @ B.T; (..., in) -> (..., r) -> (..., out)
        result = result + F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling
        return result.to(result_dtype)

    # -------------------------------------------------------------------------- merging
    def delta_weight(self) -> torch.Tensor:
        """s * B @ A, shape (out, in): the update that merge() adds to W (computed as peft does)."""
        A, B = self.A, self.B
        if A.device.type == "cpu" and A.dtype in (torch.float16, torch.bfloat16):
            # peft: half matmuls are slow on CPU, so multiply in fp32 and round once at the end
            return ((B.float() @ A.float()) * self.scaling).to(A.dtype)
        return (B @ A) * self.scaling

    def _merge_check(self, want_merged: bool) -> None:
        if not isinstance(self.base, nn.Linear):
            raise TypeError(f"merge()/unmerge() need an nn.Linear base; this base is a "
                            f"{type(self.base).__name__}, so keep the adapter separate (or dequantise "
                            f"the base into an nn.Linear first).")
        if self.merged != want_merged:
            raise RuntimeError("This LoRA layer is already merged; call unmerge() first." if self.merged
                               else "This LoRA layer is not merged; call merge() first.")

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s * B A, so inference costs one matmul. Gradients stop reaching A and B."""
        self._merge_check(want_merged=False)
        w = self.base.weight
        w += self.delta_weight()    # as peft: an fp16 W adds an fp32 delta in fp32, rounds once
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s * B A. Not bit-exact: (w + d) - d rounds twice, so W comes back within
        fp32 rounding (a few ulp of |W| + |d|), exactly as peft's unmerge does. We keep no copy
        of W to restore from, because that copy would cost as much memory as the layer."""
        self._merge_check(want_merged=True)
        w = self.base.weight
        w -= self.delta_weight().to(w.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling:g}, adapter_dtype={self.A.dtype}, "
                f"merged={self.merged}")


# ------------------------------------------------------------------------- choosing layers
def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a leaf module that declares integer in_features/out_features (NF4Linear)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(getattr(module, "in_features", None), int)
            and isinstance(getattr(module, "out_features", None), int)
            and next(module.children(), None) is None)


def _matches(name: str, key: str) -> bool:
    """peft's rule for a list of names: equal, or ends with '.' + key."""
    return name == key or name.endswith("." + key)


def _inside(name: str, keys: Sequence[str]) -> bool:
    """True if the module `name` or one of its parents matches a key (e.g. 'classifier')."""
    parts = name.split(".")
    prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return any(_matches(p, k) for p in prefixes for k in keys)


def _as_tuple(keys: Union[str, Sequence[str]], what: str) -> tuple[str, ...]:
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if not all(isinstance(k, str) and k for k in keys):
        raise TypeError(f"{what} must be a name or a sequence of names, got {keys!r}.")
    return keys


def _short_names(names: Iterable[str], limit: int = 20) -> str:
    """'q_proj, k_proj, ...': the distinct last parts of qualified names, in order of appearance."""
    seen = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    more = f", ... ({len(seen) - limit} more)" if len(seen) > limit else ""
    return ", ".join(seen[:limit]) + more if seen else "(none)"


def select_targets(linears: Sequence[tuple[str, int, int]], targets: Targets,
                   trainable: Sequence[str] = (), output_layers: Iterable[str] = ()) -> list[str]:
    """Names of the linear layers that get an adapter.

    ``linears`` is (qualified name, in_features, out_features) for every linear layer;
    ``output_layers`` are the names "all-linear" leaves out. Shared by apply_lora (names read
    from a model) and lora_parameter_count (names derived from a config).
    """
    trainable = _as_tuple(trainable, "trainable")
    names = [n for n, _, _ in linears]
    candidates = [n for n in names if not _inside(n, trainable)]
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        out = set(output_layers)
        chosen = [n for n in candidates if n not in out]
        if not chosen:
            raise ValueError("targets='all-linear' found no linear layer to adapt outside the output "
                             "layer and the trainable modules.")
        return chosen
    keys = _as_tuple(targets, "targets")
    if not keys:     # an empty list would adapt nothing, and training would then change nothing
        raise ValueError(f"targets is empty, so no layer would get an adapter; name layers such as "
                         f"('q_proj', 'v_proj') or use targets='all-linear' (the model's linear layers are "
                         f"named: {_short_names(names)}).")
    for key in keys:
        if not any(_matches(n, key) for n in candidates):
            if any(_matches(n, key) for n in names):
                raise ValueError(f"Target {key!r} only matches layers inside trainable={trainable}, "
                                 f"which are trained in full; drop it from targets or from trainable.")
            raise ValueError(f"Target {key!r} matches no linear layer; the model's linear layers are "
                             f"named (last part): {_short_names(names)}.")
    return [n for n in candidates if any(_matches(n, k) for k in keys)]


def _output_layer_names(model: nn.Module) -> set[str]:
    """The layers 'all-linear' leaves out: the LM head (see the module docstring)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = None
    if callable(getattr(model, "get_output_embeddings", None)):
        head = model.get_output_embeddings()
    out = set()
    for name, m in model.named_modules():
        if not _is_linear(m):
            continue
        tied = id(getattr(m, "weight", None)) in embeddings
        if m is head or tied or name.rsplit(".", 1)[-1] == "lm_head":
            out.add(name)
    return out


# --------------------------------------------------------------------------- whole models
def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0,
               targets: Targets = ("q_proj", "v_proj"), trainable: Sequence[str] = (),
               adapter_dtype: Optional[torch.dtype] = torch.float32) -> nn.Module:
    """Wrap the target linear layers of ``model`` in LoRALinear, in place, and return it.

    Every parameter is frozen except A and B of each adapter and the parameters of the modules
    named in ``trainable`` (peft's ``modules_to_save``: names matched by the same rule as
    targets, e.g. ``("classifier",)``). See the module docstring for how targets are matched.
    Nothing is changed when an argument is wrong.
    """
    _check_r_alpha(r, alpha, dropout)
    _check_adapter_dtype(adapter_dtype)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("This model already has LoRA layers; apply_lora to a fresh copy of the base model.")
    trainable = _as_tuple(trainable, "trainable")
    modules = dict(model.named_modules())
    for key in trainable:
        if not any(_matches(n, key) for n in modules if n):
            top = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"trainable module {key!r} is not in the model; its top-level modules are: {top}.")

    linears = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if _is_linear(m)]
    chosen = select_targets(linears, targets, trainable, _output_layer_names(model))
    shapes = {n: (i, o) for n, i, o in linears}
    for name in chosen:                            # check every layer before changing any
        _check_rank_fits(r, *shapes[name], name)

    # Build every adapter before swapping any in; LoRALinear freezes its base, so if one fails
    # (out of memory, a base on the meta device) the flags are put back and the model is as it was.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        wrappers = [LoRALinear(modules[name], r, alpha, dropout, adapter_dtype, name=name) for name in chosen]
    except BaseException:
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    train_only(model, trainable)          # the adapters, not attached yet, keep training
    for name, wrapper in zip(chosen, wrappers):
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, wrapper)
    return model


def train_only(model: nn.Module, modules: Sequence[str]) -> nn.Module:
    """Freeze ``model`` but the modules named ``modules`` (peft's rule: equal, or ending in '.' + name).
    A head-only run (a linear probe) is ``train_only(model, ("classifier",))``."""
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if any(_matches(name, k) for k in modules):
            module.requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{qualified name: LoRALinear} for every adapter in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight (see LoRALinear.merge)."""
    for m in lora_layers(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora (to fp32 rounding, see LoRALinear.unmerge)."""
    for m in lora_layers(model).values():
        m.unmerge()
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each tensor counted once (a tied head is one tensor).

    peft's ``get_nb_trainable_parameters`` gives the same trainable count; its total is larger by
    the size of the ``modules_to_save`` modules, because peft trains a *copy* of them and keeps
    the original too. Quantised weights kept in buffers (not parameters) are not counted here.
    """
    trainable = total = 0
    for p in model.parameters():           # parameters() yields a shared tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# ------------------------------------------------------------------------------ closed form
def _gpt_linears(cfg) -> tuple[list[tuple[str, int, int]], set[str]]:
    """MiniGPT's linear layers (names as in minigpt.model.GPT) and its output layer."""
    layers = linear_layers("minigpt", n_layer=cfg.n_layer, d=cfg.n_embd, ffn=cfg.hidden,
                           kv_dim=cfg.kv_heads * cfg.head_dim, vocab=cfg.vocab_size, swiglu=cfg.mlp == "swiglu")
    return [(n, i, o) for n, i, o, _ in layers], {OUTPUT_LAYER}


def _hf_linears(cfg) -> tuple[list[tuple[str, int, int]], set[str]]:
    """Linear layers of RobertaForSequenceClassification, BertForSequenceClassification or
    LlamaForCausalLM built from ``cfg`` (names as transformers 5.23 registers them)."""
    kind = getattr(cfg, "model_type", None)
    if kind not in ("roberta", "bert", "llama"):
        raise ValueError(f"lora_parameter_count knows GPTConfig and transformers configs of type roberta, "
                         f"bert and llama, not {kind or type(cfg).__name__!r}; pass a list of (in, out) "
                         f"shapes instead.")
    d = cfg.hidden_size
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    hd = getattr(cfg, "head_dim", None) or d // H
    layers = linear_layers(kind, n_layer=cfg.num_hidden_layers, d=d, ffn=cfg.intermediate_size, kv_dim=Hkv * hd,
                           q_dim=H * hd, vocab=getattr(cfg, "vocab_size", 0), n_labels=getattr(cfg, "num_labels", 2))
    # a classifier has no output embeddings: peft drops nothing
    return [(n, i, o) for n, i, o, _ in layers], ({OUTPUT_LAYER} if kind == "llama" else set())


def lora_linear_shapes(spec) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every linear layer of the model ``spec`` describes:
    a GPTConfig (MiniGPT's GPT), or a transformers Roberta/Bert config (the
    ForSequenceClassification model) or Llama config (LlamaForCausalLM). No model is built."""
    from .model import GPTConfig
    return (_gpt_linears(spec) if isinstance(spec, GPTConfig) else _hf_linears(spec))[0]


def lora_parameter_count(spec, r: int, targets: Targets = ("q_proj", "v_proj"),
                         trainable: Sequence[str] = ()) -> int:
    """Trainable LoRA parameters (A and B only), in closed form:

        N_lora = sum over adapted layers of r * (in + out)
               = n_layer * r * sum over targets t of (in_t + out_t)   (targets inside blocks)

    ``spec`` is a list of (in, out) shapes (``targets``/``trainable`` are then ignored), a
    GPTConfig, or a transformers RobertaConfig / BertConfig / LlamaConfig (see lora_linear_shapes).
    Targets and "all-linear" are resolved exactly as apply_lora resolves them.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
    if isinstance(spec, (list, tuple)):
        total = 0
        for k, shape in enumerate(spec):
            fin, fout = shape
            _check_rank_fits(r, fin, fout, f"shape #{k}")
            total += r * (fin + fout)
        return total
    from .model import GPTConfig
    linears, outputs = _gpt_linears(spec) if isinstance(spec, GPTConfig) else _hf_linears(spec)
    shapes = {n: (i, o) for n, i, o in linears}
    total = 0
    for name in select_targets(linears, targets, trainable, outputs):
        _check_rank_fits(r, *shapes[name], name)
        total += r * sum(shapes[name])
    return total


__all__ = ["LoRALinear", "apply_lora", "train_only", "lora_layers", "merge_lora", "unmerge_lora", "trainable_parameters",
           "lora_parameter_count", "lora_linear_shapes", "select_targets", "n_lora_table", "ALL_LINEAR"]


# --------------------------------------------------------------------- the course's table
def n_lora_table(ranks: Sequence[int] = (8, 16)) -> list[dict]:
    """N_lora (closed form) for the models the theory files quote, one row per (model, r):
    MiniGPT-85M (q_proj, v_proj), RoBERTa-base as an SST-2 classifier (query, value; head
    trainable, as peft's task_type="SEQ_CLS") and LLaMA-7B (q_proj, v_proj). Print it with
    ``python -m minigpt.lora``."""
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import RobertaConfig
    from .model import preset_config
    models = [("MiniGPT-85M", preset_config("minigpt-85m"), ("q_proj", "v_proj"), ()),
              ("RoBERTa-base", RobertaConfig(), ("query", "value"), ("classifier",)),
              ("LLaMA-7B", preset_config("llama-7b"), ("q_proj", "v_proj"), ())]
    return [{"model": name, "r": r, "qv": lora_parameter_count(spec, r, qv, trainable),
             "all_linear": lora_parameter_count(spec, r, ALL_LINEAR, trainable)}
            for name, spec, qv, trainable in models for r in ranks]


if __name__ == "__main__":
    print(f"{'model':14s} {'r':>3s} {'N_lora q,v':>14s} {'N_lora all-linear':>18s}")
    for row in n_lora_table():
        print(f"{row['model']:14s} {row['r']:>3d} {row['qv']:>14,} {row['all_linear']:>18,}")
