"""What measure_step returns: the peak of one training step, bucket by bucket, and its label."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .buckets import BUCKETS, GiB, MiB, fmt_bytes

STEP_PHASES = ("forward", "backward", "optimizer")


@dataclass
class MemoryReport:
    """Peak memory of one training step and where it went. All sizes are integer bytes."""
    peak: int                                   # largest total over the step
    buckets: dict[str, int]                     # bucket split at that peak (keys: buckets.BUCKETS)
    phases: dict[str, dict]                     # {"forward"|"backward"|"optimizer": {"peak", "buckets"}}
    peak_phase: str                             # the phase in which the peak happened
    mode: str                                   # "cpu" | "fake" | "cuda"
    semantics: str                              # "cpu" | "cuda"
    label: str                                  # what kind of number this is, in words
    precision: str = "fp32"
    optimizer: str = "adamw"
    checkpointing: bool = False
    start: dict[str, int] = field(default_factory=dict)   # live before forward (weights, state)
    n_params: int = 0
    n_trainable: int = 0
    reserved: Optional[int] = None              # CUDA only: torch.cuda.max_memory_reserved()
    tracker_peak: Optional[int] = None          # CUDA only: the tracker's own peak (sum of storages)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0                        # wall time of the tracked step

    def to_dict(self) -> dict:
        """Plain types only; sizes as integer bytes."""
        return {
            "peak": int(self.peak), "buckets": {k: int(v) for k, v in self.buckets.items()},
            "phases": {p: {"peak": int(d["peak"]), "buckets": {k: int(v) for k, v in d["buckets"].items()}}
                       for p, d in self.phases.items()},
            "peak_phase": self.peak_phase, "mode": self.mode, "semantics": self.semantics,
            "label": self.label, "precision": self.precision, "optimizer": self.optimizer,
            "checkpointing": self.checkpointing, "start": {k: int(v) for k, v in self.start.items()},
            "n_params": self.n_params, "n_trainable": self.n_trainable,
            "reserved": None if self.reserved is None else int(self.reserved),
            "tracker_peak": None if self.tracker_peak is None else int(self.tracker_peak),
            "notes": list(self.notes), "seconds": self.seconds,
        }

    def table(self, unit: str = "auto") -> str:
        """Bucket split at the peak and at each phase's own peak."""
        if unit == "auto":
            unit = "GiB" if self.peak >= GiB else "MiB" if self.peak >= MiB else "KiB"
        div = {"KiB": 1024, "MiB": MiB, "GiB": GiB}.get(unit)
        if div is None:
            raise ValueError(f"unit must be 'KiB', 'MiB', 'GiB' or 'auto', got {unit!r}.")
        cols = [p for p in STEP_PHASES if p in self.phases]
        w = 18
        lines = [f"{self.label}",
                 f"precision={self.precision}  optimizer={self.optimizer}  "
                 f"checkpointing={self.checkpointing}  params={self.n_params:,} "
                 f"(trainable {self.n_trainable:,})",
                 f"units: {unit} (1 {unit} = 2**{ {'KiB': 10, 'MiB': 20, 'GiB': 30}[unit]} bytes)",
                 f"{'bucket':<{w}}{'at peak':>12}" + "".join(f"{c + ' pk':>14}" for c in cols)]
        for k in BUCKETS:
            lines.append(f"{k:<{w}}{self.buckets[k] / div:>12.2f}"
                         + "".join(f"{self.phases[c]['buckets'][k] / div:>14.2f}" for c in cols))
        lines.append(f"{'total':<{w}}{self.peak / div:>12.2f}"
                     + "".join(f"{self.phases[c]['peak'] / div:>14.2f}" for c in cols))
        lines.append(f"peak {fmt_bytes(self.peak, unit)} = {self.peak:,} bytes, during {self.peak_phase}")
        if self.reserved is not None:
            lines.append(f"max reserved by the caching allocator: {fmt_bytes(self.reserved, unit)}")
        if self.tracker_peak is not None:
            lines.append(f"tracker's peak (sum of live storages): {fmt_bytes(self.tracker_peak, unit)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def label_for(mode: str, semantics: str) -> str:
    if mode == "cuda":
        return "measured on GPU (torch.cuda.max_memory_allocated; buckets from the tensor tracker)"
    how = "tracked on CPU" if mode == "cpu" else "traced with fake tensors"
    if semantics == "cuda":
        return f"simulated CUDA ({how} with CUDA rules; not measured on a GPU)"
    return f"{how} (live-tensor tracker, CPU kernels)"


