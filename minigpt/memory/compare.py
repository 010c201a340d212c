"""Measure the step an estimate describes, and put the two side by side.

build_factory builds the model estimate would describe with the same arguments (for
measure_step), measure and compare take the estimator's arguments, compare_table prints
estimate, measurement and difference bucket by bucket, and accuracy_grid runs the estimator
against measure_step over a grid of setups. python -m minigpt.memory (cli.py) is their command line.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from ..precision import RUNNABLE, compute_dtype
from .buckets import BUCKETS, GiB, MiB, MODEL_STATE_BUCKETS
from .estimate import (METHODS, Estimate, EstimateError, accumulation_steps, closed_form_reason, estimate,
                       is_config_source, resolve_config, resolve_model, resolve_targets)
from .estimate.traced import adapted_factory, measured_model_state, trace


MODES = ("fake", "cpu", "cuda")


MEASURABLE_PRECISIONS = RUNNABLE


MEASURABLE_OPTIMIZERS = ("adamw", "sgd")


def dropout_overrides(name: str, dropout: Optional[float]) -> dict:
    """Config overrides that set every dropout of zoo model ``name`` to ``dropout`` (None: keep)."""
    if dropout is None:
        return {}
    from . import zoo
    family, key = zoo._resolve(name)
    if family == "minigpt":
        return {"dropout": dropout}
    if zoo.HF_CONFIGS[key]["kind"] == "llama":
        return {"attention_dropout": dropout}
    return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


def build_factory(name: str, method: str = "full", rank: int = 8, alpha: float = 16.0,
                  targets: Any = "q,v", double_quant: bool = False, precision: str = "fp32",
                  attention: str = "sdpa", dropout: Optional[float] = None, seed: int = 0,
                  lora_dropout: float = 0.0, **overrides) -> Callable:
    """A zero-argument builder of the model ``estimate`` describes, for measure_step:
    zoo.build, then (qlora) minigpt.nf4.quantize_model (the heads stay unquantised), then (lora,
    qlora) minigpt.lora.apply_lora with a classification head trained in full. ``name`` may also be
    a config.json path, a model directory, a dict or a PretrainedConfig (hf_models.build_model)."""
    if is_config_source(name):
        src = resolve_config(name, overrides, dropout)
        return adapted_factory(src, method, rank, alpha, targets, double_quant, precision, attention, seed,
                               lora_dropout)[0]
    import torch
    from . import zoo
    from ..lora import apply_lora
    from ..nf4 import quantize_model   # imported here: its tables cannot be built inside FakeTensorMode
    overrides = {**dropout_overrides(name, dropout), **overrides}
    spec = resolve_model(name, **overrides)
    tg = resolve_targets(spec, targets)
    trainable = ("classifier",) if spec.task == "cls" else ()
    compute = compute_dtype(precision)

    def make():
        torch.manual_seed(seed)
        model = zoo.build(name, device=None, attn_implementation=attention, **overrides)
        if method == "qlora":
            quantize_model(model, skip=("lm_head", "classifier"), double_quant=double_quant,
                           compute_dtype=compute)
        if method in ("lora", "qlora"):
            apply_lora(model, rank, alpha, dropout=lora_dropout, targets=tg, trainable=trainable)
        return model
    make.__name__ = f"build_{name}_{method}"
    return make


def _measure_args_check(precision: str, optimizer: str, gpus: int, zero: int, method: str) -> None:
    if precision not in MEASURABLE_PRECISIONS:
        raise EstimateError(f"measure cannot run precision {precision!r} (only the estimator models it); "
                            f"use one of {', '.join(MEASURABLE_PRECISIONS)}, or the estimate command.")
    if optimizer not in MEASURABLE_OPTIMIZERS:
        raise EstimateError(f"measure cannot run optimizer {optimizer!r} (bitsandbytes' 8-bit and paged "
                            f"optimizers need a GPU; only the estimator models them); use "
                            f"{' or '.join(MEASURABLE_OPTIMIZERS)}, or the estimate command.")
    if gpus != 1 or zero != 0:
        raise EstimateError("measure runs on one device, so --gpus and --zero are for the estimate command only; "
                            "drop them to measure.")
    if method == "qlora" and precision in ("bf16", "fp16"):
        raise EstimateError("measure cannot run qlora with pure bf16/fp16 weights (casting the model would cast "
                            "the NF4 scales); use amp-bf16 or amp-fp16, or the estimate command.")


def measure(model: str = "small", method: str = "full", rank: int = 8, alpha: float = 16.0,
            targets: Any = "q,v", double_quant: bool = False, precision: str = "fp32",
            optimizer: str = "adamw", attention: str = "sdpa", dropout: Optional[float] = None,
            batch: int = 1, seq: int = 128, checkpointing: bool = False, mode: str = "fake",
            semantics: str = "cuda", gpus: int = 1, zero: int = 0, lora_dropout: float = 0.0,
            micro_batch: Optional[int] = None, set_to_none: bool = True, events: Optional[list] = None,
            optimizer_impl: str = "default", **overrides):
    """measure_step on the model ``estimate`` would describe with the same arguments (with
    ``micro_batch``, each forward runs ``micro_batch`` rows, accumulated batch // micro_batch times).
    ``events``: a list to receive the step's allocator events (allocator.replay)."""
    from . import zoo
    from .measure import measure_step
    if mode not in MODES:
        raise EstimateError(f"mode={mode!r} is not allowed; use one of: {', '.join(MODES)}.")
    _measure_args_check(precision, optimizer, gpus, zero, method)
    if is_config_source(model):       # any transformers config: hf_models builds it
        src = resolve_config(model, overrides, dropout)
        if not closed_form_reason(src.config, seq):   # cheap: the estimator validates the arguments
            estimate(src.config, method, rank, alpha, targets, double_quant, precision, optimizer, attention,
                     None, batch, seq, checkpointing, semantics, 1, 0, lora_dropout=lora_dropout,
                     micro_batch=micro_batch, set_to_none=set_to_none, optimizer_impl=optimizer_impl)
        step_batch, acc = accumulation_steps(batch, micro_batch)
        return trace(src, method, rank, alpha, targets, double_quant, precision, optimizer, attention, step_batch,
                     seq, checkpointing, semantics, mode, lora_dropout, None, acc, set_to_none, events,
                     optimizer_impl)[0]
    # the estimator validates everything else (and we fail before building anything)
    estimate(model, method, rank, alpha, targets, double_quant, precision, optimizer, attention, dropout,
             batch, seq, checkpointing, semantics, 1, 0, lora_dropout=lora_dropout, micro_batch=micro_batch,
             set_to_none=set_to_none, optimizer_impl=optimizer_impl, **overrides)
    step_batch, acc = accumulation_steps(batch, micro_batch)
    make = build_factory(model, method, rank, alpha, targets, double_quant, precision, attention, dropout,
                         lora_dropout=lora_dropout, **overrides)
    vocab = {k: v for k, v in overrides.items() if k == "vocab_size"}
    batch_t = zoo.make_batch(model, step_batch, seq, **vocab)
    return measure_step(make, batch_t, optimizer=optimizer, precision=precision, checkpointing=checkpointing,
                        mode=mode, semantics=semantics, accumulation=acc, set_to_none=set_to_none, events=events,
                        optimizer_impl=optimizer_impl)


def compare(**kwargs) -> tuple[Estimate, Any]:
    """(estimate, measurement) for the same arguments (those of ``measure``)."""
    mode = kwargs.pop("mode", "fake")
    est = estimate(**kwargs)
    rep = measure(mode=mode, **kwargs)
    return est, rep


def _unit(n: int, unit: str) -> tuple[str, int]:
    if unit == "auto":
        unit = "GiB" if n >= GiB else "MiB"
    return unit, {"MiB": MiB, "GiB": GiB}[unit]


def compare_table(est: Estimate, rep, unit: str = "auto") -> str:
    """Estimate, measurement and difference, bucket by bucket at each one's peak, then the
    persistent model state."""
    unit, div = _unit(max(est.peak, rep.peak), unit)
    c = est.config
    w = 20
    lines = [f"compare: {c['model']} {c['method']}" +
             (f" r={c['rank']} targets={c['targets']}" if c["method"] != "full" else "") +
             f" {c['precision']} batch={c['batch']} seq={c['seq']} checkpointing={c['checkpointing']}"
             f" optimizer={c['optimizer']} attention={c['attention']}",
             f"estimate: {est.label}",
             f"measured: {rep.label}",
             f"units: {unit} (1 {unit} = 2**{20 if unit == 'MiB' else 30} bytes)",
             f"{'at the peak':<{w}}{'estimate':>12}{'measured':>12}{'difference':>12}"]
    for k in BUCKETS:
        lines.append(f"{k:<{w}}{est.buckets[k] / div:>12.3f}{rep.buckets[k] / div:>12.3f}"
                     f"{(est.buckets[k] - rep.buckets[k]) / div:>+12.3f}")
    err = (est.peak - rep.peak) / rep.peak * 100
    lines.append(f"{'peak':<{w}}{est.peak / div:>12.3f}{rep.peak / div:>12.3f}"
                 f"{(est.peak - rep.peak) / div:>+12.3f}  ({err:+.2f}%)")
    lines.append(f"{'peak during':<{w}}{est.peak_phase:>12}{rep.peak_phase:>12}")
    ms = measured_model_state(rep)
    lines.append(f"{'model state':<{w}}{'estimate':>12}{'measured':>12}{'difference':>12}")
    for k in MODEL_STATE_BUCKETS:
        d = est.model_state[k] - ms[k]
        lines.append(f"{k:<{w}}{est.model_state[k] / div:>12.3f}{ms[k] / div:>12.3f}{d / div:>+12.3f}"
                     + ("  (exact)" if d == 0 else f"  ({d:+,} B)"))
    return "\n".join(lines)


def compare_dict(est: Estimate, rep) -> dict:
    m = {k: int(rep.buckets[k]) for k in BUCKETS}
    m.update(peak=int(rep.peak), peak_phase=rep.peak_phase, label=rep.label,
             model_state={k: int(v) for k, v in measured_model_state(rep).items()})
    return {"estimate": est.to_dict(), "measured": m,
            "difference": {**{k: int(est.buckets[k] - rep.buckets[k]) for k in BUCKETS},
                           "peak": int(est.peak - rep.peak)},
            "peak_error_percent": (est.peak - rep.peak) / rep.peak * 100,
            "config": dict(est.config)}


ROBERTA_SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256,
                     vocab_size=1000)


MINIGPT_SMALL = dict(n_layer=2, block_size=256)


DEFAULT_GRID_MODELS = (("small", MINIGPT_SMALL), ("roberta-base", ROBERTA_SMALL))


def accuracy_grid(models: Sequence[tuple[str, dict]] = DEFAULT_GRID_MODELS,
                  methods: Sequence[str] = METHODS,
                  precisions: Sequence[str] = ("fp32", "amp-bf16", "amp-fp16", "bf16"),
                  seqs: Sequence[int] = (64, 256), checkpointing: Sequence[bool] = (False, True),
                  batch: int = 2, semantics: str = "cpu", mode: str = "fake", rank: int = 8,
                  targets: str = "q,v", verbose: bool = False, lora_dropout: float = 0.0) -> list[dict]:
    """Estimate against measure_step over a grid; one row per setup.

    Each row: the setup, estimated and measured peak (bytes), the peak error in percent, and
    whether each model-state bucket matched to the byte. Pure bf16 QLoRA is skipped (measure
    cannot cast an NF4 model); sequences longer than a model's positions are skipped.
    """
    rows = []
    for name, over in models:
        spec = resolve_model(name, **over)
        for method in methods:
            for prec in precisions:
                if method == "qlora" and prec in ("bf16", "fp16"):
                    continue
                for seq in seqs:
                    limit = getattr(spec.config, "block_size", None) or (
                        spec.positions - 2 if spec.family == "roberta" else None)
                    if limit is not None and seq > limit:
                        continue
                    for ck in checkpointing:
                        args = dict(model=name, method=method, rank=rank, targets=targets, precision=prec,
                                    batch=batch, seq=seq, checkpointing=ck, semantics=semantics, **over)
                        if method != "full":
                            args["lora_dropout"] = lora_dropout
                        t0 = time.perf_counter()
                        est = estimate(**args)
                        rep = measure(mode=mode, **args)
                        ms = measured_model_state(rep)
                        row = dict(model=name + ("*" if over else ""), method=method, precision=prec,
                                   lora_dropout=args.get("lora_dropout", 0.0),
                                   batch=batch, seq=seq, checkpointing=ck, semantics=semantics,
                                   estimated=est.peak, measured=rep.peak,
                                   error=(est.peak - rep.peak) / rep.peak * 100,
                                   state_exact={k: est.model_state[k] == ms[k] for k in MODEL_STATE_BUCKETS},
                                   state_est=dict(est.model_state), state_meas=ms,
                                   seconds=time.perf_counter() - t0)
                        rows.append(row)
                        if verbose:
                            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    exact = "yes" if all(r["state_exact"].values()) else "NO"
    return (f"{r['model']:<14}{r['method']:<7}{r['precision']:<10}{r['semantics']:<5}{r['batch']:>3}{r['seq']:>5} "
            f"{'on' if r['checkpointing'] else 'off':>4}  {r['estimated'] / MiB:>10.3f} "
            f"{r['measured'] / MiB:>10.3f} {r['error']:>+8.2f}%  {exact:>6}")


def format_grid(rows: list[dict]) -> str:
    """The grid as a table (MiB = 2**20 bytes) with the worst case underneath."""
    head = (f"{'model':<14}{'method':<7}{'precision':<10}{'sem':<5}{'B':>3}{'seq':>5} {'ckpt':>4}  {'est MiB':>10} "
            f"{'meas MiB':>10} {'error':>9}  {'state exact':>6}")
    lines = ["estimate vs measure_step in fake mode (B = batch; "
             "MiB = 2**20 bytes; * = reduced size; sem = semantics of both)", head]
    lines += [format_row(r) for r in rows]
    if rows:
        worst = max(rows, key=lambda r: abs(r["error"]))
        lines.append(f"worst peak error: {worst['error']:+.2f}% ({worst['model']} {worst['method']} "
                     f"{worst['precision']} batch={worst['batch']} seq={worst['seq']} checkpointing={worst['checkpointing']}); "
                     f"model-state buckets exact in {sum(all(r['state_exact'].values()) for r in rows)}"
                     f"/{len(rows)} setups")
    return "\n".join(lines)
