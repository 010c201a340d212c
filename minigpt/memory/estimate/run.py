"""RunSpec: one training run as the estimator, the tracker and the command line all take it.

    run = RunSpec(model="llama-7b", method="qlora", rank=16, targets="all-linear", precision="amp-bf16",
                  batch=2, micro_batch=1, seq=2048)
    estimate(run); measure(run, mode="fake"); compare(run)     # the same spec, one model of the run
    run.replace(seq=4096)                                      # a what-if: a new, validated spec
    json.dumps(run.to_dict()); RunSpec.from_dict(d) == run     # what ``--json`` prints and ``--spec`` reads

Every argument is checked here, once (``__post_init__``): a bad value raises EstimateError with one
sentence naming the argument and what it may be. Checks that need the model (sequence beyond its
positions, a rank larger than a layer, targets that match no layer) are the estimator's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from .sharding import check_sharding
from .spec import (ADAPTER_METHODS, ATTENTIONS, METHODS, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, SEMANTICS, ZERO_STAGES,
                   EstimateError, _choice)

# adapter dtypes (adapter_dtype): None keeps the default, fp32 adapters that a pure 16-bit model casts
# with itself; "fp32" with precision bf16/fp16 keeps them fp32 (peft's autocast_adapter_dtype=True)
ADAPTER_DTYPES = ("fp32", "bf16", "fp16")
ADAPTER_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# the cross-entropy's dtype (loss_dtype): None keeps the family's own loss (transformers' causal LMs
# upcast the logits, logits.float(); minigpt's runs in the logits' dtype); "fp32" upcasts, "compute"
# feeds the logits as they are (under autocast the kernel policy still runs it in fp32)
LOSS_DTYPES = ("fp32", "compute")
INT64_LIMIT = 2 ** 63      # torch sizes tensors in int64: no step can hold this many bytes

# the positional order of estimate()'s arguments before RunSpec (old calls keep working)
ESTIMATE_ORDER = ("model", "method", "rank", "alpha", "targets", "double_quant", "precision", "optimizer",
                  "attention", "dropout", "batch", "seq", "checkpointing", "semantics", "gpus", "zero",
                  "head_trainable", "sharding", "rank_index", "lora_dropout", "gpu", "micro_batch", "set_to_none",
                  "optimizer_impl")


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EstimateError(f"{name} must be a positive integer, got {v!r}.")
    return v


def _probability(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise EstimateError(f"{name} must be a probability in [0, 1), got {v!r}.")


def accumulation_steps(batch: int, micro_batch: Optional[int]) -> tuple[int, int]:
    """(rows per forward, micro-batches per optimizer step) for ``batch`` split into ``micro_batch``."""
    if micro_batch is None:
        return batch, 1
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or not 1 <= micro_batch <= batch \
            or batch % micro_batch:
        raise EstimateError(f"micro_batch must be a positive divisor of batch={batch} (the rows of one forward), "
                            f"got {micro_batch!r}.")
    return micro_batch, batch // micro_batch


def card_of(gpu: Any, precision: str):
    """The GpuSpec of ``gpu`` (None stays None); bf16 on a card without it is one clear error."""
    if gpu is None:
        return None
    from ..gpus import GpuSpec
    from ..gpus import gpu as by_name
    try:
        card = gpu if isinstance(gpu, GpuSpec) else by_name(str(gpu))
    except ValueError as e:
        raise EstimateError(str(e)) from None
    if "bf16" in precision and not card.bf16:
        raise EstimateError(f"the {card.aliases[0].upper()} ({card.sm_name}) has no bf16; use amp-fp16 or fp32.")
    return card


def check_int64(nbytes: int, batch: int, seq: int) -> None:
    """One sentence for a step whose bytes no int64 size can hold."""
    if nbytes >= INT64_LIMIT:
        raise EstimateError(f"batch={batch} x seq={seq} needs {nbytes:.3e} bytes of activations, more than an int64 "
                            f"size can hold (2**63); use a smaller --batch or --seq.")


@dataclass(frozen=True)
class RunSpec:
    """One training step: the model and everything that moves its memory (estimate's docstring says
    what each field does). ``model``: a zoo name, a config.json path or model directory, a dict with
    model_type, a transformers PretrainedConfig or a minigpt GPTConfig; ``overrides``: config fields
    to change (``--set``). ``adapter_dtype``: "fp32", "bf16" or "fp16" adapters (None: fp32, cast with
    a pure 16-bit model; "fp32" beside precision bf16/fp16 keeps them fp32, as peft does)."""
    model: Any = "small"
    method: str = "full"
    rank: int = 8
    alpha: float = 16.0
    targets: Union[str, Sequence[str]] = "q,v"
    double_quant: bool = False
    precision: str = "fp32"
    optimizer: str = "adamw"
    optimizer_impl: str = "default"
    attention: str = "sdpa"
    dropout: Optional[float] = None
    lora_dropout: float = 0.0
    adapter_dtype: Optional[str] = None
    batch: int = 1
    micro_batch: Optional[int] = None
    seq: int = 128
    checkpointing: bool = False
    semantics: str = "cuda"
    gpus: int = 1
    zero: int = 0
    sharding: str = "flat"
    rank_index: int = 0
    head_trainable: bool = True
    set_to_none: bool = True
    gpu: Any = None
    loss_dtype: Optional[str] = None
    loss_chunk: Optional[int] = None
    padding: bool = False      # the batch has pad tokens: an attention_mask with zeros goes in
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise EstimateError(f"overrides must be a dict of config field names to values, got {self.overrides!r}.")
        object.__setattr__(self, "overrides", dict(self.overrides))
        self._validate()

    def _validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("semantics", self.semantics, SEMANTICS)
        _choice("zero", self.zero, ZERO_STAGES)
        _choice("optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        if self.optimizer_impl != "default" and self.optimizer != "adamw":
            raise EstimateError(f"optimizer_impl={self.optimizer_impl!r} chooses among torch's AdamW implementations; "
                                f"use optimizer='adamw' or drop it.")
        _positive_int("batch", self.batch)
        _positive_int("seq", self.seq)
        _positive_int("gpus", self.gpus)
        accumulation_steps(self.batch, self.micro_batch)
        if self.grads_alive and (self.zero >= 2 or self.sharding == "fsdp2"):
            raise EstimateError("gradient accumulation and set_to_none=False are modelled with unsharded gradients "
                                "only; use zero 0 or 1 (sharding flat or ddp).")
        check_sharding(self.sharding, self.zero, self.gpus, self.rank_index)
        if self.optimizer == "adafactor" and (self.gpus != 1 or self.zero or self.precision == "fp16-master"):
            raise EstimateError("optimizer='adafactor' is modelled on one GPU with its states in the parameters' "
                                "dtype; use gpus=1, zero=0 and a precision other than fp16-master.")
        if self.method in ADAPTER_METHODS:
            _positive_int("rank", self.rank)
            a = self.alpha
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < math.inf:
                raise EstimateError(f"alpha must be a positive number (LoRA scale = alpha / rank), got {a!r}.")
        if self.double_quant and self.method != "qlora":
            raise EstimateError("double_quant applies to method='qlora' only; drop it or use method='qlora'.")
        if self.dropout is not None:
            _probability("dropout", self.dropout)
        _probability("lora_dropout", self.lora_dropout)
        if self.lora_dropout and self.method not in ADAPTER_METHODS:
            raise EstimateError(f"lora_dropout applies to the adapters of method='lora' or 'qlora'; drop it for "
                                f"{self.method!r}.")
        if self.method == "head" and not self.head_trainable:
            raise EstimateError("method='head' trains only the head, so head_trainable=False would train nothing; "
                                "drop head_trainable or use another method.")
        self._validate_adapter_dtype()
        if self.loss_dtype is not None and self.loss_dtype not in LOSS_DTYPES:
            raise EstimateError(f"loss_dtype (--loss-dtype) must be 'fp32' (upcast the logits) or 'compute' (the "
                                f"logits' own dtype), or None for the model's default; got {self.loss_dtype!r}.")
        if self.loss_chunk is not None and (isinstance(self.loss_chunk, bool) or not isinstance(self.loss_chunk, int)
                                            or self.loss_chunk < 1):
            raise EstimateError(f"loss_chunk (--loss-chunk) must be a positive number of tokens per chunk of the "
                                f"cross-entropy, or None for one loss over all tokens; got {self.loss_chunk!r}.")
        if not isinstance(self.padding, bool):
            raise EstimateError(f"padding (--padding) must be True (pad tokens and an attention_mask with zeros) or "
                                f"False (full rows, as with packing); got {self.padding!r}.")
        card_of(self.gpu, self.precision)

    def _validate_adapter_dtype(self) -> None:
        ad, p = self.adapter_dtype, self.precision
        if ad is None:
            return
        _choice("adapter_dtype", ad, ADAPTER_DTYPES)
        if self.method not in ADAPTER_METHODS:
            raise EstimateError(f"adapter_dtype applies to the adapters of method='lora' or 'qlora'; drop it for "
                                f"{self.method!r}.")
        if p == "fp16-master" and ad != "fp16":    # its fp32 master copies are of fp16 tensors
            raise EstimateError("precision='fp16-master' keeps fp16 adapters with fp32 master copies; use "
                                "adapter_dtype='fp16' or drop it.")
        if p in ("bf16", "fp16") and ad not in ("fp32", p):
            raise EstimateError(f"with precision={p!r} the adapters are fp32 (peft's default) or {p}; use "
                                f"adapter_dtype='fp32' or {p!r}.")
        if p.startswith("amp") and ad not in ("fp32", p[4:]):
            raise EstimateError(f"under precision={p!r} the adapters are fp32 or {p[4:]}; use adapter_dtype='fp32' "
                                f"or {p[4:]!r}.")

    # ------------------------------------------------------------------ derived
    @property
    def step_batch(self) -> int:
        """Rows of one forward/backward (micro_batch, or the whole batch)."""
        return accumulation_steps(self.batch, self.micro_batch)[0]

    @property
    def pad_tokens(self) -> int:
        """Pad tokens at the end of the padded row of a measured or traced batch: seq // 4 (at least
        one) with padding, 0 without."""
        return max(1, self.seq // 4) if self.padding else 0

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return accumulation_steps(self.batch, self.micro_batch)[1]

    @property
    def grads_alive(self) -> bool:
        """Gradients stay allocated through forward and backward (accumulation or set_to_none=False)."""
        return self.accumulation > 1 or not self.set_to_none

    def card(self):
        """The gpus.GpuSpec of ``gpu`` (None: no card named)."""
        return card_of(self.gpu, self.precision)

    def adapter_bytes(self) -> int:
        """Bytes per adapter element (0: as the model's weights, the default)."""
        return ADAPTER_BYTES.get(self.adapter_dtype or "", 0)

    def adapter_label(self) -> Optional[str]:
        """The adapters' dtype by name (None for method='full' or 'head': no adapters)."""
        if self.method not in ADAPTER_METHODS:
            return None
        pure = {"bf16": "bf16", "fp16": "fp16", "fp16-master": "fp16"}
        return self.adapter_dtype or pure.get(self.precision, "fp32")

    def adapter_torch_dtype(self):
        """The torch dtype of the adapters for minigpt.lora.apply_lora (fp32 by default)."""
        import torch
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.adapter_dtype or "", torch.float32)

    # ------------------------------------------------------------------ changing and saving
    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with ``changes`` (validated again); names that are not fields are config overrides."""
        fields = {f.name for f in dataclasses.fields(self)}
        extra = {k: changes.pop(k) for k in list(changes) if k not in fields}
        if extra:
            changes["overrides"] = {**changes.get("overrides", self.overrides), **extra}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-safe: the model as its name or path (a config object as its fields), the card as its name."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = _model_json(self.model)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        d["gpu"] = None if self.gpu is None else (self.gpu if isinstance(self.gpu, str) else self.gpu.aliases[0])
        d["overrides"] = dict(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        """The inverse of to_dict (also accepts a whole ``--json`` output: its "spec")."""
        if isinstance(d, dict) and isinstance(d.get("spec"), dict) and "model" in d["spec"]:
            d = d["spec"]
        if not isinstance(d, dict):
            raise EstimateError(f"a run spec is a JSON object of RunSpec fields, got {type(d).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - fields)
        if bad:
            raise EstimateError(f"the run spec has no field {bad[0]!r}; its fields are {', '.join(sorted(fields))}.")
        d = dict(d)
        if isinstance(d.get("model"), dict) and set(d["model"]) == {"minigpt"}:
            from ...model import GPTConfig
            d["model"] = GPTConfig(**d["model"]["minigpt"])
        return cls(**d)

    @classmethod
    def from_kwargs(cls, model: Any = "small", *args: Any, order: Sequence[str] = ESTIMATE_ORDER,
                    **kwargs: Any) -> "RunSpec":
        """estimate()'s arguments (positional in ``order``, then keywords; names that are not fields are
        config overrides, as estimate(..., n_layer=2)); a RunSpec as ``model`` takes the rest as changes."""
        if isinstance(model, RunSpec):
            if args:
                raise TypeError("with a RunSpec, give changes by name (or use spec.replace(...)).")
            return model.replace(**kwargs) if kwargs else model
        if len(args) > len(order) - 1:
            raise TypeError(f"too many positional arguments: at most {len(order)} ({', '.join(order)}).")
        for name, v in zip(order[1:], args):
            if name in kwargs:
                raise TypeError(f"got multiple values for argument {name!r}.")
            kwargs[name] = v
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in fields}
        over = kwargs.pop("overrides", {})
        return cls(model=model, overrides={**over, **extra} if isinstance(over, dict) else over, **kwargs)

    def describe(self) -> str:
        """One line: what runs, e.g. ``llama-7b qlora r=16 all-linear amp-bf16 adamw batch=2 (1 x 2) seq=2048``."""
        j = _model_json(self.model)
        m = j if isinstance(j, str) else j.get("model_type", "minigpt" if "minigpt" in j else "config")
        parts = [str(m) + ("" if not self.overrides else " " + ",".join(f"{k}={v}" for k, v in self.overrides.items())),
                 self.method]
        if self.method in ADAPTER_METHODS:
            t = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
            parts += [f"r={self.rank}", t] + ([f"adapters {self.adapter_dtype}"] if self.adapter_dtype else [])
        parts += [self.precision, self.optimizer + ("" if self.optimizer_impl == "default" else f"({self.optimizer_impl})")]
        parts.append(f"batch={self.batch}" + (f" ({self.step_batch} x {self.accumulation})" if self.accumulation > 1 else ""))
        parts.append(f"seq={self.seq}")
        for on, word in ((self.checkpointing, "checkpointing"), (self.gpus > 1, f"{self.gpus} GPUs zero={self.zero}"),
                         (not self.set_to_none, "set_to_none=False"),
                         (self.loss_dtype is not None, f"loss {self.loss_dtype}"),
                         (self.loss_chunk is not None, f"loss chunks of {self.loss_chunk} tokens"),
                         (self.padding, "padded")):
            if on:
                parts.append(word)
        return " ".join(parts)


def _model_json(model: Any) -> Any:
    """A model argument as JSON: a name or path as a string, a config object as its fields."""
    import json
    from pathlib import Path
    if isinstance(model, (str, Path)):
        return str(model)
    if isinstance(model, dict):
        return dict(model)
    if dataclasses.is_dataclass(model) and type(model).__name__ == "GPTConfig":
        return {"minigpt": dataclasses.asdict(model)}
    if hasattr(model, "to_json_string") and hasattr(model, "model_type"):   # a transformers PretrainedConfig
        d = json.loads(model.to_json_string(use_diff=True))
        d["model_type"] = model.model_type
        return d
    raise EstimateError(f"a {type(model).__name__} model has no JSON form; give a zoo name, a config.json path, "
                        f"a dict, a PretrainedConfig or a GPTConfig.")
