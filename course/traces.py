"""Fake-tensor traces of training steps, and their cache (theory/traces.json).

Traces take seconds each, so their results are kept in ``theory/traces.json`` with a hash of the code
that made them (the minigpt modules a trace runs, and the torch/transformers versions). A trace whose
hash no longer matches is recomputed: the check is then slower, never wrong. ``make docs`` refreshes
the file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from minigpt.paths import ROOT

TRACES_FILE = ROOT / "theory" / "traces.json"
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class TraceSpec:
    """One training step to trace on fake tensors with simulated CUDA semantics."""
    model: str                    # a minigpt.memory.zoo name
    batch: int
    seq: int
    precision: str = "amp-bf16"
    method: str = "full"          # "full" | "lora" | "qlora" | "head" (only `trainable` learns)
    r: int = 8
    targets: tuple = ("q_proj", "v_proj")
    trainable: tuple = ()         # modules trained in full next to the adapters (RoBERTa: classifier)
    dropout: float = 0.0          # LoRA dropout
    checkpointing: bool = False
    attention: str = "sdpa"
    semantics: str = "cuda"       # "cpu" only where the CUDA simulation cannot run (checkpointing)
    # Lab 05's extra mechanisms (transformers models). Left out of key() at their defaults, so the
    # cached traces of theory/traces.json keep their keys.
    base_dtype: str = ""          # "fp16"/"bf16": the base loaded in 16 bits (from_pretrained(torch_dtype=...))
    adapter_dtype: str = "fp32"   # LoRA A, B dtype: peft's default upcasts to fp32; "base" keeps the base's
    model_dropout: Optional[float] = None   # the model's own dropout (hidden and attention); None: config's

    def key(self) -> str:
        d = asdict(self)
        for k, default in (("base_dtype", ""), ("adapter_dtype", "fp32"), ("model_dropout", None)):
            if d[k] == default:
                del d[k]
        return json.dumps(d, sort_keys=True)


# The modules a trace executes (model, adapters, quantiser, the tracer and its CUDA rules, the zoo).
# estimate.py, timeline.py, cli.py are not run by a trace, so editing them keeps the cache valid.
TRACE_CODE = ("model.py", "families.py", "precision.py", "lora.py", "nf4.py", "repro.py", "memory/buckets.py",
              "memory/cuda_rules.py",
              "memory/measure.py", "memory/tracker.py", "memory/zoo.py")


def code_files() -> dict[str, str]:
    """sha256 (16 hex digits) of every file in TRACE_CODE, and of the library versions."""
    import transformers
    out = {f: hashlib.sha256((ROOT / "minigpt" / f).read_bytes()).hexdigest()[:16] for f in TRACE_CODE}
    out["versions"] = f"torch={torch.__version__} transformers={transformers.__version__}"
    return out


def _code_hash(files: Optional[dict] = None) -> str:
    """One hash of everything a trace's result depends on (see TRACE_CODE)."""
    files = files or code_files()
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def _build_for_trace(spec: TraceSpec):
    """The model of a trace, on the meta device (measure_step gives it fake tensors): a zoo model,
    optionally NF4-quantised (QLoRA), then LoRA-adapted."""
    from minigpt.lora import apply_lora
    from minigpt.memory.zoo import build
    from minigpt.repro import set_seed
    set_seed(0)
    overrides = {} if spec.model_dropout is None else dict(
        hidden_dropout_prob=spec.model_dropout, attention_probs_dropout_prob=spec.model_dropout)
    m = build(spec.model, device="meta", attn_implementation=spec.attention, **overrides)
    if spec.base_dtype:   # every floating parameter in 16 bits, as from_pretrained(torch_dtype=...) loads it
        from minigpt.memory.measure import cast_model   # (Module.to cannot swap tensors inside FakeTensorMode)
        cast_model(m, {"fp16": torch.float16, "bf16": torch.bfloat16}[spec.base_dtype])
    if spec.method == "head":   # no adapters: only the modules in `trainable` learn
        m.requires_grad_(False)
        for name in spec.trainable:
            m.get_submodule(name).requires_grad_(True)
    if spec.method == "qlora":
        from minigpt.nf4 import quantize_model
        from minigpt.precision import PRECISIONS
        p = PRECISIONS[spec.precision]
        compute = p.compute if p.autocast else torch.float32
        quantize_model(m, compute_dtype=compute)
    if spec.method in ("lora", "qlora"):
        targets = spec.targets if spec.targets == ALL_LINEAR else tuple(spec.targets)
        adapter_dtype = None if spec.adapter_dtype == "base" else torch.float32
        apply_lora(m, spec.r, 2 * spec.r, dropout=spec.dropout, targets=targets, trainable=spec.trainable,
                   adapter_dtype=adapter_dtype)
    return m


def run_trace(spec: TraceSpec) -> dict:
    """measure_step in fake mode with CUDA semantics; the report as plain integers."""
    from minigpt.memory import measure_step
    from minigpt.memory.zoo import make_batch
    from minigpt import nf4  # noqa: F401 - its code tables must be built outside FakeTensorMode
    batch = make_batch(spec.model, spec.batch, spec.seq)
    rep = measure_step(lambda: _build_for_trace(spec), batch, precision=spec.precision,
                       checkpointing=spec.checkpointing, mode="fake", semantics=spec.semantics)
    d = rep.to_dict()
    return {k: d[k] for k in ("peak", "buckets", "phases", "peak_phase", "label", "start",
                              "n_params", "n_trainable")}


class TraceStore:
    """Trace results by spec, from theory/traces.json when the code hash matches, else recomputed."""

    def __init__(self, path: Path = TRACES_FILE):
        self.path = path
        self.files = code_files()
        self.hash = _code_hash(self.files)
        self.saved: dict = {}
        self.changed: list[str] = []           # files whose code differs from the cached traces'
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("code_hash") == self.hash:
                self.saved = data.get("traces", {})
            else:
                old = data.get("code_files", {})
                self.changed = sorted(k for k in self.files if old.get(k) != self.files[k])
        self.used: dict = {}
        self.recomputed: list[str] = []

    def get(self, spec: TraceSpec) -> dict:
        k = spec.key()
        if k not in self.used:
            if k in self.saved:
                self.used[k] = self.saved[k]
            else:
                self.used[k] = run_trace(spec)
                self.recomputed.append(k)
        return self.used[k]

    def write(self) -> None:
        data = {"about": "minigpt.memory.measure_step(mode='fake', semantics='cuda') reports used by "
                         "the theory files; written by `make docs`. Integer bytes.",
                "code_hash": self.hash, "code_files": self.files, "traces": dict(sorted(self.used.items()))}
        self.path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


_STORE: Optional[TraceStore] = None


def store() -> TraceStore:
    global _STORE
    if _STORE is None:
        _STORE = TraceStore()
    return _STORE


def trace(**kw) -> dict:
    return store().get(TraceSpec(**kw))


def _final_grads(t: dict) -> int:
    """Gradient bytes at the end of the step (the optimizer phase holds every .grad)."""
    return t["phases"]["optimizer"]["buckets"]["gradients"]
