"""On a CUDA GPU: measure a lab's training steps and put the estimator's prediction beside each.

Every lab ends with one call, ``gpu_table("03", {...})``. On a GPU it runs each case with
``measure(mode="cuda")`` (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``),
asks ``estimate`` for the same arguments, prints measured, predicted and the error, and writes the
table with the card, driver, torch version and date to ``build/gpu-runs/`` (inside the repository;
``docs/gpu-runs/`` holds the ones committed). On CPU it measures nothing and says so in one line:
the CPU has no peak-allocated counter, and an estimate is never printed as a measurement.

``amp_precision`` is the bf16 fallback: a GPU older than Ampere (a T4 is sm_75) has no bf16
arithmetic, so "amp-bf16" becomes "amp-fp16" there, with the reason in one line.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..paths import BUILD, ROOT
from .buckets import MiB

# What each lab measures on a GPU: keyword arguments of minigpt.memory.compare.measure (and of estimate).
# Small enough for a 16 GB T4; tests/memory/test_gpu_check.py runs every case through the estimator and a trace.
_SMALL = dict(model="small", batch=8, seq=128)
# Lab 02's model: all-MiniLM-L6-v2 is BERT with 6 layers of width 384 (12 heads, MLP 1536) on BERT's vocabulary
# and positions, so bert-large with those overrides builds its shape (random weights, BERT's pooler and head).
_MINILM = dict(model="bert-large", num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
               intermediate_size=1536, batch=16, seq=64)
LAB_CASES: dict[str, dict[str, dict[str, Any]]] = {
    "01": {"full, fp32": dict(_SMALL, method="full"),
           "LoRA r=8 on q,v, fp32": dict(_SMALL, method="lora", rank=8, targets="q,v")},
    "02": {"MiniLM shape, full, fp32": dict(_MINILM, method="full"),
           "MiniLM shape, LoRA r=8 on query and value, fp32": dict(_MINILM, method="lora", rank=8, targets="q,v")},
    "03": {"full, fp32": dict(_SMALL, method="full"),
           "full, AMP bf16": dict(_SMALL, method="full", precision="amp-bf16"),
           "full, fp32, checkpointing": dict(_SMALL, method="full", checkpointing=True)},
    "04": {"full, fp32": dict(model="small", method="full", batch=4, seq=64),
           "LoRA r=8 all-linear": dict(model="small", method="lora", rank=8, targets="all-linear", batch=4, seq=64),
           "QLoRA r=8 all-linear, DQ": dict(model="small", method="qlora", rank=8, targets="all-linear",
                                            double_quant=True, batch=4, seq=64)},
    "05": {"RoBERTa-base full, AMP fp16, B=32, T=512": dict(model="roberta-base", method="full",
                                                          precision="amp-fp16", batch=32, seq=512),
           "RoBERTa-base LoRA r=8 q,v, AMP fp16, B=32, T=512": dict(model="roberta-base", method="lora", rank=8,
                                                                  targets="q,v", precision="amp-fp16",
                                                                  batch=32, seq=512)},
}
RUNS_DIR = BUILD / "gpu-runs"
SKIPPED = ("No CUDA GPU: the measured-vs-predicted table was skipped. It needs torch.cuda.max_memory_allocated, "
           "which has no CPU counterpart; the CPU figures above are tracked or traced, not measured on a GPU.")


def amp_precision(precision: str, capability: Optional[tuple[int, int]] = None) -> tuple[str, Optional[str]]:
    """(the precision to run, the one-line reason when it was changed). ``capability``: the GPU's
    (major, minor), default the current CUDA device's; None on CPU leaves the precision alone."""
    if precision not in ("amp-bf16", "bf16"):
        return precision, None
    if capability is None:
        if not torch.cuda.is_available():
            return precision, None
        capability = torch.cuda.get_device_capability()
    # Native bf16 matmuls start with Ampere (sm_80). torch.cuda.is_bf16_supported() also says True
    # on older cards because it counts emulation, which is slow and does not show the real kernels.
    if capability[0] >= 8:
        return precision, None
    fallback = "amp-fp16" if precision == "amp-bf16" else "fp16"
    return fallback, (f"This GPU (sm_{capability[0]}{capability[1]}) has no bf16 arithmetic (it starts with sm_80, "
                      f"Ampere): running {fallback} instead of {precision}; the bytes are the same, fp16 needs "
                      f"the loss scaling that torch.amp.GradScaler does.")


@dataclass
class GpuRow:
    """One case of the table: what was measured and what the estimator predicted for it."""
    case: str
    precision: str
    measured: Optional[int]  # torch.cuda.max_memory_allocated() of the step, bytes; None: out of memory
    reserved: Optional[int]  # torch.cuda.max_memory_reserved(), bytes (what the caching allocator held)
    predicted: int           # minigpt.memory.estimate(...).peak for the same arguments, bytes

    @property
    def error_pct(self) -> Optional[float]:
        return None if not self.measured else 100.0 * (self.predicted - self.measured) / self.measured


def card() -> dict[str, str]:
    """The GPU, its driver, CUDA and torch, and today's date (what a committed run must name)."""
    props = torch.cuda.get_device_properties(0)
    driver = "unknown"
    try:
        import pynvml  # nvidia-ml-py: the library nvidia-smi uses
        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        pynvml.nvmlShutdown()
    except Exception:  # no NVML on this host: the table says "unknown" rather than guessing
        pass
    return {"card": f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB)",
            "driver": driver, "cuda": str(torch.version.cuda), "torch": torch.__version__,
            "date": dt.date.today().isoformat()}


def format_table(lab: str, rows: list[GpuRow], meta: Mapping[str, str]) -> str:
    """The table as Markdown: a header naming the card, then one row per case (MiB = 2**20 bytes)."""
    lines = [f"# Lab {lab}: measured on a GPU against minigpt's estimate",
             "", *(f"- {k}: {v}" for k, v in meta.items()),
             "- measured: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), one training step",
             "- predicted: minigpt.memory.estimate.estimate(...) with the same arguments; error = (predicted - measured) / measured",
             "", "| case | precision | measured MiB | reserved MiB | predicted MiB | error |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.measured is None:
            lines.append(f"| {r.case} | {r.precision} | out of memory | — | {r.predicted / MiB:.1f} | — |")
        else:
            lines.append(f"| {r.case} | {r.precision} | {r.measured / MiB:.1f} | {(r.reserved or 0) / MiB:.1f} | "
                         f"{r.predicted / MiB:.1f} | {r.error_pct:+.1f}% |")
    return "\n".join(lines) + "\n"


def gpu_table(lab: str, cases: Optional[Mapping[str, Mapping[str, Any]]] = None, *,
              save: bool = True) -> Optional[list[GpuRow]]:
    """Measure each case (keyword arguments of ``minigpt.memory.compare.measure``; default the lab's
    LAB_CASES) on the GPU beside its estimate, print the table and write it to build/gpu-runs/;
    on CPU print one line and return None."""
    if lab not in LAB_CASES:
        raise ValueError(f"lab must be one of {', '.join(LAB_CASES)} (two digits), got {lab!r}.")
    cases = LAB_CASES[lab] if cases is None else cases
    if not torch.cuda.is_available():
        print(SKIPPED)
        return None
    from .compare import measure
    from .estimate import estimate

    rows = []
    for name, kw in cases.items():
        kw = dict(kw, semantics="cuda")
        kw["precision"], why = amp_precision(kw.get("precision", "fp32"))
        if why:
            print(why)
        est = estimate(**kw)
        try:
            rep = measure(mode="cuda", **kw)
            rows.append(GpuRow(name, kw["precision"], int(rep.peak), int(rep.reserved or 0), int(est.peak)))
            del rep
        except torch.cuda.OutOfMemoryError:  # a smaller card: say so in the table and go on
            rows.append(GpuRow(name, kw["precision"], None, None, int(est.peak)))
        torch.cuda.empty_cache()
    meta = card()
    text = format_table(lab, rows, meta)
    print(text)
    if save:
        RUNS_DIR.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
        path = RUNS_DIR / f"lab{lab}-{slug}-{meta['date']}.md"
        path.write_text(text, encoding="utf-8")
        print(f"written to {path.relative_to(ROOT)}; to share it, commit a copy under docs/gpu-runs/")
    return rows
