"""``python -m minigpt.memory estimate|measure|compare``: predict, measure, and put the two side by side.

    python -m minigpt.memory estimate --model llama-7b --method qlora --rank 8 --targets all-linear \\
        --precision amp-bf16 --batch 1 --seq 512
    python -m minigpt.memory compare --model small --method lora --precision amp-bf16 --batch 4 --seq 128
    python -m minigpt.memory estimate ... --json > run.json      # its "spec" is the run (RunSpec.to_dict)
    python -m minigpt.memory compare --spec run.json --seq 256   # the same run again, one field changed

All three commands build one RunSpec from the flags (``run_spec``): estimate, measure and compare
get the same spec, and ``--json`` prints it as ``"spec"``.

Every command ends with three labelled numbers (device_view.py): allocated peak, reserved peak and
what nvidia-smi would show, each saying whether it is measured on CUDA, replayed (the allocator model
on the traced step), estimated or modelled. ``--gpu t4|v100|a10g|l4|a100-40gb|a100-80gb|h100`` uses the
card's SDPA kernel, refuses bf16 where it has none and says whether the step fits; ``estimate
--reserved`` (implied by --gpu) traces the step with fake tensors for the reserved peak.

Defaults: --mode fake (fake tensors: shapes without memory, any model size on a laptop),
--semantics cuda (what a CUDA run would hold, simulated; never labelled "measured on GPU"),
--attention sdpa, --optimizer adamw, --precision fp32. Sizes print in MiB or GiB (binary units).

The command line only: what it runs lives in compare.py (measure, compare, compare_table,
accuracy_grid, ...), re-exported here for code that imports it from this module.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from .buckets import BUCKETS
from .compare import (DEFAULT_GRID_MODELS, MEASURABLE_OPTIMIZERS, MEASURABLE_PRECISIONS, MODES,  # noqa: F401
                      accuracy_grid, build_factory, compare, compare_dict, compare_table, dropout_overrides,
                      format_grid, format_row, measure, measured_model_state)
from .estimate import (ADAPTER_DTYPES, ATTENTIONS, METHODS, OPTIMIZER_IMPLS, OPTIMIZERS, PRECISIONS, SEMANTICS,
                       ZERO_STAGES, EstimateError, RunSpec, estimate)
from .estimate.sharding import SHARDINGS
from . import device_view
from .gpus import GPUS


# ------------------------------------------------------------------------ command line
class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one sentence (no usage dump) and exits with 2."""

    def error(self, message: str):  # type: ignore[override]
        msg = message[0].upper() + message[1:]
        if not msg.endswith("."):
            msg += "."
        self.exit(2, f"{self.prog}: error: {msg}\n")


def _pos_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}")
    return v


def _prob(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {s!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {s!r}")
    return v


def _pos_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {s!r}")
    return v


def _set_item(s: str) -> str:
    if "=" not in s or not s.partition("=")[0].strip():
        raise argparse.ArgumentTypeError(f"needs the form key=value (e.g. --set num_hidden_layers=2), got {s!r}")
    return s


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m minigpt.memory",
                description="Predict (estimate), measure, or compare the memory of one training step.")
    p.add_argument("command", choices=("estimate", "measure", "compare"))
    p.add_argument("--model", default="small",
                   help="a minigpt.memory.zoo name, a config.json, or a model directory holding one (configs/)")
    p.add_argument("--spec", default=None, metavar="FILE.json",
                   help="a run spec saved from --json (its \"spec\"); flags given beside it change its fields")
    p.add_argument("--set", dest="overrides", action="append", type=_set_item, default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable; int/float/true/false/none/str), e.g. num_hidden_layers=2")
    p.add_argument("--method", choices=METHODS, default="full")
    p.add_argument("--rank", type=_pos_int, default=8)
    p.add_argument("--alpha", type=_pos_float, default=16.0)
    p.add_argument("--targets", default="q,v", help="comma-separated Linear names, or all-linear")
    p.add_argument("--double-quant", action="store_true")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--attention", choices=ATTENTIONS, default="sdpa")
    p.add_argument("--dropout", type=_prob, default=None, help="the model's own dropout (default: its config's)")
    p.add_argument("--lora-dropout", type=_prob, default=0.0, help="dropout on each adapter's input (lora, qlora)")
    p.add_argument("--adapter-dtype", choices=ADAPTER_DTYPES, default=None,
                   help="the adapters' dtype (lora, qlora); default fp32, cast with the model in pure bf16/fp16 (fp32 "
                        "there keeps them fp32, peft's default)")
    p.add_argument("--batch", type=_pos_int, default=1, help="rows per optimizer step (per GPU)")
    p.add_argument("--micro-batch", type=_pos_int, default=None,
                   help="rows per forward/backward: gradient accumulation over batch / micro-batch of them")
    p.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPLS, default="default",
                   help="torch's AdamW: default (for-loop on CPU, foreach on CUDA), for-loop, foreach or fused")
    p.add_argument("--no-set-to-none", dest="set_to_none", action="store_false",
                   help="zero_grad(set_to_none=False): zeroed gradients stay allocated through the step")
    p.add_argument("--seq", type=_pos_int, default=128)
    p.add_argument("--loss-dtype", choices=("fp32", "compute"), default=None,
                   help="causal LMs: cross-entropy on fp32 logits (transformers' upcast, its default) or on the "
                        "logits' own dtype (no effect under autocast, which runs the loss in fp32)")
    p.add_argument("--loss-chunk", type=_pos_int, default=None,
                   help="causal LMs: cross-entropy over chunks of N tokens (torchtune's CEWithChunkedOutputLoss, "
                        "litgpt's chunked_cross_entropy): one chunk's fp32 logits at a time (default: all tokens)")
    p.add_argument("--padding", action="store_true",
                   help="the batch has pad tokens, so an attention_mask with zeros goes in (dynamic padding); "
                        "without it the rows are full, as with packing")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--mode", choices=MODES, default="fake")
    p.add_argument("--semantics", choices=SEMANTICS, default="cuda")
    p.add_argument("--gpus", type=_pos_int, default=1)
    p.add_argument("--zero", type=int, choices=ZERO_STAGES, default=0)
    p.add_argument("--sharding", choices=SHARDINGS, default="flat",
                   help="how the states are split: flat (DeepSpeed-style), fsdp2 (zero=3), ddp (zero 0 or 1)")
    p.add_argument("--rank-index", type=int, default=0, help="which rank to predict (fsdp2, ddp differ by rank)")
    p.add_argument("--unit", choices=("auto", "MiB", "GiB"), default="auto")
    p.add_argument("--json", action="store_true", help="print JSON (integer bytes) instead of a table")
    p.add_argument("--emit", choices=("accelerate", "deepspeed"), default=None,
                   help="with estimate: print the launcher config of this spec instead (launchers.py)")
    p.add_argument("--gpu", choices=_GPU_NAMES, default=None,
                   help="the card: its SDPA kernel, bf16 support, nvidia-smi total (fits / does not fit)")
    p.add_argument("--reserved", action="store_true",
                   help="with estimate: trace the step with fake tensors to replay the reserved peak (a 7B "
                        "model takes ~10-15 s; --gpu implies it)")
    return p


_GPU_NAMES = tuple(name for s in GPUS for name in s.aliases)   # t4, v100, a10g, l4, a100-40gb, a100-80gb, h100, ...


def _estimate_view(a, run: RunSpec, est):
    """The three numbers of an estimate: reserved only when asked (--reserved, or --gpu)."""
    card = run.card()
    if not (card or a.reserved):
        return device_view.view_for_estimate(est, card)
    try:
        _, events = device_view.trace(card, run)
    except EstimateError as e:   # e.g. bitsandbytes optimizers: the trace cannot run them
        return device_view.view_for_estimate(est, card, why_not=f"the fake-tensor trace cannot run this step: {e}")
    return device_view.view_for_estimate(est, card, events)


# the command line's flags that are RunSpec fields (dest = field name); --set gives its overrides
RUN_FLAGS = ("model", "method", "rank", "alpha", "targets", "double_quant", "precision", "optimizer", "attention",
             "dropout", "lora_dropout", "adapter_dtype", "batch", "micro_batch", "set_to_none", "optimizer_impl", "seq",
             "checkpointing", "semantics", "gpus", "zero", "sharding", "rank_index", "gpu", "loss_dtype", "loss_chunk",
             "padding")


def run_spec(parser: argparse.ArgumentParser, a: argparse.Namespace, given: set) -> RunSpec:
    """The one RunSpec of the command line: --spec FILE (a saved spec, or a --json output holding one)
    with the flags ``given`` on the command line changed, else the flags; --set adds config overrides."""
    from .hf_models import parse_set
    try:
        overrides = parse_set(a.overrides)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    clash = sorted(set(overrides) & {*RUN_FLAGS, "mode", "head_trainable"})
    if clash:
        parser.exit(2, f"{parser.prog}: error: --set {clash[0]}=... names an argument of the estimator, not only a "
                       f"config field; use its own flag (--{clash[0].replace('_', '-')}) instead.\n")
    flags = {k: getattr(a, k) for k in RUN_FLAGS}
    if a.spec is None:
        return RunSpec(**flags, overrides=overrides)
    try:
        with open(a.spec) as f:
            base = RunSpec.from_dict(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
        parser.exit(2, f"{parser.prog}: error: --spec {a.spec}: cannot read a JSON run spec ({e}); give a file "
                       f"that --json wrote, or its \"spec\".\n")
    changes = {k: v for k, v in flags.items() if k in given}
    if overrides:
        changes["overrides"] = {**base.overrides, **overrides}
    return base.replace(**changes)


def _given(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set:
    """The destinations the command line names itself (not left at their defaults)."""
    saved = {act.dest: act.default for act in parser._actions}
    try:
        for act in parser._actions:
            act.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for act in parser._actions:
            act.default = saved[act.dest]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    a = parser.parse_args(argv)
    try:
        run = run_spec(parser, a, _given(parser, argv) if a.spec else set())
        if a.command != "estimate" and (run.sharding != "flat" or run.rank_index):
            parser.exit(2, f"{parser.prog}: error: --sharding and --rank-index predict one rank of a sharded run; "
                           "measure runs one process: use `python -m minigpt.memory.distributed` to run ranks.\n")
        spec_json = {"spec": run.to_dict()}
        if a.command == "estimate":
            est = estimate(run)
            if a.emit:   # the spec is valid (estimate did not raise): print its launch config
                from .launchers import emit
                print(emit(a.emit, gpus=run.gpus, zero=run.zero, batch=run.batch, precision=run.precision))
                return 0
            view = _estimate_view(a, run, est)
            print(json.dumps({**est.to_dict(), "device_view": view.to_dict(), **spec_json}, indent=2) if a.json
                  else est.table(a.unit) + "\n" + view.table(a.unit))
        elif a.command == "measure":
            rep, view = _measured_view(a, run)
            if a.json:
                out = {k: int(rep.buckets[k]) for k in BUCKETS}
                out.update(peak=int(rep.peak), peak_phase=rep.peak_phase, label=rep.label,
                           phases=rep.to_dict()["phases"], config={**run.to_dict(), "mode": a.mode},
                           device_view=view.to_dict(), mode=a.mode, **spec_json)
                print(json.dumps(out, indent=2))
            else:
                print(rep.table(a.unit) + "\n" + view.table(a.unit))
        else:
            est = estimate(run)
            rep, view = _measured_view(a, run, validated=True)
            print(json.dumps({**compare_dict(est, rep), "device_view": view.to_dict(), "mode": a.mode, **spec_json},
                             indent=2) if a.json else compare_table(est, rep, a.unit) + "\n" + view.table(a.unit))
    except EstimateError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except RuntimeError as e:   # e.g. --mode cuda without a GPU: measure_step says what to do
        parser.exit(2, f"{parser.prog}: error: {str(e).splitlines()[0]}\n")
    return 0


def _measured_view(a, run: RunSpec, validated: bool = False):
    """measure_step on the spec (with its events, under the card's SDPA kernel) and its three numbers."""
    if not validated:
        estimate(run)    # validates the spec against the model before anything is built
    card = run.card()
    rep, events = device_view.trace(card, run, mode=a.mode)
    nvml = device_view.nvml_used() if a.mode == "cuda" else None
    return rep, device_view.view_for_report(rep, card, events, nvml_used=nvml)
