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
from .spec import ADAPTER_METHODS, EstimateError

SHORTHAND = {
    "q": ("q_proj", "query", "q_lin", "q", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "k": ("k_proj", "key", "k_lin", "k", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "v": ("v_proj", "value", "v_lin", "v", "qkv_proj", "query_key_value", "c_attn", "Wqkv"),
    "o": ("o_proj", "attention.output.dense", "out_lin", "o", "attention.dense", "attn.c_proj", "out_proj"),
}
HEADS = ("classifier", "score")                      # sequence-classification heads: trained in full
TRACEABLE_OPTIMIZERS = ("adamw", "sgd", "adafactor")


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


def adapted_factory(src, run, seed: int = 0) -> tuple[Callable, dict]:
    """(zero-argument builder of the model ``src`` (hf_models.Resolved) describes, with LoRA or QLoRA
    applied as ``run`` (a RunSpec) says, for measure_step; a dict that the builder fills with the
    resolved targets)."""
    import torch
    from .. import hf_models
    from ...lora import _is_linear, apply_lora, train_only
    from ...nf4 import quantize_model
    from ...precision import compute_dtype
    info: dict = {"targets": None, "conv1d": 0}
    compute = compute_dtype(run.precision)
    method = run.method

    def make():
        torch.manual_seed(seed)
        model = hf_models.build_model(src.config, run.attention)
        if method == "full":
            return model
        info["conv1d"] = hf_models.linears_as_nn_linear(model)
        out = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        out_names = tuple(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is out and n)
        heads = tuple(h for h in HEADS if any(n.split(".")[-1] == h for n, _ in model.named_modules()))
        if method == "head":           # a linear probe: every weight frozen but the classification head's
            if not heads:
                raise _BuildError(f"method='head' trains only a classification head, and {src.name} has none "
                                  f"(no module named {' or '.join(HEADS)}); use method='full', 'lora' or 'qlora'.")
            return train_only(model, heads)
        if method == "qlora":
            quantize_model(model, skip=("lm_head", *out_names, *heads), double_quant=run.double_quant,
                           compute_dtype=compute)
        names = [n for n, m in model.named_modules() if _is_linear(m)]
        tg = resolve_hf_targets(names, run.targets)
        info["targets"] = tg if isinstance(tg, str) else ",".join(tg)
        try:
            apply_lora(model, run.rank, run.alpha, dropout=run.lora_dropout, targets=tg, trainable=heads,
                       adapter_dtype=run.adapter_torch_dtype())
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


def check_config_knobs(src, run) -> None:
    """The loss and padding knobs of a config's model: causal LMs only (one sentence otherwise)."""
    from .. import hf_models
    knobs = [f for f, on in (("--padding", run.padding), ("--loss-dtype", run.loss_dtype is not None),
                             ("--loss-chunk", run.loss_chunk is not None)) if on]
    if knobs and hf_models.task_of(src.config) != "lm":
        raise EstimateError(f"{' and '.join(knobs)} {'applies' if len(knobs) == 1 else 'apply'} to causal LMs given as a config.json, and {src.name} is a "
                            f"{src.config.model_type} classifier; drop {' and '.join(knobs)} (the zoo's roberta-base "
                            f"and bert-large take --padding).")


def trace(src, run, mode: str = "fake", gpu: Any = None, events: Optional[list] = None):
    """(MemoryReport of one step of ``src``'s model as ``run`` (a RunSpec) describes it, the builder's
    info); ``gpu``: the card whose SDPA kernel the CUDA rules pick (cuda_rules.on_card). Bad
    arguments: EstimateError."""
    from .. import cuda_rules, hf_models
    from ..measure import measure_step
    from .run import check_int64
    seq, batch = run.seq, run.step_batch
    limit = hf_models.max_positions(src.config)
    if limit is not None and seq > limit:
        raise EstimateError(f"seq={seq} is longer than {src.name}'s {limit} positions; use seq <= {limit} "
                            f"(or a config with rope_scaling).")
    width = max(getattr(src.config, "vocab_size", 0) or 0, getattr(src.config, "hidden_size", 0) or 0)
    check_int64(4 * batch * seq * width, run.batch, seq)      # one fp32 (batch, seq, width) tensor
    check_config_knobs(src, run)
    make, info = adapted_factory(src, run)
    data = hf_models.pad_last_row(hf_models.make_batch(src.config, batch, seq), run.pad_tokens)
    try:
        with cuda_rules.on_card(gpu):
            rep = measure_step(make, data, optimizer=run.optimizer, precision=run.precision,
                               checkpointing=run.checkpointing, mode=mode, semantics=run.semantics,
                               accumulation=run.accumulation, set_to_none=run.set_to_none, events=events,
                               optimizer_impl=run.optimizer_impl, keep_adapters=run.adapter_dtype is not None,
                               loss_dtype=run.loss_dtype, loss_chunk=run.loss_chunk)
    except (_BuildError, hf_models.ConfigError) as e:
        raise EstimateError(str(e)) from None
    return rep, info


def traced_estimate(src, why: str, run, gpu: Any = None) -> Estimate:
    """An Estimate from a fake-tensor trace of the step ``run`` (a RunSpec) describes (see the module
    docstring); ``why`` says why the closed form does not apply (closed_form_reason)."""
    from ...precision import RUNNABLE
    from ..measure import label_for
    method, precision, optimizer = run.method, run.precision, run.optimizer
    if precision not in RUNNABLE or optimizer not in TRACEABLE_OPTIMIZERS:
        raise EstimateError(f"{why}, and its fake-tensor trace runs precision {', '.join(RUNNABLE)} with optimizer "
                            f"{', '.join(TRACEABLE_OPTIMIZERS)} only; change --precision/--optimizer.")
    if run.gpus != 1 or run.zero != 0 or run.sharding != "flat":
        raise EstimateError(f"{why}, and its fake-tensor trace runs one device; drop --gpus, --zero and --sharding.")
    if not run.head_trainable:
        raise EstimateError(f"{why}, and its fake-tensor trace trains the classifier head; use head_trainable=True.")
    if method == "qlora" and precision in ("bf16", "fp16"):
        raise EstimateError(f"{why}, and its fake-tensor trace cannot run qlora with pure 16-bit weights; use "
                            f"amp-bf16 or amp-fp16.")
    rep, info = trace(src, run, "fake", gpu)
    note = f"traced on fake tensors ({why})"
    if info["conv1d"]:
        note += f"; its {info['conv1d']} Conv1D layers traced as nn.Linear of the same shape (same bytes)"
    cfg = src.config
    drop = [v for k, v in cfg.to_dict().items() if ("dropout" in k or "pdrop" in k)
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    lora = method in ADAPTER_METHODS
    config = dict(model=src.name, method=method, rank=run.rank if lora else None, alpha=run.alpha if lora else None,
                  targets=info["targets"] if lora else None, double_quant=bool(run.double_quant), precision=precision,
                  optimizer=optimizer, attention=run.attention, dropout=max(drop, default=0.0),
                  lora_dropout=float(run.lora_dropout) if lora else None,
                  adapter_dtype=run.adapter_label(), batch=run.batch,
                  micro_batch=run.step_batch, accumulation=run.accumulation, set_to_none=bool(run.set_to_none),
                  optimizer_impl=run.optimizer_impl, seq=run.seq, checkpointing=bool(run.checkpointing),
                  semantics=run.semantics, gpus=1, zero=0, sharding="flat", rank_index=0,
                  gpu=None if gpu is None else gpu.aliases[0], spec=src.describe())
    fwd = rep.phases.get("forward", {}).get("buckets", {})
    return Estimate(peak=rep.peak, buckets=dict(rep.buckets), peak_phase=rep.peak_phase,
                    phases={p: {"peak": v["peak"], "buckets": dict(v["buckets"])} for p, v in rep.phases.items()},
                    model_state=measured_model_state(rep), activations=fwd.get("activations", 0), config=config,
                    n_params=rep.n_params, n_trainable=rep.n_trainable, notes=[note],
                    label="estimated by a fake-tensor trace, not a closed form: " + label_for("fake", run.semantics))
