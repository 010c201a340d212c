"""Memory over time, op by op: the forward / backward / optimizer-step sawtooth, bucket by bucket.

A learner's first logger often samples ``nvidia-smi`` from a thread and keeps the *last* value.
That misses the peak (it lasts a few milliseconds, inside backward or the optimizer step) and
reports the caching allocator's reserved pool plus the CUDA context rather than what tensors hold.
``memory_timeline`` instead records the live bytes of every bucket after every op (the tracker),
and on a GPU also ``torch.cuda.memory_allocated/memory_reserved`` per op and the device's used
memory from NVML (``nvidia-ml-py``) sampled in a background thread, so the plot shows the gap.

    tl = memory_timeline(lambda: from_preset("tiny"), (idx, targets), steps=2)
    fig = plot_timeline(tl)          # a matplotlib Figure; nothing is saved unless path= is given
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .buckets import BUCKET_COLORS, BUCKETS, MiB, GiB
from .measure import ModelOrFactory, OptimizerSpec, Session, label_for
from .plot import save_figure
from .tracker import TensorTracker



@dataclass
class Timeline:
    """Live bytes per bucket after each op of ``steps`` training steps. Sizes in integer bytes."""
    live: dict[str, list[int]]           # bucket -> bytes, one value per sample
    phase: list[str]                     # "forward" | "backward" | "optimizer" | "end" per sample
    step: list[int]                      # 1-based step number per sample
    op: list[str]                        # ATen op name, or "<phase>" at a phase boundary
    times: list[float]                   # seconds since the start, per sample
    mode: str
    semantics: str
    label: str
    allocated: Optional[list[int]] = None    # CUDA: torch.cuda.memory_allocated() per sample
    reserved: Optional[list[int]] = None     # CUDA: torch.cuda.memory_reserved() per sample
    nvml: Optional[list[tuple[float, int]]] = None  # CUDA: (seconds, device used bytes) from NVML
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.op)

    @property
    def total(self) -> list[int]:
        return [sum(v) for v in zip(*(self.live[k] for k in BUCKETS))]

    @property
    def peak(self) -> int:
        return max(self.total)

    @property
    def peak_index(self) -> int:
        tot = self.total
        return tot.index(max(tot))

    def markers(self) -> list[tuple[int, int, str]]:
        """(sample index, step, phase) where each phase starts."""
        out, prev = [], None
        for i, (s, p) in enumerate(zip(self.step, self.phase)):
            if (s, p) != prev:
                out.append((i, s, p))
                prev = (s, p)
        return out


class NvmlSampler:
    """Device used memory from NVML in a background thread, every ``interval`` seconds.

    This is what nvidia-smi reports: every process's memory on the device, including the CUDA
    context and the caching allocator's reserved (free but cached) blocks.
    """

    def __init__(self, device_index: int = 0, interval: float = 0.005):
        import pynvml  # nvidia-ml-py
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self.samples.append((time.perf_counter(), int(used)))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
        return False


def memory_timeline(model_or_factory: ModelOrFactory, batch: Any, steps: int = 2,
                    optimizer: OptimizerSpec = "adamw", precision: str = "fp32", checkpointing: bool = False,
                    mode: Optional[str] = None, semantics: str = "cpu") -> Timeline:
    """Record live bytes per bucket op by op over ``steps`` training steps, from the very first.

    Step 1 shows the optimizer state being created (it is booked as optimizer state at the end of
    that step); later steps show the steady sawtooth. ``mode=None`` picks "cuda" when a GPU is
    present, else "cpu" (and says so in ``notes``); "fake" works too.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    notes = []
    if mode is None:
        mode = "cuda" if torch.cuda.is_available() else "cpu"
        if mode == "cpu":
            notes.append("no GPU here: live bytes from the CPU tensor tracker only "
                         "(no allocator or nvidia-smi curves)")
    s = Session(model_or_factory, batch, optimizer, precision, checkpointing, mode, semantics)
    tracker = TensorTracker(semantics=s.semantics, timeline=True, gpu_only=(mode == "cuda"))
    tracker.register_module(s.model)
    tracker.register(s.batch, "temporaries", data=True)
    if mode == "cuda":
        tracker.sampler = lambda: (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
    step_of: list[int] = []
    nvml_samples = None
    sampler_ctx = None
    if mode == "cuda":
        try:
            sampler_ctx = NvmlSampler(torch.cuda.current_device())
        except Exception as e:  # no NVML library: keep the allocator curves
            notes.append(f"NVML unavailable ({type(e).__name__}): no nvidia-smi curve")
    t0 = time.perf_counter()
    if sampler_ctx is not None:
        sampler_ctx.__enter__()
    try:
        for i in range(steps):
            n = len(tracker.timeline)
            s.step(tracker)
            step_of += [i + 1] * (len(tracker.timeline) - n)
    finally:
        if sampler_ctx is not None:
            sampler_ctx.__exit__(None, None, None)
            nvml_samples = [(t - t0, used) for t, used in sampler_ctx.samples]
    live = {k: [row[3][j] for row in tracker.timeline] for j, k in enumerate(BUCKETS)}
    tl = Timeline(live=live, phase=[r[1] for r in tracker.timeline], step=step_of,
                  op=[r[2] for r in tracker.timeline], times=[t - t0 for t, _ in tracker.samples],
                  mode=mode, semantics=s.semantics, label=label_for(mode, s.semantics), notes=notes)
    if mode == "cuda":
        tl.allocated = [x[0] for _, x in tracker.samples]
        tl.reserved = [x[1] for _, x in tracker.samples]
        tl.nvml = nvml_samples
    return tl


def plot_timeline(tl: Timeline, path: Optional[str | Path] = None, unit: str = "auto", ax=None):
    """Stacked buckets over ops, phase markers, the peak, and (CUDA) allocator/nvidia-smi curves.

    Returns the matplotlib Figure. Saves it only when ``path`` is given, and only inside the repo.
    """
    import matplotlib.pyplot as plt

    if unit == "auto":
        unit = "GiB" if tl.peak >= GiB else "MiB"
    div = {"MiB": MiB, "GiB": GiB}[unit]
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 4.5))
    else:
        fig = ax.figure
    x = list(range(len(tl)))
    ax.stackplot(x, *[[v / div for v in tl.live[k]] for k in BUCKETS], labels=list(BUCKETS),
                 colors=[BUCKET_COLORS[k] for k in BUCKETS], step="post", alpha=0.9)
    i = tl.peak_index
    ax.axhline(tl.peak / div, color="k", lw=0.8, ls="--")
    ax.annotate(f"peak {tl.peak / div:.2f} {unit} ({tl.phase[i]}, step {tl.step[i]})",
                (i, tl.peak / div), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for j, s, p in tl.markers():
        ax.axvline(j, color="grey", lw=0.5, ls=":")
        ax.text(j, 0, f" {s}:{p[:3]}", rotation=90, fontsize=7, va="bottom", color="grey")
    if tl.allocated is not None:
        ax.plot(x, [v / div for v in tl.allocated], color="k", lw=1, label="memory_allocated")
        ax.plot(x, [v / div for v in tl.reserved], color="k", lw=1, ls="--", label="memory_reserved")
    if tl.nvml:
        import numpy as np
        op_at = np.interp([t for t, _ in tl.nvml], tl.times, x)  # sample times -> op index
        ax.plot(op_at, [u / div for _, u in tl.nvml], color="m", lw=1, label="nvidia-smi (NVML) used")
    ax.set_xlabel("op (ATen call) index")
    ax.set_ylabel(f"live memory [{unit}, 1 {unit} = 2**{20 if unit == 'MiB' else 30} bytes]")
    ax.set_title(tl.label, fontsize=9)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.set_xlim(0, max(1, len(tl) - 1))
    if path is not None:
        save_figure(fig, path)
    return fig
