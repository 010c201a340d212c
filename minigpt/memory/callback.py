"""A ``transformers.TrainerCallback`` that logs training memory the right way.

Per optimizer step it records the *peak* (not the last value): on a GPU
``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` after
``reset_peak_memory_stats()`` at the start of the step; without a GPU the package's CPU tensor
tracker's peak (and it says so). Once, on step ``split_step`` (default 2, when the optimizer state
exists), it also runs the tracker for the bucket split and logs it.

    trainer = Trainer(..., callbacks=[MemoryCallback()])
    trainer.train()
    cb.history     # [{"step", "peak_allocated", "peak_reserved", "source"}, ...] (bytes)
    cb.buckets     # {bucket: bytes} at the tracked step's peak
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from transformers import TrainerCallback

from .buckets import MiB, fmt_bytes
from .tracker import TensorTracker

log = logging.getLogger(__name__)


class MemoryCallback(TrainerCallback):
    """Peak memory per optimizer step, and the bucket split of one step, for a Trainer run."""

    def __init__(self, split_step: int = 2, track_every_step_on_cpu: bool = True):
        self.split_step = split_step
        self.track_cpu = track_every_step_on_cpu
        self.cuda = torch.cuda.is_available()
        self.history: list[dict] = []
        self.buckets: Optional[dict[str, int]] = None
        self.source = ("torch.cuda.max_memory_allocated / max_memory_reserved" if self.cuda else
                       "no GPU: peak of the CPU tensor tracker (live tensor storages; no allocator)")
        self._tracker: Optional[TensorTracker] = None

    # one tracker per tracked step, entered at step begin, left at step end
    def _start_tracker(self, model, optimizer) -> None:
        tr = TensorTracker(gpu_only=self.cuda)
        tr.register_module(model)
        if optimizer is not None:
            tr.register_optimizer(getattr(optimizer, "optimizer", optimizer))  # accelerate wraps it
        tr.set_phase("forward")  # forward and backward: the Trainer gives no hook in between
        tr.__enter__()
        self._tracker = tr

    def _stop_tracker(self) -> Optional[TensorTracker]:
        tr, self._tracker = self._tracker, None
        if tr is not None:
            tr.__exit__(None, None, None)
        return tr

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if step == self.split_step or (not self.cuda and self.track_cpu):
            self._start_tracker(model, optimizer)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._tracker is not None:
            self._tracker.set_phase("optimizer")

    def on_step_end(self, args, state, control, **kwargs):
        tr = self._stop_tracker()
        row = {"step": state.global_step, "source": self.source}
        if self.cuda:
            torch.cuda.synchronize()
            row["peak_allocated"] = torch.cuda.max_memory_allocated()
            row["peak_reserved"] = torch.cuda.max_memory_reserved()
        else:
            row["peak_allocated"] = tr.peak if tr is not None else None
            row["peak_reserved"] = None
        self.history.append(row)
        if tr is not None and state.global_step == self.split_step and self.buckets is None:
            self.buckets = dict(tr.peak_buckets)
            log.info("memory buckets at the peak of step %d (tracker): %s", state.global_step,
                     ", ".join(f"{k}={fmt_bytes(v)}" for k, v in self.buckets.items()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        # add the last step's peak to the logs the Trainer prints and sends to its reporters
        # (MiB = 2**20 bytes); state.log_history is written before callbacks see the logs
        if logs is not None and self.history and self.history[-1]["peak_allocated"] is not None:
            logs["mem_peak_allocated_MiB"] = round(self.history[-1]["peak_allocated"] / MiB, 2)
            if self.history[-1]["peak_reserved"] is not None:
                logs["mem_peak_reserved_MiB"] = round(self.history[-1]["peak_reserved"] / MiB, 2)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop_tracker()
