"""Every computed figure of the theory files, produced from the package and written into the Markdown.

A theory file never holds a hand-typed figure. It marks each one with a pair of HTML comments, which
JupyterLab's Markdown renderer does not show:

    A 7B model needs <!-- gen:llama-7b.full.gib -->104.32 GiB<!-- /gen --> of model state.

    <!-- gen:table.footprint -->
    | ... a generated table ... |
    <!-- /gen -->

``python -m minigpt.docs`` (``make docs``) recomputes every region of ``theory/``, ``theory/es/`` and
``solutions/0N-*-ref.md`` and rewrites it; ``--check`` rewrites nothing, lists the stale regions and
exits 1. ``tests/test_theory.py`` runs the check, so a stale number fails ``make test``.

Where the figures come from:

* parameter counts: ``minigpt.model.parameter_count`` (and ``zoo.build(..., device="meta")``);
* LoRA counts: ``minigpt.lora.lora_parameter_count``;
* NF4 bytes: ``minigpt.nf4.nf4_nbytes`` (and ``quantize_nf4`` on a real tensor, in the tests);
* bytes per parameter: the dtype sizes torch reports (``element_size()``), per precision regime;
* memory of a training step: ``minigpt.memory.measure_step(mode="fake", semantics="cuda")``
  ("traced on fake tensors with simulated CUDA semantics"; checkpointing with ``semantics="cpu"``,
  labelled so); the closed-form tables (ZeRO, alignment) are "estimated" from the counts above.

Traces take seconds each, so their results are kept in ``theory/traces.json`` with a hash of the code
that made them (the minigpt modules a trace runs, and the torch/transformers versions). A trace whose
hash no longer matches is recomputed: the check is then slower, never wrong. ``make docs`` refreshes
the file.

Number style, the same in English and Spanish so the twins compare mechanically: a decimal point,
and digits grouped in threes with a narrow no-break space (U+202F), as SI and the RAE recommend.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .memory.buckets import BUCKETS, GB, GiB, MiB
from .model import parameter_count, preset_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "theory"
TRACES_FILE = THEORY / "traces.json"
THIN = "\u202f"  # narrow no-break space: groups digits in threes in both languages

REGION = re.compile(r"<!-- gen:(?P<name>[\w.:+/-]+) -->(?P<body>.*?)<!-- /gen -->", re.S)
LANGS = ("en", "es")


# ------------------------------------------------------------------------------------ formats
def num(n: int) -> str:
    """An exact integer, grouped in threes: 6 738 415 616 (narrow no-break spaces)."""
    s = f"{int(n):,}"
    return s.replace(",", THIN)


def fixed(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def gib(b: float, digits: int = 2) -> str:
    """Bytes in GiB (2**30 bytes)."""
    return f"{b / GiB:.{digits}f}{THIN}GiB"


def gb(b: float, digits: int = 1) -> str:
    """Bytes in GB (10**9 bytes)."""
    return f"{b / GB:.{digits}f}{THIN}GB"


def mib(b: float, digits: int = 1) -> str:
    """Bytes in MiB (2**20 bytes)."""
    return f"{b / MiB:.{digits}f}{THIN}MiB"


def auto(b: float) -> str:
    """GiB from 1 GiB up, else MiB; an empty bucket is 0, a few KiB are "< 0.1 MiB"."""
    if b == 0:
        return "0"
    if abs(b) < 0.05 * MiB:
        return f"<{THIN}0.1{THIN}MiB"
    return gib(b) if abs(b) >= GiB else mib(b)


def mb(b: float, digits: int = 1) -> str:
    """Bytes in MB (10**6 bytes)."""
    return f"{b / 1e6:.{digits}f}{THIN}MB"


def millions(n: float, digits: int = 2) -> str:
    return f"{n / 1e6:.{digits}f}{THIN}M"


def billions(n: float, digits: int = 2) -> str:
    return f"{n / 1e9:.{digits}f}{THIN}B"


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def times(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}×"


def table(header: list[str], rows: list[list[str]], align: Optional[str] = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one letter per column (l or r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tr(lang: str, en: str, es: str) -> str:
    """The same label in the reader's language."""
    return es if lang == "es" else en


# ----------------------------------------------------------------------------- dtype sizes
def nbytes_of(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype``, as torch reports it."""
    return torch.empty((), dtype=dtype).element_size()


FP32, FP16, BF16 = nbytes_of(torch.float32), nbytes_of(torch.float16), nbytes_of(torch.bfloat16)
# AdamW keeps two moments (exp_avg, exp_avg_sq) per parameter, in the parameter's dtype
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class Regime:
    """Bytes per trainable parameter in one precision regime (persistent state + step-time copies)."""
    key: str
    weights: int          # the parameter tensors the optimizer updates (fp32 master included)
    low_copy: int         # low-precision weight copies that live only during the step
    grads: int
    optimizer: int
    parts: tuple[tuple[str, int], ...] = ()   # the named terms of `weights` (for the formula)

    @property
    def persistent(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def peak(self) -> int:
        return self.persistent + self.low_copy


def regimes() -> dict[str, Regime]:
    """The four accountings of file 03, built from dtype sizes, never typed in."""
    return {
        # everything fp32
        "fp32": Regime("fp32", FP32, 0, FP32, ADAM_MOMENTS * FP32),
        # torch.autocast + GradScaler: fp32 parameters, fp32 .grad (autograd accumulates into the
        # parameter's dtype), fp32 moments; autocast makes fp16/bf16 copies of weights for the matmuls
        "amp": Regime("amp", FP32, FP16, FP32, ADAM_MOMENTS * FP32),
        # the accounting of Megatron/ZeRO (and the client's draft): fp16 model weights and
        # gradients, plus an fp32 master copy of the weights kept by the optimizer
        "fp16-master": Regime("fp16-master", FP16 + FP32, 0, FP16, ADAM_MOMENTS * FP32,
                              parts=(("fp16", FP16), ("fp32 master", FP32))),
        # pure bf16: weights, gradients and moments all bf16
        "bf16": Regime("bf16", BF16, 0, BF16, ADAM_MOMENTS * BF16),
    }


# -------------------------------------------------------------------------- parameter counts
MODELS = {"minigpt-85m": "MiniGPT-85M", "roberta-base": "RoBERTa-base", "llama-7b": "LLaMA-7B",
          "llama-13b": "LLaMA-13B", "llama-70b": "LLaMA-70B"}


@lru_cache(maxsize=None)
def n_params(model: str) -> int:
    """Parameters of a model of the zoo (closed form for minigpt shapes, meta build for RoBERTa)."""
    if model == "roberta-base":
        from .memory.zoo import build
        m = build("roberta-base", device="meta")
        return sum(p.numel() for p in m.parameters())
    return parameter_count(preset_config(model))


@lru_cache(maxsize=None)
def _lora_spec(model: str):
    if model == "roberta-base":
        from .memory.zoo import hf_config
        return hf_config("roberta-base")
    return preset_config(model)


TARGETS = {"qv": ("q_proj", "v_proj"), "all": "all-linear"}


@lru_cache(maxsize=None)
def n_lora(model: str, targets: str, r: int) -> int:
    """LoRA parameters (A and B) for ``targets`` "qv" (q and v projections) or "all" (all linear
    layers but the output head; RoBERTa's classifier head is trained in full, not adapted)."""
    from .lora import lora_parameter_count
    spec = _lora_spec(model)
    tgt = TARGETS[targets]
    trainable: tuple = ()
    if model == "roberta-base":
        tgt = ("query", "value") if targets == "qv" else tgt
        trainable = ("classifier",)
    return lora_parameter_count(spec, r, tgt, trainable)


@lru_cache(maxsize=None)
def n_head_roberta() -> int:
    """Parameters of RoBERTa's classification head (trained in full next to LoRA)."""
    from .memory.zoo import build
    m = build("roberta-base", device="meta")
    return sum(p.numel() for p in m.classifier.parameters())


# ------------------------------------------------------------------------------------ NF4
def nf4_bits(numel: int, blocksize: int = 64, double_quant: bool = False) -> float:
    from .nf4 import nf4_nbytes
    return 8 * nf4_nbytes(numel, blocksize, double_quant) / numel


BIG = 4096 * 4096      # one LLaMA-7B q_proj: large enough that the per-tensor constants vanish
NF4_BLOCK = 64         # QLoRA's block size (hyper-parameter)
DQ_BLOCK = 256         # double quantisation: scales per second-level block (bitsandbytes)


def all_linear_weights(model: str) -> int:
    """Weights of every linear layer, the LM head included: what autocast makes 16-bit copies of."""
    from .lora import lora_linear_shapes
    return sum(i * o for _, i, o in lora_linear_shapes(_lora_spec(model)))


def linear_weight_count(model: str) -> int:
    """Weights of the linear layers that QLoRA quantises (all but the head and embeddings)."""
    from .lora import lora_linear_shapes
    return sum(i * o for n, i, o in lora_linear_shapes(_lora_spec(model)) if n != "lm_head"
               and not n.startswith("classifier"))


# ---------------------------------------------------------------------------- quoted draft
# Figures exactly as the client's draft of file 03 (shared/seeds/001) prints them: quoted so the
# "Corrections" box can show them next to the computed values. Nothing is computed from them.
DRAFT = {
    "full7b": "112 GiB", "full7b_expr": "16 × 7e9", "lora_nlora": "19M", "lora_base": "14 GiB", "lora_base_expr": "2N",
    "lora_total": "14.3 GiB", "lora_adapters": "304 MiB", "nf4_per_weight": "0.56 N",
    "nf4_scale": "fp16", "qlora_base": "3.9 GiB", "qlora_total": "4.2 GiB", "dq_save": "~0.5 bytes",
    "ckpt": "~sqrt(L)", "mini_full": "~1.4 GiB", "mini_lora": "~200 MiB", "mini_qlora": "~80 MiB",
    "qlora_lt": "<6 GiB", "qlora_lt_text": "a 7B model fine-tunes in <6 GiB", "ratio_full_qlora": "~27×",
}


# ---------------------------------------------------------------------------- the traces
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
TRACE_CODE = ("model.py", "lora.py", "nf4.py", "repro.py", "memory/buckets.py", "memory/cuda_rules.py",
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
    from .lora import apply_lora
    from .memory.zoo import build
    from .repro import set_seed
    set_seed(0)
    overrides = {} if spec.model_dropout is None else dict(
        hidden_dropout_prob=spec.model_dropout, attention_probs_dropout_prob=spec.model_dropout)
    m = build(spec.model, device="meta", attn_implementation=spec.attention, **overrides)
    if spec.base_dtype:   # every floating parameter in 16 bits, as from_pretrained(torch_dtype=...) loads it
        from .memory.measure import cast_model   # (Module.to cannot swap tensors inside FakeTensorMode)
        cast_model(m, {"fp16": torch.float16, "bf16": torch.bfloat16}[spec.base_dtype])
    if spec.method == "head":   # no adapters: only the modules in `trainable` learn
        m.requires_grad_(False)
        for name in spec.trainable:
            m.get_submodule(name).requires_grad_(True)
    if spec.method == "qlora":
        from .nf4 import quantize_model
        compute = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}.get(spec.precision, torch.float32)
        quantize_model(m, compute_dtype=compute)
    if spec.method in ("lora", "qlora"):
        targets = spec.targets if spec.targets == ALL_LINEAR else tuple(spec.targets)
        adapter_dtype = None if spec.adapter_dtype == "base" else torch.float32
        apply_lora(m, spec.r, 2 * spec.r, dropout=spec.dropout, targets=targets, trainable=spec.trainable,
                   adapter_dtype=adapter_dtype)
    return m


def run_trace(spec: TraceSpec) -> dict:
    """measure_step in fake mode with CUDA semantics; the report as plain integers."""
    from .memory import measure_step
    from .memory.zoo import make_batch
    from . import nf4  # noqa: F401 - its code tables must be built outside FakeTensorMode
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


# Every trace the theory files use (one place, so `make docs` and the tests agree on the count).
ALL_LINEAR = "all-linear"
MINI = dict(model="minigpt-85m", batch=8, seq=512, precision="amp-bf16")
LLAMA = dict(model="llama-7b", batch=1, seq=512, precision="amp-bf16")
ADAPT = dict(r=8, targets=ALL_LINEAR)      # LoRA/QLoRA of the footprint table: r = 8, all-linear
# the learner's grid (file 03, lab 05): defined once, in minigpt.puzzle
from .puzzle import BATCH as ROBERTA_B, T_SHORT as ROBERTA_SHORT, SCALE as ROBERTA_SCALE  # noqa: E402
from .puzzle import LORA_SPEC as ROBERTA_LORA  # noqa: E402


def roberta(precision: str, method: str, scale: int = 1, batch: int = ROBERTA_B, attention: str = "sdpa") -> dict:
    """One run of the learner's grid (minigpt.puzzle.spec), from the trace cache."""
    from .puzzle import spec
    return store().get(spec(precision, method, scale, batch=batch, attention=attention))


def all_trace_specs() -> list[TraceSpec]:
    specs = [TraceSpec(**base, method=m, **(ADAPT if m != "full" else {}))
             for base in (MINI, LLAMA) for m in ("full", "lora", "qlora")]
    specs.append(TraceSpec(**MINI, method="lora"))          # q,v adapters: the activations paragraph
    specs += [TraceSpec(**MINI, semantics="cpu", checkpointing=c) for c in (False, True)]
    for precision in ("fp32", "amp-fp16"):
        for method in ("full", "lora"):
            for scale in (1, ROBERTA_SCALE):
                kw = dict(model="roberta-base", batch=ROBERTA_B, seq=ROBERTA_SHORT * scale, precision=precision)
                if method == "lora":
                    kw.update(ROBERTA_LORA)
                specs.append(TraceSpec(**kw))
    same_tokens = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    for attention in ("sdpa", "eager"):
        specs.append(TraceSpec(model="roberta-base", batch=same_tokens, seq=ROBERTA_SHORT * ROBERTA_SCALE,
                               precision="amp-fp16", attention=attention))
        if attention == "eager":
            specs.append(TraceSpec(model="roberta-base", batch=ROBERTA_B, seq=ROBERTA_SHORT,
                                   precision="amp-fp16", attention=attention))
    from .puzzle import mechanism_specs
    specs += list(mechanism_specs().values())               # lab 05's mechanisms (file 03, Q4)
    return specs


# ---------------------------------------------------------------------------- hardware
# GPU memory sizes quoted in the text (vendor specifications; nvidia-smi reports them in MiB):
# A100 80GB = 81920 MiB = 80 GiB; RTX 4090 / A10G = 24 GiB class.
GPUS = {"a100": 80 * GiB, "24": 24 * GiB}
ZERO_GPUS = 8                  # data-parallel GPUs in the sharding table (one 8-GPU node)
CKPT_T0 = 1.0                  # drill 03.4: seconds per step without checkpointing (given)
BACKWARD_OVER_FORWARD = 2      # backward does about twice the forward's matmul work


def _buckets_row(d: dict, lang: str) -> list[str]:
    return [auto(d["buckets"][k]) for k in BUCKETS]


BUCKET_TEXT = {
    "weights_trainable": ("parameters the optimizer updates", "parámetros que actualiza el optimizador"),
    "weights_frozen": ("parameters that stay fixed: a LoRA/QLoRA base, NF4 codes and scales",
                       "parámetros fijos: la base de LoRA/QLoRA, códigos y escalas NF4"),
    "weight_copies": ("casts of weights made during the step: autocast fp16/bf16 copies, dequantised NF4",
                      "conversiones de pesos hechas durante el paso: copias fp16/bf16 de autocast, NF4 decodificado"),
    "gradients": ("`.grad` of the trainable parameters", "`.grad` de los parámetros entrenables"),
    "optimizer": ("optimizer state: AdamW's two moments (and step counters)",
                  "estado del optimizador: los dos momentos de AdamW (y contadores de pasos)"),
    "activations": ("tensors autograd saved in forward for backward",
                    "tensores que autograd guarda en el forward para el backward"),
    "temporaries": ("everything else alive at that moment: inputs, outputs, workspaces",
                    "todo lo demás vivo en ese momento: entradas, salidas, espacios de trabajo"),
}
METHOD_TEXT = {"full": ("full", "completo"), "lora": ("LoRA", "LoRA"), "qlora": ("QLoRA", "QLoRA")}
BUCKET_SHORT = {"weights_trainable": ("trainable", "entrenables"), "weights_frozen": ("frozen", "congelados"),
                "weight_copies": ("copies", "copias"), "gradients": ("grads", "gradientes"),
                "optimizer": ("optimizer", "optimizador"), "activations": ("activations", "activaciones"),
                "temporaries": ("temporaries", "temporales")}


def _how(kind: str, lang: str) -> str:
    return {"trace": tr(lang, "traced (fake tensors, simulated CUDA)", "trazado (tensores falsos, CUDA simulada)"),
            "est": tr(lang, "estimated", "estimado")}[kind]


# ---------------------------------------------------------------------------- the figures
@lru_cache(maxsize=None)
def figures() -> dict[str, str]:
    """Every inline figure, by name; the same text in both languages."""
    f: dict[str, str] = {}
    R = regimes()
    amp, f16m, b16 = R["amp"], R["fp16-master"], R["bf16"]
    N7, N13 = n_params("llama-7b"), n_params("llama-13b")
    cfg7, cfg85 = preset_config("llama-7b"), preset_config("minigpt-85m")

    # sizes and counts
    for m in MODELS:
        f[f"n.{m}"] = num(n_params(m))
    f["llama-7b.d"] = num(cfg7.n_embd)
    f["minigpt.L"], f["minigpt.d"] = num(cfg85.n_layer), num(cfg85.n_embd)
    from .nf4 import NF4_CODE
    f["nf4.levels"] = str(NF4_CODE.numel())
    f["bytes.bf16"], f["bytes.fp16"], f["bytes.fp32"] = str(BF16), str(FP16), str(FP32)
    f["amp.persistent"], f["amp.peak"] = str(amp.persistent), str(amp.peak)
    f["formula.fp16master"] = (f"$({FP16} + {FP32}) + {FP16} + {ADAM_MOMENTS} \\times {FP32} = "
                               f"{f16m.persistent}$")
    f["formula.bf16"] = f"${BF16} + {BF16} + {ADAM_MOMENTS} \\times {BF16} = {b16.persistent}$"
    f["llama-7b.infer.gib"] = gib(BF16 * N7)
    f["llama-7b.amp.persistent.gib"] = gib(amp.persistent * N7)
    f["llama-7b.amp.persistent"] = f"{gb(amp.persistent * N7)} = {gib(amp.persistent * N7)}"
    peak7 = amp.persistent * N7 + amp.low_copy * all_linear_weights("llama-7b")   # copies: linear weights only
    f["llama-7b.amp.peak"] = f"{gb(peak7)} = {gib(peak7)}"
    f["llama-7b.amp.vs.infer"] = times(amp.persistent / BF16, 0)
    f["gpu.a100"] = gib(GPUS["a100"], 0)
    f["gpu.24"] = gib(GPUS["24"], 0)
    f["zero.G"] = str(ZERO_GPUS)

    # LoRA counts
    for m in ("minigpt-85m", "roberta-base", "llama-7b", "llama-13b"):
        for t in ("qv", "all"):
            for r in (8, 16):
                n = n_lora(m, t, r)
                f[f"n.lora.{m}.{t}{r}"] = num(n)
                f[f"pct.lora.{m}.{t}{r}"] = pct(n / n_params(m), 3)
    f["n.lora.l7b.qv8"], f["pct.lora.l7b.qv8"] = f["n.lora.llama-7b.qv8"], f["pct.lora.llama-7b.qv8"]
    f["n.lora.l7b.all16"] = f["n.lora.llama-7b.all16"]
    f["lora.l7b.qv8.m"] = millions(n_lora("llama-7b", "qv", 8))
    f["lora.l7b.all8.m"] = millions(n_lora("llama-7b", "all", 8))
    f["lora.rob.qv8"] = num(n_lora("roberta-base", "qv", 8))
    f["roberta.head"] = num(n_head_roberta())
    d = cfg7.n_embd
    f["lora.q7b.full"] = num(d * d)
    from .lora import lora_parameter_count
    q8 = lora_parameter_count([(d, d)], 8)            # one (in, out) shape, closed form
    f["lora.q7b.r8"] = num(q8)
    f["lora.q7b.ratio"] = pct(q8 / (d * d))

    # NF4
    bits, dq_bits = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    f["nf4.bits"] = fixed(bits, 3)
    f["nf4.formula"] = f"$4 + \\frac{{{8 * FP32}}}{{{NF4_BLOCK}}}$"
    f["nf4.bytes"] = fixed(bits / 8, 4)
    fp16_scale_bytes = 0.5 + FP16 / NF4_BLOCK
    f["nf4.bytes.fp16scales"] = fixed(fp16_scale_bytes, 5)
    f["nf4.dq.bits"] = fixed(dq_bits, 3)
    f["nf4.dq.saving.bits"] = fixed(bits - dq_bits, 3)
    f["nf4.dq.saving.bytes"] = fixed((bits - dq_bits) / 8, 4)
    lin7 = linear_weight_count("llama-7b")
    f["nf4.dq.saving.l7b"] = mib(lin7 * (bits - dq_bits) / 8, 0)

    # traces: LLaMA-7B and MiniGPT-85M
    l_full, l_lora = trace(**LLAMA), trace(**LLAMA, method="lora", **ADAPT)
    m_full, m_lora, m_qlora = trace(**MINI), trace(**MINI, method="lora", **ADAPT), trace(**MINI, method="qlora", **ADAPT)
    f["trace.l7b.full.peak"] = gib(l_full["peak"])
    f["trace.l7b.full.perparam"] = fixed(l_full["peak"] / N7, 1)
    f["trace.l7b.lora.peak"] = gib(l_lora["peak"])
    f["trace.l7b.lora.copies"] = gib(l_lora["buckets"]["weight_copies"])
    f["trace.l7b.qlora.peak"] = gib(trace(**LLAMA, method="qlora", **ADAPT)["peak"])
    act = lambda t: t["phases"]["forward"]["buckets"]["activations"]  # noqa: E731 - end of forward
    f["trace.mini.full.act"] = gib(act(m_full))
    f["trace.mini.lora.act"] = gib(act(m_lora))
    f["trace.mini.lora.act.ratio"] = pct(act(m_lora) / act(m_full), 0)
    m_qv = trace(**MINI, method="lora")
    f["trace.mini.loraqv.act"] = gib(act(m_qv))
    f["trace.mini.loraqv.act.ratio"] = pct(act(m_qv) / act(m_full), 0)
    f["trace.mini.lora.vs.full"] = pct(m_lora["peak"] / m_full["peak"], 0)
    f["trace.mini.qlora.vs.lora"] = pct(m_qlora["peak"] / m_lora["peak"], 0)
    f["mini.shape"] = f"$B$ = {MINI['batch']}, $T$ = {MINI['seq']}"
    f["llama.shape"] = f"$B$ = {LLAMA['batch']}, $T$ = {LLAMA['seq']}"

    # attention: same tokens, two shapes
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    e_short = roberta("amp-fp16", "full", 1, attention="eager")
    e_long = roberta("amp-fp16", "full", ROBERTA_SCALE, batch=long_b, attention="eager")
    f["attn.eager.extra"] = auto(e_long["peak"] - e_short["peak"])
    f["attn.short"] = f"{ROBERTA_B} × {ROBERTA_SHORT}"
    f["attn.long"] = f"{long_b} × {ROBERTA_SHORT * ROBERTA_SCALE}"

    # checkpointing: traced with CPU kernel semantics (the CUDA simulation cannot recompute blocks yet)
    c0, c1 = trace(**MINI, semantics="cpu"), trace(**MINI, semantics="cpu", checkpointing=True)
    f["ckpt.act"], f["ckpt.act.on"] = gib(act(c0)), gib(act(c1))
    f["ckpt.factor"] = times(act(c0) / act(c1))
    f["ckpt.peak"], f["ckpt.peak.on"] = gib(c0["peak"]), gib(c1["peak"])
    f["ckpt.compute"] = pct(1 / (1 + BACKWARD_OVER_FORWARD), 0)

    # learner
    f["learner.B"], f["learner.T"] = str(ROBERTA_B), str(ROBERTA_SHORT)
    f["learner.T8"], f["learner.scale"] = str(ROBERTA_SHORT * ROBERTA_SCALE), str(ROBERTA_SCALE)
    f["learner.lora.dropout"] = str(ROBERTA_LORA["dropout"])
    from .memory.zoo import HF_CONFIGS
    f["learner.model.dropout"] = str(_roberta_dropout())
    g = {(p, m, s): roberta(p, m, s) for p in ("fp32", "amp-fp16") for m in ("full", "lora")
         for s in (1, ROBERTA_SCALE)}
    full32s, full32l = g["fp32", "full", 1], g["fp32", "full", ROBERTA_SCALE]
    f["learner.grads"] = auto(_final_grads(full32s))
    f["learner.act.fp32.full.short"] = gib(act(full32s))
    f["learner.act.fp32.full.long"] = gib(act(full32l))
    f["learner.act.growth"] = fixed(act(full32l) / act(full32s), 1)
    f["learner.amp.saving.short"] = pct(1 - g["amp-fp16", "full", 1]["peak"] / full32s["peak"], 0)
    f["learner.amp.saving.long"] = pct(1 - g["amp-fp16", "full", ROBERTA_SCALE]["peak"] / full32l["peak"], 0)
    f["learner.peak.amp.lora.long"] = gib(g["amp-fp16", "lora", ROBERTA_SCALE]["peak"])
    f["learner.peak.amp.full.long"] = gib(g["amp-fp16", "full", ROBERTA_SCALE]["peak"])
    sf, sl = g["amp-fp16", "full", ROBERTA_SCALE]["start"], g["amp-fp16", "lora", ROBERTA_SCALE]["start"]
    states = lambda s: sum(s.get(k, 0) for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))  # noqa: E731
    f["learner.states.saved"] = gib(states(sf) - states(sl))
    f.update(lab05_figures())

    # corrections to the draft
    for k, v in DRAFT.items():
        f[f"draft.{k}"] = v
    f["fix.full7b"] = f"{gb(16 * 7e9)} = {gib(16 * 7e9)}"
    f["fix.full7b.true"] = f"{amp.persistent}N = {gb(amp.persistent * N7)} = {gib(amp.persistent * N7)}"
    f["fix.lora_base"] = f"{gb(BF16 * N7)} = {gib(BF16 * N7)}"
    f["fix.lora_base.amp"] = gib(FP32 * N7 + BF16 * all_linear_weights("llama-7b"))
    f["fix.lora_base.draft"] = f"2 × 7e9 B = {gb(2 * 7e9)} = {gib(2 * 7e9)}"
    f["fix.lora_adapters.draft"] = f"16 × 19e6 B = {mb(16 * 19e6)} = {mib(16 * 19e6)}"
    f["fix.qlora_base.draft"] = f"0.56 × 7e9 B = {gb(0.56 * 7e9, 2)} = {gib(0.56 * 7e9)}"
    f["fix.lora_adapters"] = mib(amp.persistent * n_lora("llama-7b", "all", 8))
    f["fix.lora_adapters.qv"] = mib(amp.persistent * n_lora("llama-7b", "qv", 8))
    f["fix.nf4"] = f"0.5 + {FP32}/{NF4_BLOCK} = {fixed(bits / 8, 4)}"
    f["fix.nf4.ratio"] = times(BF16 / (bits / 8), 2)
    from .nf4 import nf4_nbytes
    shapes = [(n, i, o) for n, i, o in _linears("llama-7b")]
    nf4_total = sum(nf4_nbytes(i * o) for n, i, o in shapes if n != "lm_head")
    rest = N7 - lin7
    f["fix.qlora_base"] = gib(nf4_total + BF16 * rest)
    qlora_states = nf4_total + BF16 * rest + amp.persistent * n_lora("llama-7b", "all", 8)
    f["fix.ratio"] = times(amp.persistent * N7 / qlora_states, 0)
    f["fix.qlora_states"] = gib(qlora_states)
    f["fix.mini.states"] = ", ".join(
        auto(states(t["start"])) for t in (m_full, m_lora, m_qlora))
    for k, v in alignment_bytes().items():
        f[f"align.{k}.gib"] = gib(v)
    f.update(drill_figures())
    return f


def _linears(model: str) -> list[tuple[str, int, int]]:
    from .lora import lora_linear_shapes
    return lora_linear_shapes(_lora_spec(model))


def _roberta_dropout() -> float:
    from .memory.zoo import hf_config
    return hf_config("roberta-base").hidden_dropout_prob


def _final_grads(t: dict) -> int:
    """Gradient bytes at the end of the step (the optimizer phase holds every .grad)."""
    return t["phases"]["optimizer"]["buckets"]["gradients"]


# ---------------------------------------------------------------------------- lab 05
def _mechanisms() -> dict[str, dict]:
    from .puzzle import mechanism_specs
    return {name: store().get(s) for name, s in mechanism_specs().items()}


@lru_cache(maxsize=None)
def _lab05_padded() -> float:
    """Mean padded length of batches of the learner's size, in lab 05's byte-level BPE tokens."""
    from .puzzle import BATCH, padded_lengths, token_lengths
    return padded_lengths(token_lengths("train"), BATCH, cap=None).float().mean().item()


def lab05_figures() -> dict[str, str]:
    """The results of lab 05 (solutions/05-the-fp16-lora-puzzle.ipynb) that file 03 cites."""
    from .puzzle import all_linear_name, attention_scores_bytes, fp32_adapter_extra_bytes, forward_activations
    from .memory.zoo import hf_config
    f: dict[str, str] = {}
    mech, S = _mechanisms(), ROBERTA_SCALE
    f["lab05.padded"] = fixed(_lab05_padded(), 1)
    # eager attention: extra activations per extra score element, same tokens (file 03, Q2)
    cfg = hf_config("roberta-base")
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * S)
    e_s = roberta("amp-fp16", "full", 1, attention="eager")
    e_l = roberta("amp-fp16", "full", S, batch=long_b, attention="eager")
    elements = cfg.num_hidden_layers * (attention_scores_bytes(long_b, cfg.num_attention_heads, ROBERTA_SHORT * S, 1)
                                        - attention_scores_bytes(ROBERTA_B, cfg.num_attention_heads, ROBERTA_SHORT, 1))
    f["lab05.eager.perscore"] = fixed((forward_activations(e_l) - forward_activations(e_s)) / elements, 2)
    # fp32 adapters on an fp16 base (Q4): the traced difference, and the formula it equals
    extra = (forward_activations(mech["fp16 base, fp32 adapters"])
             - forward_activations(mech["fp16 base, fp16 adapters"]))
    n_adapted = cfg.num_hidden_layers * len(ROBERTA_LORA["targets"])
    assert extra == fp32_adapter_extra_bytes(ROBERTA_B, ROBERTA_SHORT * S, cfg.hidden_size, ROBERTA_LORA["r"],
                                             n_adapted), "the formula of file 03 must equal the traced difference"
    f["lab05.fp32ad.extra"] = auto(extra)
    f["lab05.fp32ad.formula"] = f"$(4 - 2) \\times B\\,T\\,(d + r)$"
    f["lab05.allx.amp.long"] = gib(mech[all_linear_name("amp-fp16", S)]["peak"])
    f["lab05.allx.fp32.long"] = gib(mech[all_linear_name("fp32", S)]["peak"])
    f["lab05.full.fp32.long"] = gib(roberta("fp32", "full", S)["peak"])
    f["lab05.head.peak"] = auto(mech["fp16 head only (no adapters)"]["peak"])
    return f


def t_lab05(lang: str) -> str:
    """Lab 05's mechanisms: LoRA's peak against full fine-tuning's in the same precision."""
    from .puzzle import all_linear_name
    mech, S = _mechanisms(), ROBERTA_SCALE
    amp_full, fp32_full = roberta("amp-fp16", "full", S)["peak"], roberta("fp32", "full", S)["peak"]
    fp16_full = mech["pure fp16 full"]["peak"]
    rows_spec = [
        (("fp16 (AMP), LoRA q,v (the learner's)", "fp16 (AMP), LoRA q,v (la del estudiante)"),
         roberta("amp-fp16", "lora", S)["peak"], amp_full),
        (("fp16 (AMP), LoRA q,v, LoRA dropout 0", "fp16 (AMP), LoRA q,v, dropout de LoRA 0"),
         mech["fp16 LoRA, LoRA dropout 0"]["peak"], amp_full),
        (("fp16 (AMP), classifier head only (no adapters)", "fp16 (AMP), solo la cabeza (sin adaptadores)"),
         mech["fp16 head only (no adapters)"]["peak"], amp_full),
        (("fp16 (AMP), LoRA all-linear", "fp16 (AMP), LoRA en todas las lineales"),
         mech[all_linear_name("amp-fp16", S)]["peak"], amp_full),
        (("fp32, LoRA all-linear", "fp32, LoRA en todas las lineales"), mech[all_linear_name("fp32", S)]["peak"], fp32_full),
        (("fp16 base, fp32 adapters (peft's default)", "base fp16, adaptadores fp32 (por defecto en peft)"),
         mech["fp16 base, fp32 adapters"]["peak"], fp16_full),
        (("fp16 base, fp16 adapters", "base fp16, adaptadores fp16"), mech["fp16 base, fp16 adapters"]["peak"], fp16_full),
    ]
    rows = [[tr(lang, *name), gib(lora), gib(full), pct(lora / full, 0)] for name, lora, full in rows_spec]
    T = ROBERTA_SHORT * S
    head = [tr(lang, f"setup ($T$ = {T})", f"montaje ($T$ = {T})"), tr(lang, "peak", "pico"),
            tr(lang, "full fine-tuning, same precision", "ajuste completo, misma precisión"),
            tr(lang, "LoRA / full", "LoRA / completo")]
    return table(head, rows)


# ---------------------------------------------------------------------------- the tables
def t_buckets(lang: str) -> str:
    rows = [[f"`{k}`", tr(lang, *BUCKET_TEXT[k])] for k in BUCKETS]
    return table([tr(lang, "bucket", "cubeta"), tr(lang, "what it holds", "qué contiene")], rows, "ll")


def t_regimes(lang: str) -> str:
    names = {"fp32": ("fp32", "fp32"), "amp": ("AMP (`torch.autocast`)", "AMP (`torch.autocast`)"),
             "fp16-master": ("fp16 + fp32 master (ZeRO, draft)", "fp16 + maestra fp32 (ZeRO, borrador)"),
             "bf16": ("pure bf16", "bf16 puro")}
    rows = []
    for k, r in regimes().items():
        w = " + ".join(str(b) for _, b in r.parts) if r.parts else str(r.weights)
        rows.append([tr(lang, *names[k]), w, str(r.grads), f"{ADAM_MOMENTS} × {r.optimizer // ADAM_MOMENTS}",
                     f"**{r.persistent}**", str(r.low_copy), f"**{r.peak}**"])
    head = [tr(lang, "regime", "régimen"), tr(lang, "weights", "pesos"), tr(lang, "gradients", "gradientes"),
            tr(lang, "AdamW moments", "momentos AdamW"), tr(lang, "persistent", "persistente"),
            tr(lang, "16-bit copies in the step", "copias de 16 bits en el paso"), tr(lang, "peak", "pico")]
    return tr(lang, "Bytes per trainable parameter (the 16-bit copies: per weight of a linear layer).\n\n",
              "Bytes por parámetro entrenable (las copias de 16 bits: por peso de una capa lineal).\n\n") + table(head, rows)


def t_frozen(lang: str) -> str:
    bits, dq = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    N7 = n_params("llama-7b")
    lin = linear_weight_count("llama-7b")
    rows = [["fp32", str(FP32), fixed(8 * FP32, 3), gib(FP32 * lin)],
            ["bf16 / fp16", str(BF16), fixed(8 * BF16, 3), gib(BF16 * lin)],
            [tr(lang, "fp32 under AMP (+ 16-bit copies in the step)", "fp32 con AMP (+ copias de 16 bits en el paso)"),
             f"{FP32} + {BF16}", fixed(8 * (FP32 + BF16), 3), gib((FP32 + BF16) * lin)],
            [tr(lang, "NF4, fp32 absmax per 64 (`bitsandbytes`)", "NF4, absmax fp32 cada 64 (`bitsandbytes`)"),
             fixed(bits / 8, 4), fixed(bits, 3), gib(bits / 8 * lin)],
            [tr(lang, "NF4 + double quantisation", "NF4 + doble cuantización"), fixed(dq / 8, 4), fixed(dq, 3),
             gib(dq / 8 * lin)]]
    head = [tr(lang, "frozen weights stored as", "pesos congelados guardados como"),
            tr(lang, "bytes/weight", "bytes/peso"), tr(lang, "bits/weight", "bits/peso"),
            tr(lang, f"LLaMA-7B linear layers ({num(lin)} weights)",
               f"capas lineales de LLaMA-7B ({num(lin)} pesos)")]
    return table(head, rows)


def t_nlora(lang: str) -> str:
    rows = []
    for m in ("minigpt-85m", "roberta-base", "llama-7b"):
        N = n_params(m)
        cells = [f"{num(n_lora(m, t, r))} ({pct(n_lora(m, t, r) / N, 3)})" for t in ("qv", "all") for r in (8, 16)]
        rows.append([MODELS[m], num(N)] + cells)
    head = [tr(lang, "model", "modelo"), "$N$", "q,v $r=8$", "q,v $r=16$", "all-linear $r=8$", "all-linear $r=16$"]
    return table(head, rows)


def t_attention(lang: str) -> str:
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    rows = []
    for attention in ("sdpa", "eager"):
        s = roberta("amp-fp16", "full", 1, attention=attention)
        l = roberta("amp-fp16", "full", ROBERTA_SCALE, batch=long_b, attention=attention)  # noqa: E741
        name = tr(lang, "fused (SDPA)", "fusionada (SDPA)") if attention == "sdpa" else tr(lang, "eager", "explícita (eager)")
        for shape, t in ((f"{ROBERTA_B} × {ROBERTA_SHORT}", s), (f"{long_b} × {ROBERTA_SHORT * ROBERTA_SCALE}", l)):
            rows.append([name, shape, gib(t["phases"]["forward"]["buckets"]["activations"]), gib(t["peak"])])
    head = [tr(lang, "attention", "atención"), "$B \\times T$", tr(lang, "activations (end of forward)",
            "activaciones (fin del forward)"), tr(lang, "peak", "pico")]
    return table(head, rows)


def t_zero(lang: str) -> str:
    N, G = n_params("llama-7b"), ZERO_GPUS
    w, g, k = FP16, FP16, FP32 + ADAM_MOMENTS * FP32      # ZeRO's 2 + 2 + K, K = 12
    stages = [(0, w + g + k), (1, w + g + k / G), (2, w + (g + k) / G), (3, (w + g + k) / G)]
    names = {0: tr(lang, "no sharding (DDP)", "sin partición (DDP)"),
             1: tr(lang, "ZeRO-1: optimizer state", "ZeRO-1: estado del optimizador"),
             2: tr(lang, "ZeRO-2: + gradients", "ZeRO-2: + gradientes"),
             3: tr(lang, "ZeRO-3 / FSDP `FULL_SHARD`: + weights", "ZeRO-3 / FSDP `FULL_SHARD`: + pesos")}
    rows = [[names[s], fixed(b, 2), gib(b * N)] for s, b in stages]
    head = [tr(lang, "stage", "etapa"), tr(lang, "bytes/parameter per GPU", "bytes/parámetro por GPU"),
            tr(lang, "LLaMA-7B per GPU", "LLaMA-7B por GPU")]
    return table(head, rows)


def _footprint_rows(lang: str) -> list[list[str]]:
    rows = []
    for model, base in (("minigpt-85m", MINI), ("llama-7b", LLAMA)):
        for method in ("full", "lora", "qlora"):
            d, how = trace(**base, method=method, **(ADAPT if method != "full" else {})), "trace"
            rows.append([MODELS[model], tr(lang, *METHOD_TEXT[method])] + _buckets_row(d, lang)
                        + [f"**{auto(d['peak'])}**", _how(how, lang)])
    return rows


def t_footprint(lang: str) -> str:
    head = ([tr(lang, "model", "modelo"), tr(lang, "method", "método")]
            + [tr(lang, *BUCKET_SHORT[k]) for k in BUCKETS] + [tr(lang, "peak", "pico"), tr(lang, "how", "cómo")])
    return table(head, _footprint_rows(lang), "ll" + "r" * (len(BUCKETS) + 1) + "l")


def t_learner(lang: str) -> str:
    rows = []
    for p in ("fp32", "amp-fp16"):
        for s in (1, ROBERTA_SCALE):
            full, lora = roberta(p, "full", s), roberta(p, "lora", s)
            for name, t in (("full", full), ("lora", lora)):
                b = t["phases"]["forward"]["buckets"]
                rows.append([tr(lang, "fp16 (AMP)", "fp16 (AMP)") if p == "amp-fp16" else "fp32",
                             str(ROBERTA_SHORT * s), tr(lang, *{"full": ("full", "completo"), "lora": ("LoRA", "LoRA")}[name]),
                             auto(sum(t["start"][k] for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))),
                             auto(b["activations"]), auto(b["weight_copies"]), f"**{gib(t['peak'])}**"])
    head = [tr(lang, "precision", "precisión"), "$T$", tr(lang, "method", "método"),
            tr(lang, "model states", "estados del modelo"), tr(lang, "activations (end of forward)", "activaciones (fin del forward)"),
            tr(lang, "weight copies", "copias de pesos"), tr(lang, "peak", "pico")]
    return table(head, rows, "lrlrrrr")


def t_alignment(lang: str) -> str:
    N = n_params("llama-7b")
    nl = n_lora("llama-7b", "all", 16)
    amp = regimes()["amp"]
    T, F = amp.persistent * N, BF16 * N            # a trained copy, a frozen bf16 copy
    A = amp.persistent * nl                        # one adapter with its grads and moments
    rows_spec = [  # (method, setup, trained copies, frozen copies, adapters, bytes)
        ("SFT", tr(lang, "full", "completo"), 1, 0, 0),
        ("SFT", "LoRA", 0, 1, 1),
        ("DPO", tr(lang, "full", "completo"), 1, 1, 0),
        ("DPO", tr(lang, "LoRA (reference = adapters off)", "LoRA (referencia = adaptadores desactivados)"), 0, 1, 1),
        ("RLHF (PPO)", tr(lang, "full", "completo"), 2, 2, 0),
        ("RLHF (PPO)", tr(lang, "LoRA (policy, value: adapters; + reward)", "LoRA (política, valor: adaptadores; + recompensa)"), 0, 2, 2),
    ]
    rows = [[m, s, str(t), str(fz), str(a), gib(t * T + fz * F + a * A)] for m, s, t, fz, a in rows_spec]
    head = [tr(lang, "method", "método"), tr(lang, "setup", "montaje"), tr(lang, "trained copies", "copias entrenadas"),
            tr(lang, "frozen bf16 copies", "copias bf16 congeladas"), tr(lang, "adapters", "adaptadores"),
            tr(lang, "model states (estimated)", "estados del modelo (estimado)")]
    return table(head, rows, "llrrrr")


def alignment_bytes() -> dict[str, float]:
    N, nl, amp = n_params("llama-7b"), n_lora("llama-7b", "all", 16), regimes()["amp"]
    T, F, A = amp.persistent * N, BF16 * N, amp.persistent * nl
    return {"sft.full": T, "sft.lora": F + A, "dpo.full": T + F, "dpo.lora": F + A,
            "ppo.full": 2 * T + 2 * F, "ppo.lora": 2 * F + 2 * A}


TABLES: dict[str, Callable[[str], str]] = {
    "table.buckets": t_buckets, "table.regimes": t_regimes, "table.frozen": t_frozen, "table.nlora": t_nlora,
    "table.attention": t_attention, "table.zero": t_zero, "table.footprint": t_footprint,
    "table.learner": t_learner, "table.alignment": t_alignment, "table.lab05": t_lab05,
}


# ---------------------------------------------------------------------------- drill solutions
def drill_figures() -> dict[str, str]:
    """The arithmetic of solutions/0N-*-ref.md (names start with the file number)."""
    f: dict[str, str] = {}
    R = regimes()
    amp = R["amp"]
    N7, N13, N85 = n_params("llama-7b"), n_params("llama-13b"), n_params("minigpt-85m")
    c13, c7, c85 = preset_config("llama-13b"), preset_config("llama-7b"), preset_config("minigpt-85m")
    # 01.1
    f["d01.n13"] = num(N13)
    f["d01.infer13"] = f"{BF16} × {num(N13)} = {num(BF16 * N13)} B = {gib(BF16 * N13)}"
    f["d01.full13"] = f"{amp.persistent} × {num(N13)} = {num(amp.persistent * N13)} B = {gib(amp.persistent * N13)}"
    f["d01.ratio13"] = f"{amp.persistent} / {BF16} = {times(amp.persistent / BF16, 0)}"
    # 01.2
    n = n_lora("minigpt-85m", "qv", 8)
    f["d01.mini.L"], f["d01.mini.d"] = num(c85.n_layer), num(c85.n_embd)
    assert c85.n_layer * 2 * 8 * (2 * c85.n_embd) == n, "the worked formula must equal lora_parameter_count"
    f["d01.mini.nlora"] = (f"{c85.n_layer} × 2 × 8 × ({c85.n_embd} + {c85.n_embd}) = {num(n)}")
    f["d01.mini.frac"] = f"{num(n)} / {num(N85)} = {pct(n / N85, 3)}"
    # 01.3
    f["d01.factor"] = f"{amp.peak} / {BF16} = {times(amp.peak / BF16, 0)}"
    f["d01.amp.peak"] = str(amp.peak)
    # 02.1: LLaMA-13B all-linear r=16, by hand
    d, h, L = c13.n_embd, c13.hidden, c13.n_layer
    per_layer = 4 * (d + d) + 2 * (d + h) + (h + d)
    f["d02.13.shapes"] = f"$d$ = {num(d)}, $f$ = {num(h)}, $L$ = {num(L)}"
    f["d02.13.perlayer"] = f"4 × ({num(d)} + {num(d)}) + 3 × ({num(d)} + {num(h)}) = {num(per_layer)}"
    f["d02.13.total"] = f"16 × {num(L)} × {num(per_layer)} = {num(16 * L * per_layer)}"
    assert 4 * (d + d) + 3 * (d + h) == per_layer
    f["d02.13.check"] = num(n_lora("llama-13b", "all", 16))
    f["d02.13.ok"] = "True" if 16 * L * per_layer == n_lora("llama-13b", "all", 16) else "False"
    # 02.2: gate_proj of LLaMA-7B
    d7, h7 = c7.n_embd, c7.hidden
    f["d02.gate.shape"] = f"{num(d7)} → {num(h7)}"
    f["d02.gate.full"] = f"{num(d7)} × {num(h7)} = {num(d7 * h7)}"
    from .lora import lora_parameter_count
    gate = lora_parameter_count([(d7, h7)], 8)
    f["d02.gate.lora"] = f"8 × ({num(d7)} + {num(h7)}) = {num(gate)}"
    f["d02.gate.frac"] = pct(gate / (d7 * h7), 3)
    # 02.4: r(d + d) = d*d -> r = d/2
    f["d02.square.r"] = f"$r = d/2$ = {num(d7 // 2)}"
    # 03.1: LLaMA-13B, LoRA r=16 all-linear, three regimes
    nl = n_lora("llama-13b", "all", 16)
    lin13 = linear_weight_count("llama-13b")
    from .nf4 import nf4_nbytes
    nf4_13 = sum(nf4_nbytes(i * o) for n, i, o in _linears("llama-13b") if n != "lm_head")
    full = amp.persistent * N13
    lora = BF16 * N13 + amp.persistent * nl
    qlora = nf4_13 + BF16 * (N13 - lin13) + amp.persistent * nl
    f["d03.1.nlora"] = num(nl)
    f["d03.1.full"] = f"{amp.persistent} × {num(N13)} B = {gib(full)}"
    f["d03.1.lora"] = f"{BF16} × {num(N13)} + {amp.persistent} × {num(nl)} B = {gib(lora)}"
    f["d03.1.lin"] = num(lin13)
    f["d03.1.nf4"] = f"{num(nf4_13)} B = {gib(nf4_13)}"
    f["d03.1.rest"] = f"{BF16} × ({num(N13)} − {num(lin13)}) B = {gib(BF16 * (N13 - lin13))}"
    f["d03.1.qlora"] = gib(qlora)
    fits = {k: v < GPUS["24"] for k, v in (("full", full), ("lora", lora), ("qlora", qlora))}
    f["d03.1.fits"] = ", ".join(f"{k}: {'✓' if v else '✗'}" for k, v in fits.items())
    # 03.2: double quantisation
    bits, dq = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    f["d03.2.before"] = f"{FP32 * 8} / {NF4_BLOCK} = {fixed(FP32 * 8 / NF4_BLOCK, 3)}"
    f["d03.2.after"] = (f"8 / {NF4_BLOCK} + {FP32 * 8} / ({NF4_BLOCK} × {DQ_BLOCK}) = "
                        f"{fixed(8 / NF4_BLOCK + FP32 * 8 / (NF4_BLOCK * DQ_BLOCK), 3)}")
    f["d03.2.saving"] = fixed(FP32 * 8 / NF4_BLOCK - 8 / NF4_BLOCK - FP32 * 8 / (NF4_BLOCK * DQ_BLOCK), 3)
    f["d03.2.code"] = f"{fixed(bits, 3)} → {fixed(dq, 3)}"
    # 03.3: bf16 moments under AMP
    bf16_moments = amp.weights + amp.grads + ADAM_MOMENTS * BF16
    f["d03.3.bytes"] = f"{amp.weights} + {amp.grads} + {ADAM_MOMENTS} × {BF16} = {bf16_moments}"
    f["d03.3.l7b"] = f"{gib(amp.persistent * N7)} → {gib(bf16_moments * N7)}"
    # 03.4: checkpointing time
    f["d03.4.t0"] = f"{CKPT_T0:.1f} s"
    f["d03.4.t1"] = f"{CKPT_T0:.1f} × (1 + 1/{1 + BACKWARD_OVER_FORWARD}) = {CKPT_T0 * (1 + 1 / (1 + BACKWARD_OVER_FORWARD)):.2f} s"
    # 04.1: DPO full LLaMA-13B
    f["d04.1"] = (f"{amp.persistent} × {num(N13)} + {BF16} × {num(N13)} = {num((amp.persistent + BF16) * N13)} B"
                  f" = {gib((amp.persistent + BF16) * N13)}")
    # 04.2: dominant component of LoRA PPO
    a = alignment_bytes()
    frozen = 2 * BF16 * N7
    f["d04.2.frozen"] = gib(frozen)
    f["d04.2.frac"] = pct(frozen / a["ppo.lora"], 1)
    return f


# ---------------------------------------------------------------------------- rewriting files
def render(name: str, lang: str) -> str:
    """The text of one generated region."""
    if name in TABLES:
        return TABLES[name](lang)
    figs = figures()
    if name not in figs:
        raise KeyError(f"No generator named {name!r}; add it to minigpt/docs.py (figures() or TABLES) "
                       f"or fix the marker's name.")
    return figs[name]


def lang_of(path: Path) -> str:
    return "es" if "es" in Path(path).parts[-2:-1] else "en"


def regenerate_text(text: str, lang: str) -> str:
    """Every ``<!-- gen:NAME -->...<!-- /gen -->`` region of ``text`` with its body recomputed.
    A generated table goes on its own lines between the markers; an inline figure stays inline."""
    def sub(m: re.Match) -> str:
        body = render(m.group("name"), lang)
        if "\n" in body or m.group("name").startswith("table."):
            body = f"\n{body}\n"
        return f"<!-- gen:{m.group('name')} -->{body}<!-- /gen -->"
    return REGION.sub(sub, text)


def doc_files(root: Path = ROOT) -> list[Path]:
    """The files whose regions `make docs` rewrites: theory (both languages) and drill solutions."""
    files = sorted((root / "theory").glob("*.md")) + sorted((root / "theory" / "es").glob("*.md"))
    files += sorted((root / "solutions").glob("0[0-9]-*-ref.md"))
    return files


def check(files: Optional[Iterable[Path]] = None) -> list[str]:
    """Names of the files whose generated regions are stale (empty list: all up to date)."""
    stale = []
    for p in files or doc_files():
        text = p.read_text(encoding="utf-8")
        if regenerate_text(text, lang_of(p)) != text:
            stale.append(str(p.relative_to(ROOT)))
    return stale


def write(files: Optional[Iterable[Path]] = None) -> list[str]:
    """Rewrite every generated region; returns the files that changed. Also refreshes traces.json."""
    changed = []
    for p in files or doc_files():
        text = p.read_text(encoding="utf-8")
        new = regenerate_text(text, lang_of(p))
        if new != text:
            p.write_text(new, encoding="utf-8")
            changed.append(str(p.relative_to(ROOT)))
    store().write()
    return changed


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.docs", description=(
        "Recompute every generated figure and table of theory/ and solutions/0N-*-ref.md."))
    ap.add_argument("--check", action="store_true", help="rewrite nothing; list stale files and exit 1 if any")
    ap.add_argument("--list", action="store_true", help="print every figure name and its value")
    args = ap.parse_args(argv)
    if args.list:
        for k, v in figures().items():
            print(f"{k:32s} {v}")
        return 0
    if args.check:
        stale = check()
        for s in stale:
            print(f"stale: {s}")
        if stale:
            print("Generated figures are out of date: run `make docs` and commit the result.")
        return 1 if stale else 0
    changed = write()
    print("\n".join(f"rewrote {c}" for c in changed) or "all generated regions were up to date")
    if store().recomputed:
        why = f" (code changed: {', '.join(store().changed)})" if store().changed else ""
        print(f"recomputed {len(store().recomputed)} trace(s){why}; theory/traces.json refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
