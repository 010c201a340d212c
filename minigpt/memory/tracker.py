"""A live-tensor tracker: which bytes are alive, in which bucket, op by op.

The tracker is a ``TorchDispatchMode``: every ATen op of a training step passes through
``__torch_dispatch__``, so every tensor the step creates is seen the moment it is made. We follow
each tensor's *storage* (the block of memory; views share it, so each storage is counted once,
``untyped_storage().nbytes()`` bytes) with a ``weakref`` whose callback fires when the storage is
freed. Each storage gets a serial number when first seen: a storage address that Python or the
allocator reuses later is a new serial, never confused with the dead one.

How a storage gets its bucket (keys from ``buckets.py``):

* registered before the step: parameters (``weights_trainable`` / ``weights_frozen``), buffers
  (``weights_frozen``), optimizer state (``optimizer``), gradients (``gradients``), inputs
  (``temporaries``);
* made during the step: ``weight_copies`` if it was computed from weights alone (an autocast
  cast of a weight, a dequantised NF4 weight), else ``temporaries``;
* ``saved_tensors_hooks`` see every tensor autograd saves for backward: a saved temporary becomes
  an ``activations`` storage (a saved weight or weight copy keeps its own bucket);
* a post-accumulate-grad hook moves each ``.grad`` storage into ``gradients``.

Under ``FakeTensorMode`` the same code runs on fake tensors: storages have sizes but no memory,
so a 7B model can be "trained" for one step on a laptop.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten as _tree_flatten

from .allocator import Event
from .buckets import BUCKETS

# Storages that a CUDA run keeps in host memory (AdamW's non-capturable ``step`` counters and the
# scalars made from them): tracked, but not counted in any GPU bucket (semantics="cuda" only).
HOST = "host"
PHASES = ("setup", "forward", "backward", "optimizer")
# CUDA's caching allocator rounds every block up to a multiple of 512 bytes
CUDA_BLOCK = 512
SMALL_CONSTANT = 1024

# dtypes whose buffers hold quantised weights (NF4 packs two 4-bit codes per uint8): a buffer of
# such a dtype is a weight, and whatever is computed from it alone is a weight copy.
_QUANT_DTYPES = (torch.uint8, torch.int8)


class _Rec:
    """What we know about one storage."""
    __slots__ = ("serial", "key", "nbytes", "bucket", "wref", "data", "weight")

    def __init__(self, serial: int, key: int, nbytes: int, bucket: str, wref, data: bool, weight: bool):
        self.serial, self.key, self.nbytes, self.bucket, self.wref = serial, key, nbytes, bucket, wref
        self.data = data      # computed (partly) from the batch: gradients, activations
        self.weight = weight  # a weight, or computed from weights alone (a weight copy)


def _storage(t: torch.Tensor):
    return t.untyped_storage()


def tree_flatten(tree: Any) -> tuple[list, Any]:
    """The leaves of ``tree``, with every wrapper tensor subclass (a DTensor, FSDP2's sharded
    parameters and gradients) replaced by the plain tensors it wraps: a wrapper owns no memory of
    its own, its local shard does (and the ops inside its dispatch run below this mode, unseen)."""
    leaves, spec = _tree_flatten(tree)
    out: list = []
    for t in leaves:
        stack = [t]
        while stack:
            u = stack.pop()
            if isinstance(u, torch.Tensor) and is_traceable_wrapper_subclass(u):
                attrs, _ = u.__tensor_flatten__()
                stack.extend(getattr(u, a) for a in attrs)
            else:
                out.append(u)
    return out, spec


class TensorTracker(TorchDispatchMode):
    """Follow every tensor storage of a training step and keep live/peak bytes per bucket.

    Usage::

        tr = TensorTracker()
        tr.register_module(model); tr.register_optimizer(opt); tr.register(batch, "temporaries")
        with tr:
            tr.phase = "forward";  loss = model(x).loss
            tr.phase = "backward"; loss.backward()
            tr.phase = "optimizer"; opt.step()
        tr.peak, tr.peak_buckets, tr.phase_peaks

    ``semantics="cuda"`` keeps AdamW's step counters out of the GPU total (see cuda_rules.py);
    ``gpu_only=True`` (real CUDA runs) keeps every host-memory storage out of it.
    ``timeline=True`` records the live bytes per bucket after every op.
    ``record_events=True`` logs every storage the device holds as allocator events in
    ``tracker.events`` (alloc with its bytes and bucket, free), for allocator.replay.
    """

    buckets: tuple[str, ...] = BUCKETS   # a subclass may add its own (distributed.py: communication)

    def __init__(self, semantics: str = "cpu", timeline: bool = False, gpu_only: bool = False,
                 record_events: bool = False):
        super().__init__()
        self.events: Optional[list[Event]] = [] if record_events else None
        self._alloc_ev: dict[int, Event] = {}   # serial -> its alloc event (record_events only)
        # gpu_only (real CUDA runs): storages in host memory are booked as HOST, outside the buckets
        self.gpu_only = gpu_only
        if semantics not in ("cpu", "cuda"):
            raise ValueError(f"semantics must be 'cpu' or 'cuda', got {semantics!r}.")
        self.semantics = semantics
        self._recs: dict[int, _Rec] = {}      # serial -> record (live storages only)
        self._by_key: dict[int, int] = {}     # storage address -> serial of the live storage there
        self._serial = 0
        self.live: dict[str, int] = {k: 0 for k in (*self.buckets, HOST)}
        self.phase = "setup"
        self.peak = 0
        self.peak_buckets: dict[str, int] = {k: 0 for k in self.buckets}
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, tuple[int, dict[str, int]]] = {}
        self.record_timeline = timeline
        self.timeline: list[tuple[int, str, str, tuple[int, ...]]] = []  # (op index, phase, op, live)
        self.sampler = None          # optional callable -> tuple, sampled with each timeline entry
        self.samples: list = []      # (time.perf_counter(), sampler()) per timeline entry
        self.n_ops = 0
        self._hooks: list = []
        self._first_serial = 0
        self._events = 0                      # allocations + frees so far
        self._peak_event = -1                 # value of _events when the peak was recorded
        self._phase_event: dict[str, int] = {}
        self._grad_params: list[nn.Parameter] = []
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    # ------------------------------------------------------------------ storage bookkeeping
    def _find(self, st) -> Optional[_Rec]:
        serial = self._by_key.get(st._cdata)
        if serial is None:
            return None
        rec = self._recs.get(serial)
        # a stale entry (the storage at this address died and a new one took its place)
        if rec is None or rec.wref() is not st:
            return None
        return rec

    def _nbytes(self, st) -> int:
        n = st.nbytes()
        if st.device.type == "cuda":
            n = -(-n // CUDA_BLOCK) * CUDA_BLOCK
        return n

    def _add(self, st, bucket: str, data: bool, weight: bool) -> _Rec:
        if self.gpu_only and st.device.type != "cuda":
            bucket = HOST
        self._serial += 1
        serial, key = self._serial, st._cdata
        wref = weakref.ref(st, lambda _w, s=serial: self._free(s))
        rec = _Rec(serial, key, self._nbytes(st), bucket, wref, data, weight)
        self._recs[serial] = rec
        self._by_key[key] = serial
        self.live[bucket] += rec.nbytes
        self._events += 1
        if self.events is not None and bucket != HOST:
            self._log_alloc(rec, serial)
        return rec

    def _log_alloc(self, rec: _Rec, eid: int) -> None:
        ev = self._alloc_ev[rec.serial] = Event("alloc", eid, rec.nbytes, rec.bucket)
        self.events.append(ev)

    def _log_free(self, rec: _Rec) -> None:
        ev = self._alloc_ev.pop(rec.serial, None)
        if ev is not None:
            self.events.append(Event("free", ev.id, ev.size, rec.bucket))

    def _free(self, serial: int) -> None:
        rec = self._recs.pop(serial, None)
        if rec is None:
            return
        self.live[rec.bucket] -= rec.nbytes
        self._events += 1
        if self.events is not None:
            self._log_free(rec)
        if self._by_key.get(rec.key) == serial:
            del self._by_key[rec.key]

    def _retag(self, rec: _Rec, bucket: str) -> None:
        if self.gpu_only and rec.bucket == HOST:
            return  # host memory stays out of the GPU buckets whatever it is used for
        if rec.bucket != bucket:
            self.live[rec.bucket] -= rec.nbytes
            self.live[bucket] += rec.nbytes
            if self.events is not None:   # the alloc is named after its final bucket
                if bucket == HOST:
                    self._log_free(rec)
                elif rec.serial in self._alloc_ev:
                    self._alloc_ev[rec.serial].tag = bucket
            rec.bucket = bucket
            if self.events is not None and rec.serial not in self._alloc_ev and bucket != HOST:
                self._log_alloc(rec, rec.serial)
            # a tensor saved (or accumulated as .grad) right after it was made was an activation
            # (a gradient) from birth: if nothing was allocated or freed since the peak was
            # recorded, the peak's bucket split is updated too
            if self._events == self._peak_event:
                self.peak_buckets = self.snapshot()
            best = self.phase_peaks.get(self.phase)
            if best is not None and self._events == self._phase_event.get(self.phase):
                self.phase_peaks[self.phase] = (best[0], self.snapshot())

    def _resize_check(self, rec: _Rec, st) -> None:
        n = self._nbytes(st)
        if n != rec.nbytes:  # resize_ / out= ops can grow a storage in place
            self.live[rec.bucket] += n - rec.nbytes
            old = self._alloc_ev.get(rec.serial) if self.events is not None else None
            rec.nbytes = n
            if old is not None:  # a resize is a new block, then the old one is freed
                self._serial += 1
                self._log_alloc(rec, self._serial)
                self.events.append(Event("free", old.id, old.size, rec.bucket))

    # ---------------------------------------------------------------------- registration
    def register(self, tensors: Any, bucket: str, *, data: bool = False, weight: bool = False) -> None:
        """Register tensors that exist before the step (any nesting of lists/dicts/tuples).

        A storage already registered is moved to ``bucket``.
        """
        if bucket not in self.buckets and bucket != HOST:
            raise ValueError(f"bucket must be one of {', '.join(self.buckets)}, got {bucket!r}.")
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                rec = self._find(st)
                if rec is None:
                    self._add(st, bucket, data, weight)
                else:
                    self._retag(rec, bucket)
                    rec.data, rec.weight = data, weight
        self._update_peak()

    def register_module(self, model: nn.Module) -> None:
        """Parameters by requires_grad, buffers as frozen weights, existing grads as gradients."""
        for p in model.parameters():
            self.register(p, "weights_trainable" if p.requires_grad else "weights_frozen", weight=True)
            if p.grad is not None:
                self.register(p.grad, "gradients", data=True)
        for b in model.buffers():
            self.register(b, "weights_frozen", weight=b.dtype in _QUANT_DTYPES)
        self._grad_params = [p for p in model.parameters() if p.requires_grad]

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Moments and step counters. Under CUDA semantics a non-capturable AdamW keeps its
        ``step`` counters on the host (torch/optim/adam.py: ``torch.tensor(0.0, device="cpu")``),
        so they do not count towards GPU memory."""
        for group in optimizer.param_groups:
            host_steps = (self.semantics == "cuda" and not group.get("capturable", False)
                          and not group.get("fused", False))
            for p in group["params"]:
                for name, v in optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor):
                        bucket = HOST if (name == "step" and host_steps) else "optimizer"
                        self.register(v, bucket, data=True)

    # ------------------------------------------------------------------------- the hooks
    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # autograd saves t for backward: a temporary that is saved is an activation
        st = _storage(t)
        rec = self._find(st)
        if rec is None:
            rec = self._add(st, "activations", True, False)
            self._update_peak()
        elif rec.bucket == "temporaries" and rec.serial > self._first_serial:
            # (inputs registered before the step stay temporaries even when saved)
            self._retag(rec, "activations")
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def _grad_hook(self, p: torch.Tensor) -> None:
        for g in [t for t in tree_flatten(p.grad)[0] if isinstance(t, torch.Tensor)]:
            st = _storage(g)
            rec = self._find(st)
            if rec is None:
                self._add(st, "gradients", True, False)
            else:
                self._retag(rec, "gradients")
                rec.data, rec.weight = True, False
            self._update_peak()

    def __enter__(self):
        self._first_serial = self._serial  # storages born after this are the step's own
        for p in self._grad_params:
            self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook))
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return out

    # ------------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "prim":  # metadata queries (prim::device under fake tensors): no memory
            return func(*args, **kwargs)
        # what the inputs are made of decides what a new output is
        data = weight = False
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                rec = self._find(st)
                if rec is None:
                    # a tensor made before tracking and never registered: it was alive all along,
                    # so adopt it as a temporary. Take it for input data (token ids, a batch the
                    # caller did not register) unless it is a small constant (<= 1 KiB, e.g. a
                    # quantisation code table), which must not turn a dequantised weight into data;
                    # integer tensors (ids, labels, masks) are always data.
                    small_const = t.is_floating_point() and st.nbytes() <= SMALL_CONSTANT
                    rec = self._add(st, "temporaries", not small_const, False)
                data |= rec.data
                weight |= rec.weight
        out = func(*args, **kwargs)
        weight_copy = weight and not data and self.phase != "optimizer"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                rec = self._find(st)
                if rec is not None:
                    self._resize_check(rec, st)
                    continue
                bucket = "weight_copies" if weight_copy else "temporaries"
                if (self.semantics == "cuda" and self.phase == "optimizer" and t.dim() == 0
                        and not data):
                    bucket = HOST  # scalars made on the host for the step counters
                self._add(st, bucket, data, weight_copy)
        self.n_ops += 1
        self._update_peak()
        if self.record_timeline:
            self._sample(func.__name__)
        return out

    def _sample(self, what: str) -> None:
        self.timeline.append((self.n_ops, self.phase, what, self.snapshot_tuple()))
        self.samples.append((time.perf_counter(), self.sampler() if self.sampler is not None else None))

    # ------------------------------------------------------------------------ read-outs
    def total(self) -> int:
        return sum(self.live[k] for k in self.buckets)

    def snapshot(self) -> dict[str, int]:
        """Live bytes per bucket right now."""
        return {k: self.live[k] for k in self.buckets}

    def snapshot_tuple(self) -> tuple[int, ...]:
        return tuple(self.live[k] for k in self.buckets)

    def _update_peak(self) -> None:
        total = self.total()
        if total > self.peak:
            self.peak, self.peak_buckets, self.peak_phase = total, self.snapshot(), self.phase
            self._peak_event = self._events
        best = self.phase_peaks.get(self.phase)
        if best is None or total > best[0]:
            self.phase_peaks[self.phase] = (total, self.snapshot())
            self._phase_event[self.phase] = self._events

    def reset_peak(self) -> None:
        """Start peak bookkeeping afresh from what is alive now."""
        self.peak, self.peak_buckets, self.peak_phase = 0, {k: 0 for k in self.buckets}, self.phase
        self.phase_peaks = {}
        self._update_peak()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._update_peak()  # the live bytes at the phase boundary belong to the new phase too
        if self.record_timeline:
            self._sample(f"<{phase}>")

    def storage_resized(self, t: torch.Tensor, bucket: str = "weight_copies") -> None:
        """Tell the tracker that ``t``'s storage was resized outside the dispatcher
        (``UntypedStorage.resize_``, as FSDP2 frees and re-allocates its unsharded parameters):
        a storage first seen here joins ``bucket``."""
        st = _storage(t)
        rec = self._find(st)
        if rec is None:
            self._add(st, bucket, False, bucket == "weight_copies")
        else:
            self._resize_check(rec, st)
        self._update_peak()

    def storages(self) -> Iterable[_Rec]:
        return list(self._recs.values())
