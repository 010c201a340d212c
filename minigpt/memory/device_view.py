"""The three numbers a learner sees on a GPU, each with where it comes from.

    allocated peak   torch.cuda.max_memory_allocated()   tensors (blocks handed out), cuBLAS workspaces included
    reserved peak    torch.cuda.max_memory_reserved()    what the caching allocator took from the driver
    nvidia-smi       NVML memory.used                     reserved + the CUDA context

Each number carries its source: "measured on CUDA" (a real run), "replayed" (allocator.py run on the
traced event stream of the step), "estimated" (the closed form of estimate/), "modelled" (the CUDA
context from the cited measurements of gpus.py, a range where they disagree), or "not computed".

    view = view_for_estimate(est, card=gpu("t4"), events=trace(gpu("t4"), run)[1])   # run: a RunSpec
    print(view.table())          # the three lines, their sources, and "fits / does not fit on ..."

The cuBLAS workspace (gpus.cublas_workspace_bytes) is allocated through the caching allocator in the
torch of this course (CublasHandlePool.cpp, setWorkspaceForHandle), so it sits *inside* allocated and
reserved, not on top of them: it is added to the estimate and put at the head of the replayed stream.
There are two in a training step: one per (cuBLAS handle, stream), and handles are per thread
(CublasHandlePool.cpp's thread-local pool window); forward runs on the caller's thread, backward on
autograd's device thread (torch/csrc/autograd/engine.cpp, one worker thread per CUDA device; pytorch/pytorch
#180283 reaches into those device threads to clear their workspaces). That count is read from the
source, not measured here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import gpus
from .allocator import Event, replay
from .buckets import GiB, MiB

WORKSPACES = 2   # cuBLAS handles in a training step: the caller's thread (forward), autograd's (backward)

MEASURED = "measured on CUDA"
REPLAYED = "replayed"
ESTIMATED = "estimated"
MODELLED = "modelled"
NOT_COMPUTED = "not computed"
LOWER_BOUND = "modelled (lower bound)"

LAZY_CAVEAT = ("CUDA_MODULE_LOADING=LAZY (torch's default since 1.13 with CUDA >= 11.7, pytorch/pytorch#86509) "
               "loads kernels on first use: the context grows while the first steps run new kernels")


@dataclass
class Number:
    """One labelled number: bytes as a (low, high) range (equal when exact), its source and how."""
    name: str
    low: Optional[int]
    high: Optional[int]
    source: str
    how: str

    @property
    def value(self) -> Optional[int]:
        return self.high

    def text(self, div: int, unit: str) -> str:
        if self.low is None:
            return "-"
        if self.low == self.high:
            return f"{self.low / div:.2f} {unit}"
        return f"{self.low / div:.2f}-{self.high / div:.2f} {unit}"

    def to_dict(self) -> dict:
        exact = self.low is not None and self.low == self.high
        return {"bytes": self.low if exact else None, "low": self.low, "high": self.high,
                "source": self.source, "how": self.how}


@dataclass
class DeviceView:
    allocated: Number
    reserved: Number
    smi: Number
    card: Optional[gpus.GpuSpec] = None
    notes: list = field(default_factory=list)

    def fit(self) -> Optional[dict]:
        """fits / does not fit on the card against the nvidia-smi prediction (None without a card)."""
        if self.card is None or self.smi.low is None:
            return None
        return fit_on(self.card, self.smi.low, self.smi.high, lower_bound=self.smi.source == LOWER_BOUND)

    def table(self, unit: str = "auto") -> str:
        top = max((n.high or 0) for n in (self.allocated, self.reserved, self.smi))
        if unit == "auto":
            unit = "GiB" if top >= GiB else "MiB"
        div = GiB if unit == "GiB" else MiB
        lines = [f"on the GPU{'' if self.card is None else f' ({self.card.name}, {self.card.sm_name})'}"
                 f" -- units: {unit} (2**{30 if unit == 'GiB' else 20} bytes)"]
        for n in (self.allocated, self.reserved, self.smi):
            said = f"{n.source} ({n.how})" if n.source == NOT_COMPUTED else f"{n.source}: {n.how}"
            lines.append(f"  {n.name:<16}{n.text(div, unit):>20}   {said}")
        f = self.fit()
        if f is not None:
            lines.append("  " + f["sentence"])
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"allocated_peak": self.allocated.to_dict(), "reserved_peak": self.reserved.to_dict(),
                "nvidia_smi": self.smi.to_dict(), "gpu": None if self.card is None else self.card.aliases[0],
                "fit": self.fit(), "notes": list(self.notes)}


# ------------------------------------------------------------------------------- the parts
def workspace_bytes(card: Optional[gpus.GpuSpec]) -> int:
    """One cuBLAS workspace on ``card`` (torch's default; no card: the non-Hopper default)."""
    return gpus.cublas_workspace_bytes(card or gpus.gpu("a100"))


def workspace_events(card: Optional[gpus.GpuSpec]) -> list[Event]:
    """The workspaces as allocations that live the whole step (negative ids: none of the tracker's)."""
    return [Event("alloc", -1 - i, workspace_bytes(card), "cublas_workspace") for i in range(WORKSPACES)]


def context(card: Optional[gpus.GpuSpec], loading: str = "lazy") -> tuple[int, int, str]:
    """(low, high) bytes of the CUDA context and where the range comes from (gpus.CONTEXT_MEASUREMENTS)."""
    if card is not None:
        same = gpus.context_range(card, loading)
        if same is not None:
            return same[0], same[1], f"cited {loading}-loading measurements on {card.sm_name} cards (gpus.py)"
    rows = [m for m in gpus.CONTEXT_MEASUREMENTS if m.loading == loading]
    lo, hi = int(min(m.low_mib for m in rows) * MiB), int(max(m.high_mib for m in rows) * MiB)
    where = "no card given" if card is None else f"no cited {loading}-loading measurement on {card.sm_name}"
    return lo, hi, f"{where}: range over the cited {loading}-loading measurements on any card (gpus.py)"


def fit_on(card: gpus.GpuSpec, low: int, high: int, lower_bound: bool = False) -> dict:
    """Does a process that nvidia-smi would show at ``low``..``high`` bytes fit in the card's total?"""
    total = card.total_bytes
    worst, best = total - high, total - low
    if high <= total and not lower_bound:
        verdict = "fits"
    elif low > total:
        verdict = "does not fit"
    else:
        verdict = "may fit (a lower bound only)" if lower_bound else "may not fit"
    margin = f"{worst / GiB:.2f} GiB" if worst == best else f"{worst / GiB:.2f} to {best / GiB:.2f} GiB"
    sentence = (f"{verdict} on the {card.name} ({card.smi_total_mib} MiB = {total / GiB:.2f} GiB as nvidia-smi "
                f"reports it), margin {margin}")
    if card.torch_total_gib:
        sentence += (f"; torch counts {card.torch_total_gib[0]:.2f}-{card.torch_total_gib[1]:.2f} GiB "
                     "total in its out-of-memory message")
    return {"verdict": verdict, "total_bytes": total, "margin_low": worst, "margin_high": best,
            "sentence": sentence}


def _mib(lo: int, hi: int) -> str:
    return f"{lo / MiB:.0f} MiB" if round(lo / MiB) == round(hi / MiB) else f"{lo / MiB:.0f}-{hi / MiB:.0f} MiB"


def _smi(reserved: Number, card: Optional[gpus.GpuSpec], loading: str,
         floor: Optional[Number] = None) -> tuple[Number, list]:
    lo, hi, basis = context(card, loading)
    eager = context(card, "eager")
    notes = [f"{LAZY_CAVEAT}; with EAGER loading (or CUDA < 11.7) the cited contexts were "
             f"{_mib(eager[0], eager[1])} ({eager[2]})."] if loading == "lazy" else []
    ctx = f"CUDA context {_mib(lo, hi)} ({basis}); no other process on the card"
    if reserved.low is not None:
        return Number("nvidia-smi", reserved.low + lo, reserved.high + hi, MODELLED,
                      f"reserved ({reserved.source}) + {ctx}"), notes
    if floor is not None and card is not None:   # reserved >= allocated: a lower bound for the verdict
        return Number("nvidia-smi", floor.low + lo, floor.high + lo, LOWER_BOUND,
                      f"allocated ({floor.source}) + {ctx}; reserved not computed: {reserved.how}"), notes
    return Number("nvidia-smi", None, None, NOT_COMPUTED, "needs the reserved peak: " + reserved.how), notes


# --------------------------------------------------------------------------- the views
def trace(card: Optional[gpus.GpuSpec] = None, run: Any = None, mode: str = "fake",
          **kwargs: Any) -> tuple[Any, list[Event]]:
    """measure_step on the model of ``estimate(run)`` (a RunSpec, or estimate's arguments as keywords;
    fake tensors, the card's SDPA kernel), with its allocator events; one device, so the sharding
    fields are dropped. Raises EstimateError for a step measure cannot run."""
    from . import cuda_rules
    from .compare import measure
    from .estimate import RunSpec
    run = RunSpec.from_kwargs(run if run is not None else kwargs.pop("model", "small"), **kwargs)
    events: list[Event] = []
    with cuda_rules.on_card(card):
        rep = measure(run.replace(sharding="flat", rank_index=0, gpu=None), mode=mode, events=events)
    return rep, events


def _replayed(events: list[Event], card: Optional[gpus.GpuSpec]) -> tuple[Number, Number]:
    r = replay(workspace_events(card) + list(events))
    how = (f"allocator model (allocator.py) on the traced step, {WORKSPACES} cuBLAS workspaces of "
           f"{workspace_bytes(card):,} B first")
    return (Number("allocated peak", r.allocated_peak, r.allocated_peak, REPLAYED, how),
            Number("reserved peak", r.reserved_peak, r.reserved_peak, REPLAYED, how))


def view_for_estimate(est, card: Optional[gpus.GpuSpec] = None, events: Optional[list[Event]] = None,
                      why_not: str = "add --gpu or --reserved", loading: str = "lazy") -> DeviceView:
    """The three numbers of a closed-form estimate; reserved needs ``events`` (from ``trace``)."""
    ws = WORKSPACES * workspace_bytes(card)
    alloc = est.peak + ws
    # an Estimate of an architecture the closed form does not describe is a fake-tensor trace
    what = "fake-tensor trace" if "fake-tensor trace" in est.label else "closed form"
    allocated = Number("allocated peak", alloc, alloc, ESTIMATED,
                       f"{what} {est.peak:,} B + {WORKSPACES} cuBLAS workspaces {ws:,} B")
    if events is not None:
        _, reserved = _replayed(events, card)
    else:
        reserved = Number("reserved peak", None, None, NOT_COMPUTED, why_not)
    smi, notes = _smi(reserved, card, loading, floor=allocated)
    return DeviceView(allocated, reserved, smi, card, notes)


def view_for_report(rep, card: Optional[gpus.GpuSpec] = None, events: Optional[list[Event]] = None,
                    nvml_used: Optional[int] = None, loading: str = "lazy") -> DeviceView:
    """The three numbers of a measurement: read from CUDA on a GPU, replayed from ``events`` otherwise."""
    if rep.mode == "cuda":
        allocated = Number("allocated peak", rep.peak, rep.peak, MEASURED, "torch.cuda.max_memory_allocated()")
        reserved = Number("reserved peak", rep.reserved, rep.reserved, MEASURED, "torch.cuda.max_memory_reserved()")
        if nvml_used is not None:
            smi = Number("nvidia-smi", nvml_used, nvml_used, MEASURED,
                         "NVML memory.used after the step (whole device: other processes included)")
            return DeviceView(allocated, reserved, smi, card, [])
        smi, notes = _smi(reserved, card, loading)
        return DeviceView(allocated, reserved, smi, card, notes)
    if events is None:
        raise ValueError("view_for_report needs the step's events for mode 'cpu' or 'fake' "
                         "(measure_step(..., events=[]), or device_view.trace).")
    allocated, reserved = _replayed(events, card)
    smi, notes = _smi(reserved, card, loading)
    return DeviceView(allocated, reserved, smi, card, notes)


def nvml_used() -> Optional[int]:
    """NVML's memory.used of the current device (bytes), or None where torch cannot read it."""
    import torch
    try:
        return int(torch.cuda.device_memory_used())
    except Exception:   # no NVML (pynvml missing, no driver): the caller falls back to the model
        return None
