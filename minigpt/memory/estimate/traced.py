"""The fallback for what the closed form does not describe (Gemma, Phi-3, GPT-2, GPT-NeoX, DistilBERT,
a T5 encoder, any other transformers config): trace the step on fake tensors, the path
``measure(mode="fake")`` takes (measure.measure_step), and report it as an Estimate whose label says
it is a fake-tensor trace, not a closed form. Shapes only: nothing runs on a GPU, nothing is allocated.

The model is minigpt.memory.hf_models.build_model(config); LoRA/QLoRA are minigpt.lora.apply_lora and
minigpt.nf4.quantize_model as for the zoo (the output layer and the classifier stay unquantised, a
classifier is trained in full). The LoRA shorthand q, k, v, o picks, per model, the first layer name
of SHORTHAND that the model has (fused q/k/v layers: one adapter on the fused layer).
"""
from __future__ import annotations

from typing import Any, Optional, Callable

from .report import Estimate
from .spec import EstimateError

SHORTHAND = {
    "q": ("q_proj", "query", "q_lin", "q", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "k": ("k_proj", "key", "k_lin", "k", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "v": ("v_proj", "value", "v_lin", "v", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "o": ("o_proj", "attention.output.dense", "out_lin", "o", "attention.dense", "attn.c_proj", "out_proj"),
}
HEADS = ("classifier", "score")                      # sequence-classification heads: trained in full
TRACEABLE_OPTIMIZERS = ("adamw", "sgd")


class _BuildError(ValueError):
    """A bad LoRA argument found while building the model (targets, rank)."""


def resolve_hf_targets(names: list[str], targets: Any) -> Any:
    """"all-linear", or layer names with the shorthand q, k, v, o resolved against ``names``."""
    if isinstance(targets, str):
        if targets.strip().lower() == "all-linear":
            return "all-linear"
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    out = []
    for t in targets:
        for cand in SHORTHAND.get(t, (t,)):
            if any(n == cand or n.endswith("." + cand) for n in names):
                out.append(cand)
                break
        else:
            out.append(t)           # apply_lora says which names the model has
    return tuple(dict.fromkeys(out))


def adapted_factory(src, method: str = "full", rank: int = 8, alpha: float = 16.0, targets: Any = "q,v",
                    double_quant: bool = False, precision: str = "fp32", attention: str = "sdpa", seed: int = 0,
                    lora_dropout: float = 0.0) -> tuple[Callable, dict]:
    """(zero-argument builder of the model ``src`` (hf_models.Resolved) describes, with LoRA or QLoRA
    applied, for measure_step; a dict that the builder fills with the resolved targets)."""
    import torch
    from .. import hf_models
    from ...lora import _is_linear, apply_lora
    from ...nf4 import quantize_model
    from ...precision import compute_dtype
    info: dict = {"targets": None, "conv1d": 0}
    compute = compute_dtype(precision)

    def make():
        torch.manual_seed(seed)
        model = hf_models.build_model(src.config, attention)
        if method == "full":
            return model
        info["conv1d"] = hf_models.linears_as_nn_linear(model)
        out = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        out_names = tuple(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is out and n)
        heads = tuple(h for h in HEADS if any(n.split(".")[-1] == h for n, _ in model.named_modules()))
        if method == "qlora":
            quantize_model(model, skip=("lm_head", *out_names, *heads), double_quant=double_quant,
                           compute_dtype=compute)
        names = [n for n, m in model.named_modules() if _is_linear(m)]
        tg = resolve_hf_targets(names, targets)
        info["targets"] = tg if isinstance(tg, str) else ",".join(tg)
        try:
            apply_lora(model, rank, alpha, dropout=lora_dropout, targets=tg, trainable=heads)
        except ValueError as e:
            raise _BuildError(str(e)) from None
        return model
    make.__name__ = f"build_{src.name}_{method}"
    return make, info


def measured_model_state(report) -> dict:
    """The persistent buckets of a MemoryReport: weights and optimizer state before the step,
    gradients at the optimizer step (all of them exist then)."""
    grads = report.phases.get("optimizer", {}).get("buckets", {}).get("gradients", 0)
    return {"weights_trainable": report.start["weights_trainable"],
            "weights_frozen": report.start["weights_frozen"],
            "gradients": grads, "optimizer": report.start["optimizer"]}


def trace(src, method: str = "full", rank: int = 8, alpha: float = 16.0, targets: Any = "q,v",
          double_quant: bool = False, precision: str = "fp32", optimizer: str = "adamw", attention: str = "sdpa",
          batch: int = 1, seq: int = 128, checkpointing: bool = False, semantics: str = "cuda", mode: str = "fake",
          lora_dropout: float = 0.0, gpu: Any = None, accumulation: int = 1, set_to_none: bool = True,
          events: Optional[list] = None, optimizer_impl: str = "default"):
    """(MemoryReport of one step of ``src``'s model, the builder's info); ``gpu``: the card whose SDPA
    kernel the CUDA rules pick (cuda_rules.on_card). Bad arguments: EstimateError."""
    from .. import cuda_rules, hf_models
    from ..measure import measure_step
    for name, v in (("batch", batch), ("seq", seq), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EstimateError(f"{name} must be a positive integer, got {v!r}.")
    limit = hf_models.max_positions(src.config)
    if limit is not None and seq > limit:
        raise EstimateError(f"seq={seq} is longer than {src.name}'s {limit} positions; use seq <= {limit} "
                            f"(or a config with rope_scaling).")
    make, info = adapted_factory(src, method, rank, alpha, targets, double_quant, precision, attention,
                                 lora_dropout=lora_dropout)
    data = hf_models.make_batch(src.config, batch, seq)
    try:
        with cuda_rules.on_card(gpu):
            rep = measure_step(make, data, optimizer=optimizer, precision=precision, checkpointing=checkpointing,
                               mode=mode, semantics=semantics, accumulation=accumulation, set_to_none=set_to_none,
                               events=events, optimizer_impl=optimizer_impl)
    except (_BuildError, hf_models.ConfigError) as e:
        raise EstimateError(str(e)) from None
    return rep, info


def traced_estimate(src, why: str, method: str = "full", rank: int = 8, alpha: float = 16.0,
                    targets: Any = "q,v", double_quant: bool = False, precision: str = "fp32",
                    optimizer: str = "adamw", attention: str = "sdpa", batch: int = 1, seq: int = 128,
                    checkpointing: bool = False, semantics: str = "cuda", gpus: int = 1, zero: int = 0,
                    sharding: str = "flat", head_trainable: bool = True, lora_dropout: float = 0.0,
                    gpu: Any = None, accumulation: int = 1, set_to_none: bool = True,
                    optimizer_impl: str = "default") -> Estimate:
    """An Estimate from a fake-tensor trace of the step (see the module docstring); ``why`` says why
    the closed form does not apply (closed_form_reason)."""
    from ...precision import RUNNABLE
    from ..measure import label_for
    if precision not in RUNNABLE or optimizer not in TRACEABLE_OPTIMIZERS:
        raise EstimateError(f"{why}, and its fake-tensor trace runs precision {', '.join(RUNNABLE)} with optimizer "
                            f"{' or '.join(TRACEABLE_OPTIMIZERS)} only; change --precision/--optimizer.")
    if gpus != 1 or zero != 0 or sharding != "flat":
        raise EstimateError(f"{why}, and its fake-tensor trace runs one device; drop --gpus, --zero and --sharding.")
    if not head_trainable:
        raise EstimateError(f"{why}, and its fake-tensor trace trains the classifier head; use head_trainable=True.")
    if method == "qlora" and precision in ("bf16", "fp16"):
        raise EstimateError(f"{why}, and its fake-tensor trace cannot run qlora with pure 16-bit weights; use "
                            f"amp-bf16 or amp-fp16.")
    rep, info = trace(src, method, rank, alpha, targets, double_quant, precision, optimizer, attention, batch, seq,
                      checkpointing, semantics, "fake", lora_dropout, gpu, accumulation, set_to_none,
                      optimizer_impl=optimizer_impl)
    note = f"traced on fake tensors ({why})"
    if info["conv1d"]:
        note += f"; its {info['conv1d']} Conv1D layers traced as nn.Linear of the same shape (same bytes)"
    cfg = src.config
    drop = [v for k, v in cfg.to_dict().items() if ("dropout" in k or "pdrop" in k)
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    lora = method != "full"
    config = dict(model=src.name, method=method, rank=rank if lora else None, alpha=alpha if lora else None,
                  targets=info["targets"] if lora else None, double_quant=bool(double_quant), precision=precision,
                  optimizer=optimizer, attention=attention, dropout=max(drop, default=0.0),
                  lora_dropout=float(lora_dropout) if lora else None, batch=batch * accumulation, micro_batch=batch,
                  accumulation=accumulation, set_to_none=bool(set_to_none), optimizer_impl=optimizer_impl, seq=seq,
                  checkpointing=bool(checkpointing), semantics=semantics, gpus=1, zero=0, sharding="flat",
                  rank_index=0, gpu=None if gpu is None else gpu.aliases[0], spec=src.describe())
    fwd = rep.phases.get("forward", {}).get("buckets", {})
    return Estimate(peak=rep.peak, buckets=dict(rep.buckets), peak_phase=rep.peak_phase,
                    phases={p: {"peak": v["peak"], "buckets": dict(v["buckets"])} for p, v in rep.phases.items()},
                    model_state=measured_model_state(rep), activations=fwd.get("activations", 0), config=config,
                    n_params=rep.n_params, n_trainable=rep.n_trainable, notes=[note],
                    label="estimated by a fake-tensor trace, not a closed form: " + label_for("fake", semantics))
