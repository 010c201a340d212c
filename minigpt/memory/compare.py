"""Measure the step an estimate describes, and put the two side by side.

build_factory builds the model estimate would describe for the same RunSpec (for
measure_step), measure and compare take a RunSpec (or the estimator's arguments, which make one), compare_table prints
estimate, measurement and difference bucket by bucket, and accuracy_grid runs the estimator
against measure_step over a grid of setups. python -m minigpt.memory (cli.py) is their command line.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from ..precision import RUNNABLE, compute_dtype
from .buckets import BUCKETS, GiB, MiB, MODEL_STATE_BUCKETS
from .estimate import (ADAPTER_METHODS, Estimate, EstimateError, ResolvedModel, RunSpec, estimate_run, head_plan,
                       resolve_model, resolve_run_model, resolve_targets)
from .estimate.traced import adapted_factory, measured_model_state, trace


MODES = ("fake", "cpu", "cuda")


MEASURABLE_PRECISIONS = RUNNABLE


MEASURABLE_OPTIMIZERS = ("adamw", "sgd", "adafactor", "adamw-8bit", "paged-adamw-8bit")


BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw-8bit")   # bitsandbytes 0.50.2: its 8-bit AdamW also steps CPU tensors


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


def build_factory(name: Any, *args: Any, seed: int = 0, **kwargs: Any) -> Callable:
    """A zero-argument builder of the model ``estimate`` describes, for measure_step: ``name`` is a
    RunSpec, or estimate's arguments (a zoo name, a config.json path, a model directory, a dict or a
    PretrainedConfig, then the run's fields). zoo.build, then (qlora) minigpt.nf4.quantize_model (the
    heads stay unquantised), then (lora, qlora) minigpt.lora.apply_lora with a classification head
    trained in full (hf_models.build_model for a config)."""
    run = RunSpec.from_kwargs(name, *args, order=_BUILD_ORDER, **kwargs)
    return _factory(run, resolve_run_model(run), seed)


_BUILD_ORDER = ("model", "method", "rank", "alpha", "targets", "double_quant", "precision", "attention", "dropout")


def _factory(run: RunSpec, m: ResolvedModel, seed: int = 0) -> Callable:
    if m.config:
        return adapted_factory(m.src, run, seed)[0]
    if not isinstance(run.model, str):
        raise EstimateError(f"measure builds a zoo name or a transformers config, not a {type(run.model).__name__}; "
                            f"give model= a name (with overrides) or a config.json, or call measure_step yourself.")
    import torch
    from . import zoo
    from ..lora import apply_lora, train_only
    from ..nf4 import quantize_model   # imported here: its tables cannot be built inside FakeTensorMode
    name = run.model
    overrides = {**dropout_overrides(name, run.dropout), **run.overrides}
    tg = resolve_targets(m.spec, run.targets) if run.method in ADAPTER_METHODS else ()
    trainable = ("classifier",) if m.spec.task == "cls" else ()
    heads = head_plan(m.spec) if run.method == "head" else ()
    compute = compute_dtype(run.precision)
    method = run.method

    def make():
        torch.manual_seed(seed)
        model = zoo.build(name, device=None, attn_implementation=run.attention, **overrides)
        if method == "qlora":
            quantize_model(model, skip=("lm_head", "classifier"), double_quant=run.double_quant,
                           compute_dtype=compute)
        if method in ADAPTER_METHODS:
            apply_lora(model, run.rank, run.alpha, dropout=run.lora_dropout, targets=tg, trainable=trainable,
                       adapter_dtype=run.adapter_torch_dtype())
        if method == "head":           # a linear probe: every weight frozen but the head's
            train_only(model, heads)
        return model
    make.__name__ = f"build_{name}_{method}"
    return make


def _measure_args_check(run: RunSpec, mode: str) -> None:
    precision, optimizer, method = run.precision, run.optimizer, run.method
    if mode not in MODES:
        raise EstimateError(f"mode={mode!r} is not allowed; use one of: {', '.join(MODES)}.")
    if precision not in MEASURABLE_PRECISIONS:
        raise EstimateError(f"measure cannot run precision {precision!r} (only the estimator models it); "
                            f"use one of {', '.join(MEASURABLE_PRECISIONS)}, or the estimate command.")
    if optimizer not in MEASURABLE_OPTIMIZERS:
        raise EstimateError(f"measure cannot run optimizer {optimizer!r} (bitsandbytes' paged 32-bit optimizer "
                            f"is modelled by the estimator only); use {', '.join(MEASURABLE_OPTIMIZERS)}, or the "
                            f"estimate command.")
    if optimizer in BNB_OPTIMIZERS and mode == "fake":
        raise EstimateError(f"measure cannot run optimizer {optimizer!r} in mode 'fake' (bitsandbytes reads tensor "
                            f"values in its step, which fake tensors do not have); use mode='cpu' (its 8-bit AdamW "
                            f"runs on CPU tensors) or 'cuda'.")
    if run.gpus != 1 or run.zero != 0:
        raise EstimateError("measure runs on one device, so --gpus and --zero are for the estimate command only; "
                            "drop them to measure.")
    if method == "qlora" and precision in ("bf16", "fp16"):
        raise EstimateError("measure cannot run qlora with pure bf16/fp16 weights (casting the model would cast "
                            "the NF4 scales); use amp-bf16 or amp-fp16, or the estimate command.")


_MEASURE_ORDER = ("model", "method", "rank", "alpha", "targets", "double_quant", "precision", "optimizer",
                  "attention", "dropout", "batch", "seq", "checkpointing", "mode", "semantics", "gpus", "zero",
                  "lora_dropout", "micro_batch", "set_to_none", "events", "optimizer_impl")


def measure(model: Any = "small", *args: Any, mode: str = "fake", events: Optional[list] = None, **kwargs: Any):
    """measure_step on the model ``estimate`` would describe for the same RunSpec (or the same
    arguments: estimate's, by name): with ``micro_batch``, each forward runs ``micro_batch`` rows,
    accumulated batch // micro_batch times. ``mode``: "fake", "cpu" or "cuda"; ``events``: a list to
    receive the step's allocator events (allocator.replay)."""
    if args:           # the old positional order, where mode and events came among the fields
        named = dict(zip(_MEASURE_ORDER[1:], args))
        mode, events = named.pop("mode", mode), named.pop("events", events)
        kwargs = {**named, **kwargs}
    run = RunSpec.from_kwargs(model, **kwargs)
    return measure_run(run, resolve_run_model(run), mode, events)


def measure_run(run: RunSpec, m: ResolvedModel, mode: str = "fake", events: Optional[list] = None):
    """measure() of ``run`` whose model ``m`` is already resolved (estimate.resolve_run_model)."""
    from .measure import measure_step
    _measure_args_check(run, mode)
    if not m.why:          # cheap: the estimator validates the run against the model (and fails before building)
        estimate_run(run, m)
    if m.config:           # any transformers config: hf_models builds it
        return trace(m.src, run, mode, events=events)[0]
    make = _factory(run, m)
    vocab = {k: v for k, v in run.overrides.items() if k == "vocab_size"}
    batch_t = padded_batch(run, vocab)
    return measure_step(make, batch_t, optimizer=run.optimizer, precision=run.precision,
                        checkpointing=run.checkpointing, mode=mode, semantics=run.semantics,
                        accumulation=run.accumulation, set_to_none=run.set_to_none, events=events,
                        optimizer_impl=run.optimizer_impl, keep_adapters=run.adapter_dtype is not None,
                        loss_dtype=run.loss_dtype, loss_chunk=run.loss_chunk)


def padded_batch(run: RunSpec, vocab: dict) -> Any:
    """zoo.make_batch's batch for ``run``; with ``run.padding`` an attention_mask (B, T) int64 goes in
    whose padded row (LLaMA: the last, labels -100 there; RoBERTa/BERT: the first) ends in
    ``run.pad_tokens`` zeros, as dynamic padding gives."""
    from . import zoo
    family, key = zoo._resolve(run.model)
    pad = run.pad_tokens
    if family == "minigpt" or zoo.HF_CONFIGS[key]["kind"] != "llama":
        # RoBERTa/BERT: zoo's own padded batch (its first row padded with the pad token)
        return zoo.make_batch(run.model, run.step_batch, run.seq, pad=pad if family != "minigpt" else 0, **vocab)
    from .hf_models import pad_last_row
    return pad_last_row(zoo.make_batch(run.model, run.step_batch, run.seq, **vocab), pad)


def compare(model: Any = "small", *args: Any, mode: str = "fake", **kwargs: Any) -> tuple[Estimate, Any]:
    """(estimate, measurement) of the same RunSpec (or the same arguments), its model resolved once."""
    run = RunSpec.from_kwargs(model, *args, **kwargs)
    m = resolve_run_model(run)
    return estimate_run(run, m), measure_run(run, m, mode)


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
             (f" r={c['rank']} targets={c['targets']}" if c["method"] in ADAPTER_METHODS else "") +
             f" {c['precision']} batch={c['batch']} seq={c['seq']} checkpointing={c['checkpointing']}"
             f" optimizer={c['optimizer']} attention={c['attention']}" +
             (" padded" if c.get("padding") else "") +
             (f" loss={c['loss_dtype']}" if c.get("loss_dtype") else "") +
             (f" loss-chunk={c['loss_chunk']}" if c.get("loss_chunk") else ""),
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
                  methods: Sequence[str] = ("full", *ADAPTER_METHODS),   # head: a classifier-only method
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
                        run = RunSpec(model=name, method=method, rank=rank, targets=targets, precision=prec,
                                      batch=batch, seq=seq, checkpointing=ck, semantics=semantics, overrides=over,
                                      lora_dropout=lora_dropout if method in ADAPTER_METHODS else 0.0)
                        t0 = time.perf_counter()
                        est, rep = compare(run, mode=mode)
                        ms = measured_model_state(rep)
                        row = dict(model=name + ("*" if over else ""), method=method, precision=prec,
                                   lora_dropout=run.lora_dropout,
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
