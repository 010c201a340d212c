"""PyTorch memory snapshots in and out of the allocator model (allocator.py).

* ``replay_step``: measure one training step with the tracker's event log and replay it through
  the caching allocator: the tracker's peak (sum of live storages) beside the predicted
  ``max_memory_reserved``.
* ``save_snapshot``: write a replay as the pickle ``torch.cuda.memory._snapshot()`` makes, so
  ``python -m torch.cuda._memory_viz trace_plot snap.pickle -o snap.html`` and
  https://pytorch.org/memory_viz open it.
* ``events_from_cuda_snapshot``: a real recording (``torch.cuda.memory._record_memory_history()``,
  then ``_snapshot()``) as the same event stream, to replay it under another
  ``PYTORCH_CUDA_ALLOC_CONF`` or capacity.

    report, r = replay_step(lambda: from_preset("tiny"), (idx, targets), config="expandable_segments:True")
    r.reserved_peak, save_snapshot(r, "runs/tiny.pickle")
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional, Union

from .alloc_config import ConfigLike
from .allocator import Event, Replay, replay
from .measure import MemoryReport, ModelOrFactory, measure_step


def replay_step(model_or_factory: ModelOrFactory, batch: Any, config: ConfigLike = None,
                capacity: Optional[int] = None, **measure_kwargs) -> tuple[MemoryReport, Replay]:
    """``measure_step`` (same arguments; mode "cpu" or "fake") with its allocator events replayed.

    The replay starts from an empty allocator: the registered states (weights, optimizer state,
    batch) are allocated first, in registration order, then the step's own storages. A real run
    allocated its weights in another order, with the warm-up step in between, so ``reserved_peak``
    is a model of ``max_memory_reserved``, not a measurement.
    """
    if measure_kwargs.get("mode") == "cuda":
        raise ValueError("replay_step needs mode='cpu' or mode='fake'; on a GPU read "
                         "torch.cuda.max_memory_reserved() instead, or replay a recording with "
                         "events_from_cuda_snapshot.")
    events: list[Event] = []
    report = measure_step(model_or_factory, batch, events=events, **measure_kwargs)
    return report, replay(events, config, capacity)


def save_snapshot(snapshot: Union[Replay, dict], path: Union[str, Path]) -> Path:
    """Pickle a replay (or a snapshot dict) in the format of ``torch.cuda.memory._dump_snapshot``."""
    snap = snapshot.to_snapshot() if isinstance(snapshot, Replay) else snapshot
    if not isinstance(snap, dict) or "segments" not in snap or "device_traces" not in snap:
        raise ValueError("save_snapshot needs a Replay or a dict with 'segments' and 'device_traces' "
                         "(the format of torch.cuda.memory._snapshot()).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(snap, f)
    return path


def events_from_cuda_snapshot(snapshot: dict, device: int = 0) -> tuple[list[Event], int]:
    """The alloc/free events of one device of a real snapshot, and how many frees were skipped.

    ``alloc`` entries give the requested size; a block returns to the pool at ``free_completed``
    (``free_requested`` differs only when other streams still use it). Segment, snapshot and OOM
    entries are the allocator's own doing and are left out: the replay makes its own. A free of a
    block allocated before recording started cannot be replayed (its size and time of birth are
    unknown): it is skipped and counted.
    """
    traces = snapshot.get("device_traces") if isinstance(snapshot, dict) else None
    if traces is None:
        raise ValueError("snapshot must be the dict of torch.cuda.memory._snapshot() (with "
                         "'device_traces'); record with torch.cuda.memory._record_memory_history().")
    if not 0 <= device < len(traces):
        raise ValueError(f"device must be in 0..{len(traces) - 1} for this snapshot, got {device}.")
    events: list[Event] = []
    live: dict[int, int] = {}   # address -> id of the allocation there
    skipped = 0
    for entry in traces[device]:
        action, addr = entry["action"], entry.get("addr", 0)
        if action == "alloc":
            frames = entry.get("frames") or []
            tag = frames[0].get("name", "") if frames else ""
            live[addr] = len(events)
            events.append(Event("alloc", len(events), int(entry["size"]), tag))
        elif action == "free_completed":
            eid = live.pop(addr, None)
            if eid is None:
                skipped += 1
            else:
                events.append(Event("free", eid, int(entry["size"])))
    return events, skipped
