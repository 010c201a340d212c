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
    """One training step to trace on fake tensors with simulated CUDA semantics: the theory files'
    names for a minigpt.memory RunSpec (``run_spec()``), which builds and measures it. The fields
    (and so the keys of theory/traces.json) are the ones the theory was written with."""
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

    def run_spec(self):
        """The same step as a RunSpec. A base loaded in 16 bits (``base_dtype``) without autocast is
        RunSpec's pure 16-bit precision; its adapters stay fp32 (``adapter_dtype="fp32"``) or are the
        base's ("base"). The adapters' alpha is 2r; ``dropout`` is LoRA's, ``model_dropout`` the model's."""
        from minigpt.memory import RunSpec
        kw = dict(model=self.model, method=self.method, batch=self.batch, seq=self.seq, precision=self.precision,
                  checkpointing=self.checkpointing, attention=self.attention, semantics=self.semantics,
                  dropout=self.model_dropout)
        lora = self.method in ("lora", "qlora")
        if self.base_dtype:
            if self.precision != "fp32":
                raise ValueError(f"base_dtype={self.base_dtype!r} is a 16-bit base without autocast; use "
                                 f"precision='fp32' with it (got {self.precision!r}).")
            kw["precision"] = self.base_dtype
            if lora:
                kw["adapter_dtype"] = self.base_dtype if self.adapter_dtype == "base" else "fp32"
        elif self.adapter_dtype != "fp32":
            raise ValueError(f"adapter_dtype={self.adapter_dtype!r} needs a 16-bit base; give base_dtype too.")
        from minigpt.memory.estimate import resolve_model
        head = ("classifier",) if self.method != "full" and resolve_model(self.model).task == "cls" else ()
        if tuple(self.trainable) != head:
            raise ValueError(f"trainable={self.trainable!r}: a run trains in full the head of a classifier (beside "
                             f"its adapters, or alone with method='head') and nothing else; use trainable={head!r}.")
        if lora:
            targets = self.targets if self.targets == ALL_LINEAR else tuple(self.targets)
            kw.update(rank=self.r, alpha=2 * self.r, targets=targets, lora_dropout=self.dropout)
        return RunSpec(**kw)


# The modules a trace executes (model, adapters, quantiser, the tracer and its CUDA rules, the zoo, the
# RunSpec and the builder of its model). The estimator (which measure only asks to validate the run),
# timeline.py, cli.py do not change a trace's bytes, so editing them keeps the cache valid.
TRACE_CODE = ("model.py", "families.py", "precision.py", "lora.py", "nf4.py", "repro.py", "memory/buckets.py",
              "memory/cuda_rules.py", "memory/compare.py", "memory/estimate/run.py",
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


def run_trace(spec: TraceSpec) -> dict:
    """minigpt.memory.measure of the spec's RunSpec on fake tensors; the report as plain integers."""
    from minigpt.memory.compare import measure
    from minigpt import nf4  # noqa: F401 - its code tables must be built outside FakeTensorMode
    d = measure(spec.run_spec(), mode="fake").to_dict()
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
