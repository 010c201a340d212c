"""A learner's nvidia-smi polling loop, replayed: why the last reading is not the step's peak.

A common first logger polls NVML's ``memory.used`` from a thread every few seconds and keeps the
*last* value of the run. This module reproduces that loop on a replay instead of a GPU:

* ``record_steps`` runs several consecutive training steps of one ``Session`` (fake tensors,
  simulated CUDA semantics by default: RoBERTa-base fits on a laptop) with batches whose shapes
  change from step to step, as a DataLoader with dynamic padding gives, and logs every allocation
  and free (``TensorTracker(record_events=True)``), from the weights' allocation on;
* the events are replayed through the caching-allocator model (allocator.replay): per event,
  ``allocated`` (``torch.cuda.memory_allocated()``) and ``reserved`` (``memory_reserved()``);
* nvidia-smi is modelled as reserved + the CUDA context of a card (gpus.py's cited range; a T4 when
  no card is given, the learner did not say theirs);
* ``poll`` samples that nvidia-smi curve every ``every`` events from a seeded random offset and keeps
  the last sample, as the learner's thread did (events stand in for seconds: a step is far shorter
  than the learner's polling period, so the samples land at arbitrary points of the steps).

    tl = record_steps(lambda: from_preset("tiny"), [make_batch("tiny", 4, t) for t in (48, 64, 32)])
    p = poll(tl, every=500, seed=0)
    tl.step_peaks()          # what reset_peak_memory_stats() + max_memory_allocated() gives per step
    tl.max_reserved, p.last  # max_memory_reserved() over the run; the learner's number (low, high)
    fig = plot_polling(tl, p)   # nothing saved unless path= is given

Everything here is integer bytes from a deterministic replay: a model of the GPU, not a measurement.
"""
from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils._pytree import tree_map

from . import cuda_rules, gpus
from .alloc_config import ConfigLike
from .allocator import Event, replay
from .buckets import GiB, MiB
from .device_view import context, workspace_events
from .measure import ModelOrFactory, OptimizerSpec, Session
from .plot import save_figure
from .tracker import TensorTracker

DEFAULT_CARD = "t4"   # the learner's card is not stated; a T4 is the free Colab/Kaggle card


@dataclass
class PollTimeline:
    """Per-event allocator counters of several training steps (integer bytes)."""
    allocated: list[int]          # torch.cuda.memory_allocated() after each event (replayed)
    reserved: list[int]           # torch.cuda.memory_reserved() after each event (replayed)
    requested: list[int]          # sum of live requested sizes (the tracker's count, no rounding)
    live_blocks: list[int]        # live allocations after each event
    step_start: list[int]         # index of the first event of each step (after its zero_grad)
    shapes: list[tuple]           # the batch's first tensor shape per step, e.g. (B, T)
    context: tuple[int, int]      # (low, high) bytes of the CUDA context
    context_how: str              # where the context range comes from
    card: Optional[gpus.GpuSpec]
    events: list[Event]

    def __len__(self) -> int:
        return len(self.allocated)

    def _span(self, k: int) -> range:
        end = self.step_start[k + 1] if k + 1 < len(self.step_start) else len(self)
        return range(self.step_start[k], end)

    def step_peaks(self) -> list[int]:
        """max_memory_allocated() of each step after reset_peak_memory_stats() at its start."""
        return [max(self.allocated[i] for i in self._span(k)) for k in range(len(self.step_start))]

    def step_requested_peaks(self) -> list[int]:
        """The tracker's peak of each step (sum of live storages, unrounded): measure_step's peak."""
        return [max(self.requested[i] for i in self._span(k)) for k in range(len(self.step_start))]

    def step_reserved(self) -> list[int]:
        """memory_reserved() at the end of each step."""
        return [self.reserved[self._span(k)[-1]] for k in range(len(self.step_start))]

    @property
    def max_reserved(self) -> int:
        return max(self.reserved)

    def smi(self, i: int) -> tuple[int, int]:
        """Modelled nvidia-smi (low, high) after event ``i``: reserved + the CUDA context."""
        return self.reserved[i] + self.context[0], self.reserved[i] + self.context[1]


@dataclass
class Poll:
    """The learner's thread: nvidia-smi read at ``indices`` (event numbers); the last one is kept."""
    indices: list[int]
    every: int
    seed: int
    low: list[int]                # modelled nvidia-smi at each sample, low end of the context range
    high: list[int]

    @property
    def last(self) -> tuple[int, int]:
        return self.low[-1], self.high[-1]


def _to_session(s: Session, batch: Any) -> Any:
    """A batch prepared as Session prepares its own (device, fake tensors, pure low-precision floats)."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)

    def prep(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.to(low) if low is not None and t.is_floating_point() else t
        return s.fake_mode.from_tensor(t) if s.fake_mode is not None else t.to(s.device)
    return tree_map(prep, batch)


def _next_batch(s: Session, batch: Any) -> None:
    s.batch = None                          # the loop drops the last batch ...
    gc.collect()
    with s._ctx():
        s.opt.zero_grad(set_to_none=True)   # ... and last step's gradients, before forward
    s.batch = _to_session(s, batch)         # ... and the DataLoader hands over the next one


def _shape(batch: Any) -> tuple:
    leaves = [t for t in (batch.values() if isinstance(batch, dict) else
                          batch if isinstance(batch, (tuple, list)) else [batch]) if isinstance(t, torch.Tensor)]
    return tuple(leaves[0].shape) if leaves else ()


def record_steps(model_or_factory: ModelOrFactory, batches: Sequence[Any], optimizer: OptimizerSpec = "adamw",
                 precision: str = "fp32", checkpointing: bool = False, mode: str = "fake",
                 semantics: str = "cuda", card: Optional[str | gpus.GpuSpec] = DEFAULT_CARD,
                 config: ConfigLike = None, loading: str = "lazy", workspaces: bool = True) -> PollTimeline:
    """Train ``len(batches)`` consecutive steps of one Session, one batch each, and replay them.

    The stream starts empty: the cuBLAS workspaces (``workspaces=True``, device_view.py), the weights,
    then step 1 (which creates the optimizer state), step 2, ... Before each step the previous batch is
    dropped and the next one registered, as a training loop does. ``card`` (a gpus.py alias or spec, or
    None) sets the CUDA-context range of the nvidia-smi model and the workspace size.
    """
    if mode not in ("fake", "cpu"):
        raise ValueError(f"mode must be 'fake' or 'cpu' (a replay needs the tracker's events), got {mode!r}.")
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least one batch (one per training step).")
    spec = gpus.gpu(card) if isinstance(card, str) else card
    with cuda_rules.on_card(spec):          # the SDPA kernel the card dispatches (device_view.trace)
        s = Session(model_or_factory, batches[0], optimizer, precision, checkpointing, mode, semantics)
        tracker = TensorTracker(semantics=s.semantics, record_events=True)
        tracker.register_module(s.model)
        starts, shapes = [], []
        for b in batches:
            _next_batch(s, b)
            tracker.register(s.batch, "temporaries", data=True)
            starts.append(len(tracker.events))
            shapes.append(_shape(s.batch))
            s.step(tracker)
    ws = workspace_events(spec) if workspaces else []
    events = ws + list(tracker.events)
    r = replay(events, config)
    if r.oom is not None:   # no capacity is given, so this cannot happen; say so if it does
        raise RuntimeError(f"the replay stopped: {r.oom}")
    requested, live, size_of, tot = [], [], {}, 0
    for e in events:        # the tracker's own sum, to compare with measure_step's peak
        if e.action == "alloc":
            size_of[e.id] = e.size
            tot += e.size
        elif e.action == "free":
            tot -= size_of.pop(e.id)
        requested.append(tot)
        live.append(len(size_of))
    lo, hi, how = context(spec, loading)
    return PollTimeline(r.allocated, r.reserved, requested, live, [i + len(ws) for i in starts], shapes,
                        (lo, hi), how, spec, events)


def poll(tl: PollTimeline, every: int, seed: int = 0) -> Poll:
    """Sample the nvidia-smi model every ``every`` events from a random offset in [0, every) drawn
    with ``seed``, up to the last event; the learner keeps ``Poll.last``."""
    if not isinstance(every, int) or not 1 <= every <= len(tl):
        raise ValueError(f"every must be an integer from 1 to the number of events ({len(tl)}), got {every!r}.")
    first = random.Random(seed).randrange(every)
    idx = list(range(first, len(tl), every))
    pairs = [tl.smi(i) for i in idx]
    return Poll(idx, every, seed, [p[0] for p in pairs], [p[1] for p in pairs])


def summary(tl: PollTimeline, p: Poll) -> dict:
    """The three numbers of the learner's question, integer bytes: the step peaks of allocated, the
    run's max reserved, the last polled nvidia-smi (low, high), and how they compare."""
    peaks = tl.step_peaks()
    return {"step_peaks": peaks, "max_step_peak": max(peaks), "max_reserved": tl.max_reserved,
            "step_reserved": tl.step_reserved(), "last_polled": p.last, "last_index": p.indices[-1],
            "context": tl.context,
            "reserved_never_drops": all(a <= b for a, b in zip(tl.reserved, tl.reserved[1:])),
            "last_above_every_peak": p.last[0] > max(peaks)}


@dataclass
class Measured:
    """The same loop on a real GPU (integer bytes): what the replay predicts, measured."""
    step_peaks: list[int]         # max_memory_allocated() per step, after reset_peak_memory_stats()
    step_max_reserved: list[int]  # max_memory_reserved() per step (the reset clears it too)
    nvml: list[tuple[float, int]]  # (seconds, NVML used) from the polling thread, device-wide
    card: str                     # torch.cuda.get_device_name()

    @property
    def max_reserved(self) -> int:
        return max(self.step_max_reserved)

    @property
    def last(self) -> Optional[int]:
        return self.nvml[-1][1] if self.nvml else None


def current_card() -> Optional[gpus.GpuSpec]:
    """The gpus.py spec of the current CUDA device, by its name, or None when it is not listed."""
    name = torch.cuda.get_device_name().lower()
    return next((g for g in gpus.GPUS if g.name.lower() == name or g.name.lower() in name), None)


def measure_steps_cuda(model_or_factory: ModelOrFactory, batches: Sequence[Any], optimizer: OptimizerSpec = "adamw",
                       precision: str = "fp32", checkpointing: bool = False, interval: float = 0.05) -> Measured:
    """The learner's loop for real: the same steps on the current GPU, NVML polled from a thread every
    ``interval`` seconds (timeline.NvmlSampler). The cache is emptied first, so an earlier run's
    blocks do not count, and emptied again at the end."""
    from .timeline import NvmlSampler
    gc.collect()
    torch.cuda.empty_cache()
    sampler = NvmlSampler(torch.cuda.current_device(), interval)
    t0 = time.perf_counter()
    peaks, reserved = [], []
    with sampler:
        s = Session(model_or_factory, batches[0], optimizer, precision, checkpointing, "cuda")
        for b in batches:
            _next_batch(s, b)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            s.step()
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated())
            reserved.append(torch.cuda.max_memory_reserved())
        time.sleep(3 * interval)            # a reading after the last step
        del s
    gc.collect()
    torch.cuda.empty_cache()
    return Measured(peaks, reserved, [(t - t0, u) for t, u in sampler.samples], torch.cuda.get_device_name())


def plot_polling(tl: PollTimeline, p: Optional[Poll] = None, path: Optional[str | Path] = None,
                 unit: str = "auto", ax=None, title: str = ""):
    """allocated, reserved and the nvidia-smi band over events, step boundaries, step peaks and the
    polled samples (the last one circled). Returns the Figure; saves it only when ``path`` is given."""
    import matplotlib.pyplot as plt

    top = tl.max_reserved + tl.context[1]
    unit = ("GiB" if top >= GiB else "MiB") if unit == "auto" else unit
    div = {"MiB": MiB, "GiB": GiB}[unit]
    fig, ax = plt.subplots(figsize=(10, 4.5)) if ax is None else (ax.figure, ax)
    x = range(len(tl))
    ax.plot(x, [v / div for v in tl.allocated], color="tab:blue", lw=0.8, label="allocated (replayed)")
    ax.plot(x, [v / div for v in tl.reserved], color="k", lw=1.2, label="reserved (replayed)")
    ax.fill_between(x, [(v + tl.context[0]) / div for v in tl.reserved],
                    [(v + tl.context[1]) / div for v in tl.reserved], color="m", alpha=0.25, step="post",
                    label="nvidia-smi (modelled: reserved + CUDA context range)")
    for k, (start, peak) in enumerate(zip(tl.step_start, tl.step_peaks())):
        end = tl._span(k)[-1]
        ax.axvline(start, color="grey", lw=0.6, ls=":")
        ax.text(start, 0, f" step {k + 1} {tl.shapes[k]}", rotation=90, fontsize=7, va="bottom", color="grey")
        ax.hlines(peak / div, start, end, color="tab:blue", ls="--", lw=0.8,
                  label="max_memory_allocated per step" if k == 0 else None)
    if p is not None:
        ax.plot(p.indices, [v / div for v in p.low], "m.", ms=4, label=f"polled every {p.every} events")
        ax.plot(p.indices[-1:], [p.low[-1] / div], "o", mfc="none", mec="m", ms=10, label="last reading (kept)")
    ax.set_xlabel("allocator event (alloc or free) index")
    ax.set_ylabel(f"memory [{unit}, 1 {unit} = 2**{20 if unit == 'MiB' else 30} bytes]")
    card = tl.card.name if tl.card is not None else "no card"
    ax.set_title(title or f"replayed caching allocator, nvidia-smi modelled for a {card} (not measured)", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_xlim(0, max(1, len(tl) - 1))
    ax.set_ylim(bottom=0)
    if path is not None:
        save_figure(fig, path)
    return fig
