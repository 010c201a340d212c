"""A model of PyTorch's CUDA caching allocator: replay a step's alloc/free events, get "reserved".

``torch.cuda.max_memory_allocated()`` is the sum of live blocks (each request rounded up to 512
bytes); ``max_memory_reserved()`` is what the caching allocator took from the driver: whole
segments, partly free. The tracker (tracker.py) gives the first; this module replays the same
alloc/free stream through the allocator's rules to predict the second.

    r = replay(tracker.events, AllocatorConfig.parse("expandable_segments:True"))
    r.allocated_peak, r.reserved_peak, r.to_snapshot()    # the last opens in pytorch.org/memory_viz

The rules below are read from the allocator's source, pytorch/pytorch
``c10/cuda/CUDACachingAllocator.cpp`` (class ``DeviceCachingAllocator``) at commit 001074d2
(the stored version we could read; the wheel pinned here is torch 2.13.0, git cf30153c, whose C++
source is not in the wheel), and ``c10/core/AllocatorConfig.cpp`` (``parseArgs``) at 065861fb.
Function by function:

* ``round_size``: requests round up to a multiple of 512 bytes (``kMinBlockSize``); with
  ``roundup_power2_divisions`` to the next power-of-2 division (``roundup_power2_next_division``).
* ``get_pool``: rounded sizes <= 1 MiB (``kSmallSize``) go to the small pool, larger ones to the
  large pool. ``get_allocation_size``: a new small segment is 2 MiB (``kSmallBuffer``); a large
  request < 10 MiB (``kMinLargeAlloc``) gets a 20 MiB segment (``kLargeBuffer``, or
  ``large_segment_size_mb``), a larger one its size rounded up to 2 MiB (``kRoundLarge``).
* ``get_free_block``: best fit, the smallest free block >= the size, ties to the lower address (the
  pool is a ``std::set`` ordered by ``BlockComparatorSize``: size, then address). With
  ``max_split_size``: a request below it never takes a block at or above it; a request at or above
  it takes a block only if the block is < request + ``max_non_split_rounding`` (20 MiB default).
* ``should_split``: the rest of a block is split off when it is >= 512 bytes (small pool, or any
  pool with expandable segments), else (large pool) when the request is < ``max_split_size`` and
  the rest is > 1 MiB.
* ``free_block`` / ``try_merge_blocks``: a freed block merges with free neighbours of its segment.
* ``malloc`` on a miss: ``alloc_block`` (cudaMalloc); if that fails,
  ``release_available_cached_blocks`` (only with max_split_size: free oversize cached blocks) and
  retry; then ``release_cached_blocks`` (free every fully-free segment, the body of
  ``emptyCache``) and retry; then out of memory.
* expandable segments (``try_allocate_expandable_block``, ``find_expandable_block``,
  ``map_block``, ``unmap_block``): one virtual segment per pool (and stream), mapped page by page:
  2 MiB pages in the small pool, 20 MiB pages (``large_segment_size``) in the large pool. Reserved grows by whole pages
  mapped at the lowest address that fits and shrinks only when ``release_cached_blocks``
  (``empty_cache`` or the OOM path) unmaps the free pages.

One stream, no CUDA graphs, no garbage collection: see docs/ALLOCATOR_NOTES.md for what is not
modelled. Segment addresses are made up (a bump pointer); ties between equal free blocks of
different segments follow creation order, where the real allocator follows the driver's addresses.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field, fields
from typing import Iterable, Optional

from .alloc_config import (LARGE_BUFFER, MIN_BLOCK, MIN_LARGE_ALLOC, ROUND_LARGE, SMALL_BUFFER,
                           SMALL_SIZE, AllocatorConfig, ConfigLike, as_config, round_size)

_BASE_ADDR = 0x7F0000000000  # made-up device addresses start here


# ------------------------------------------------------------------------- the events
@dataclass
class Event:
    """One request to the allocator: ``alloc`` ``size`` bytes as ``id``, ``free`` ``id``, or
    ``empty_cache`` (torch.cuda.empty_cache()). ``tag`` names it in snapshots (e.g. its bucket)."""
    action: str
    id: int = 0
    size: int = 0
    tag: str = ""


class _Block:
    __slots__ = ("addr", "size", "requested", "allocated", "mapped", "seg", "prev", "next", "tag")

    def __init__(self, addr: int, size: int, seg: "_Segment", mapped: bool = True):
        self.addr, self.size, self.seg, self.mapped = addr, size, seg, mapped
        self.requested, self.allocated, self.tag = 0, False, ""
        self.prev: Optional[_Block] = None
        self.next: Optional[_Block] = None


class _Segment:
    __slots__ = ("pool", "base", "expandable", "page", "head")

    def __init__(self, pool: str, base: int, expandable: bool, page: int):
        self.pool, self.base, self.expandable, self.page = pool, base, expandable, page
        self.head: Optional[_Block] = None

    def blocks(self) -> list[_Block]:
        out, b = [], self.head
        while b is not None:
            out.append(b)
            b = b.next
        return out


def _key(b: _Block) -> tuple[int, int]:
    return (b.size, b.addr)   # BlockComparatorSize (one stream)


class OutOfMemory(Exception):
    """The replayed step does not fit in ``capacity`` even after freeing the cache."""


# ----------------------------------------------------------------------- the allocator
class CachingAllocator:
    """One device, one stream. ``malloc(id, size)``, ``free(id)``, ``empty_cache()``;
    ``allocated`` and ``reserved`` are the two numbers torch.cuda reports (bytes)."""

    def __init__(self, config: ConfigLike = None, capacity: Optional[int] = None):
        self.config = as_config(config)
        self.capacity = capacity
        self.allocated = self.reserved = 0
        self.free_blocks: dict[str, list[_Block]] = {"small": [], "large": []}  # sorted by _key
        self.unmapped: dict[str, list[_Block]] = {"small": [], "large": []}     # expandable only
        self.segments: list[_Segment] = []
        self.live: dict[int, _Block] = {}
        self.empty: set[int] = set()   # ids of zero-byte allocations (no block)
        self.trace: list[dict] = []   # torch's device_traces entries
        self._addr = _BASE_ADDR
        self._time = 0

    # ------------------------------------------------------------------ bookkeeping
    def _record(self, action: str, addr: int, size: int, tag: str = "", **extra) -> None:
        frames = [{"filename": "minigpt/memory/allocator.py", "line": 0, "name": tag}] if tag else []
        # category: memory_viz colours the timeline by it (here the tracker's bucket)
        self.trace.append({"action": action, "addr": addr, "size": size, "stream": 0,
                           "time_us": self._time, "frames": frames, "category": tag or "unknown",
                           **extra})

    def _insert(self, b: _Block) -> None:
        insort(self.free_blocks[b.seg.pool], b, key=_key)

    def _remove(self, b: _Block) -> None:
        lst = self.free_blocks[b.seg.pool]
        i = bisect_left(lst, _key(b), key=_key)
        assert lst[i] is b
        del lst[i]

    def _new_segment(self, pool: str, size: int, expandable: bool, page: int) -> _Segment:
        seg = _Segment(pool, self._addr, expandable, page)
        seg.head = _Block(self._addr, size, seg, mapped=not expandable)
        self._addr += -(-size // LARGE_BUFFER) * LARGE_BUFFER
        self.segments.append(seg)
        return seg

    # ------------------------------------------------------------------- malloc/free
    def malloc(self, id: int, orig: int, tag: str = "") -> None:
        if orig == 0:
            self.empty.add(id)   # allocate(0) hands out a null pointer without calling malloc
            return
        size = round_size(orig, self.config)
        pool = "small" if size <= SMALL_SIZE else "large"
        if size <= SMALL_SIZE:
            alloc_size = SMALL_BUFFER
        elif size < MIN_LARGE_ALLOC:
            alloc_size = self.config.large_segment_size
        else:
            alloc_size = -(-size // ROUND_LARGE) * ROUND_LARGE
        b = self._get_free_block(pool, size)
        if b is None:
            b = (self._alloc_block(pool, size, alloc_size)
                 or (self._release_available_cached_blocks(pool, size)
                     and self._alloc_block(pool, size, alloc_size))
                 or (self.release_cached_blocks() and self._alloc_block(pool, size, alloc_size)))
        if not b:
            free = None if self.capacity is None else self.capacity - self.reserved
            self._record("oom", 0, alloc_size, tag, device_free=free)
            raise OutOfMemory(f"out of memory: tried to allocate {alloc_size:,} bytes for a request of "
                              f"{orig:,} bytes ({tag or 'untagged'}) with {self.allocated:,} allocated "
                              f"and {self.reserved:,} reserved of a capacity of {self.capacity or 0:,}.")
        cfg = self.config
        rest = b.size - size
        if pool == "small" or cfg.expandable_segments:   # should_split
            split = rest >= MIN_BLOCK
        else:
            split = (cfg.max_split_size is None or size < cfg.max_split_size) and rest > SMALL_SIZE
        if split:   # alloc_found_block: the front is handed out, the rest stays free
            front = _Block(b.addr, size, b.seg)
            front.prev, front.next = b.prev, b
            if b.prev is not None:
                b.prev.next = front
            else:
                b.seg.head = front
            b.prev = front
            b.addr += size
            b.size -= size
            self._insert(b)
            b = front
        b.allocated, b.requested, b.tag = True, orig, tag
        self.live[id] = b
        self.allocated += b.size
        self._record("alloc", b.addr, orig, tag)

    def free(self, id: int) -> None:
        if id in self.empty:
            self.empty.discard(id)
            return
        b = self.live.pop(id)
        b.allocated = False
        self.allocated -= b.size
        self._record("free_requested", b.addr, b.requested, b.tag)
        self._record("free_completed", b.addr, b.requested, b.tag)
        self._merge(b, b.prev)
        self._merge(b, b.next)
        b.tag, b.requested = "", 0
        self._insert(b)

    def _merge(self, dst: _Block, src: Optional[_Block]) -> None:
        """try_merge_blocks: dst absorbs a free neighbour of the same mapped state."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return
        if src.mapped:
            self._remove(src)
        else:
            self.unmapped[src.seg.pool].remove(src)
        if dst.prev is src:
            dst.addr, dst.prev = src.addr, src.prev
            if dst.prev is not None:
                dst.prev.next = dst
            else:
                dst.seg.head = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size

    def _get_free_block(self, pool: str, size: int) -> Optional[_Block]:
        lst = self.free_blocks[pool]
        i = bisect_left(lst, (size, 0), key=_key)
        if i == len(lst):
            return None
        if lst[i].seg.expandable:
            # a block followed by unmapped space counts as the size it could grow to
            def grow(b: _Block) -> int:
                return b.size + (b.next.size if b.next is not None and not b.next.mapped else 0)
            while lst[i].seg.expandable and i + 1 < len(lst) and grow(lst[i + 1]) < grow(lst[i]):
                i += 1
        b, cap = lst[i], self.config.max_split_size
        if cap is not None and size < cap <= b.size:
            return None    # do not return an oversized block for a smaller request
        if cap is not None and size >= cap and b.size >= size + self.config.max_non_split_rounding:
            return None
        del lst[i]
        return b

    def _fits(self, nbytes: int) -> bool:
        return self.capacity is None or self.reserved + nbytes <= self.capacity

    def _alloc_block(self, pool: str, size: int, alloc_size: int) -> Optional[_Block]:
        if self.config.expandable_segments:
            return self._try_allocate_expandable_block(pool, size)
        if not self._fits(alloc_size):
            return None    # cudaMalloc fails
        seg = self._new_segment(pool, alloc_size, False, alloc_size)
        self.reserved += alloc_size
        self._record("segment_alloc", seg.base, alloc_size)
        return seg.head

    # ---------------------------------------------------------------- releasing cache
    def _release_block(self, b: _Block) -> None:
        self._remove(b)
        self.segments.remove(b.seg)
        self.reserved -= b.size
        self._record("segment_free", b.addr, b.size)

    def _release_available_cached_blocks(self, pool: str, size: int) -> bool:
        """Free oversize cached blocks (max_split_size only), just enough for ``size``."""
        cap = self.config.max_split_size
        if cap is None:
            return False
        lst = self.free_blocks[pool]
        want = max(size, cap)
        i = bisect_left(lst, (want, 0), key=_key)
        if i < len(lst):
            self._release_block(lst[i])
            return True
        released, j = 0, i - 1
        while j >= 0 and released < want and lst[j].size >= cap:
            released += lst[j].size
            self._release_block(lst[j])
            j -= 1
        return released >= want

    def release_cached_blocks(self) -> bool:
        """Free every fully-free segment; unmap the free pages of expandable segments."""
        for pool in ("large", "small"):
            to_unmap = []
            for b in list(self.free_blocks[pool]):
                if b.seg.expandable:
                    to_unmap.append(b)
                elif b.prev is None and b.next is None:
                    self._release_block(b)
            for b in to_unmap:
                self._unmap_block(b)
                if b.prev is None and b.next is None and not b.mapped:
                    self.unmapped[pool].remove(b)
                    self.segments.remove(b.seg)
        return True

    empty_cache = release_cached_blocks

    # ------------------------------------------------------------ expandable segments
    def _page_range(self, b: _Block, lo_round_up: bool, size: int) -> tuple[int, int]:
        seg, page = b.seg, b.seg.page
        lo = b.addr - seg.base
        begin = -(-lo // page) if lo_round_up else lo // page
        end = (lo + size) // page if lo_round_up else -(-(lo + size) // page)
        return seg.base + begin * page, max(0, end - begin) * page

    def _map_block(self, b: _Block, size: int) -> bool:
        addr, nbytes = self._page_range(b, False, size)
        if not self._fits(nbytes):
            return False   # cuMemCreate fails: the pages of this call are given back
        self.unmapped[b.seg.pool].remove(b)
        b.mapped = True
        if nbytes < b.size:
            rest = _Block(addr + nbytes, b.size - nbytes, b.seg, mapped=False)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next = rest
            self.unmapped[b.seg.pool].append(rest)
            b.size = nbytes
        self._merge(b, b.prev)
        self._merge(b, b.next)
        self._insert(b)
        self.reserved += nbytes
        self._record("segment_map", addr, nbytes)
        return True

    def _unmap_block(self, b: _Block) -> None:
        addr, nbytes = self._page_range(b, True, b.size)
        if nbytes == 0:
            return
        self._remove(b)
        before, after = addr - b.addr, b.size - (addr - b.addr) - nbytes
        for start, n, left in ((b.addr, before, True), (addr + nbytes, after, False)):
            if n > 0:   # the partly used pages at either end stay mapped, as free blocks
                part = _Block(start, n, b.seg)
                if left:
                    part.prev, part.next = b.prev, b
                    if b.prev is not None:
                        b.prev.next = part
                    else:
                        b.seg.head = part
                    b.prev = part
                else:
                    part.prev, part.next = b, b.next
                    if b.next is not None:
                        b.next.prev = part
                    b.next = part
                self._insert(part)
        b.addr, b.size, b.mapped = addr, nbytes, False
        self._merge(b, b.prev)
        self._merge(b, b.next)
        self.unmapped[b.seg.pool].append(b)
        self.reserved -= nbytes
        self._record("segment_unmap", addr, nbytes)

    def _try_allocate_expandable_block(self, pool: str, size: int) -> Optional[_Block]:
        c = self._find_expandable_block(pool, size)
        if not c.mapped and not self._map_block(c, min(c.size, size)):
            return None        # (a mapped block absorbs its free neighbours: c stays the block)
        while c.size < size:   # free -> unmapped: map more pages behind it
            nxt = c.next
            if not self._map_block(nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt
        self._remove(c)
        return c

    def _find_expandable_block(self, pool: str, size: int) -> _Block:
        """The lowest address where free and unmapped space together fit ``size``."""
        def room(b: Optional[_Block]) -> int:
            n = 0
            while b is not None and n < size and not b.allocated:
                n, b = n + b.size, b.next
            return n
        for c in sorted(self.unmapped[pool], key=lambda b: b.addr):
            if c.prev is not None and not c.prev.allocated:
                c = c.prev
            if room(c) >= size:
                return c
        page = SMALL_BUFFER if pool == "small" else self.config.large_segment_size
        # the virtual range: 1 1/8 of the device memory (1 TiB when no capacity is given)
        space = 2 ** 40 if self.capacity is None else self.capacity + self.capacity // 8
        seg = self._new_segment(pool, -(-space // page) * page, True, page)
        self.unmapped[pool].append(seg.head)
        return seg.head

    # ---------------------------------------------------------------------- read-out
    def snapshot_segments(self) -> list[dict]:
        """``segments`` of torch.cuda.memory._snapshot(): one per segment (per mapped range of an
        expandable one), blocks in address order."""
        out = []
        for seg in self.segments:
            runs: list[list[_Block]] = [[]]
            for b in seg.blocks():
                if b.mapped:
                    runs[-1].append(b)
                elif runs[-1]:
                    runs.append([])
            for run in (r for r in runs if r):
                blocks = [{"address": b.addr, "size": b.size, "requested_size": b.requested,
                           "state": "active_allocated" if b.allocated else "inactive",
                           "frames": [{"filename": "minigpt/memory/allocator.py", "line": 0,
                                       "name": b.tag}] if b.tag else []} for b in run]
                alloc = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
                out.append({"device": 0, "address": run[0].addr, "stream": 0,
                            "total_size": sum(b.size for b in run), "allocated_size": alloc,
                            "active_size": alloc, "requested_size": sum(b.requested for b in run),
                            "segment_type": seg.pool, "segment_pool_id": (0, 0),
                            "is_expandable": seg.expandable, "frames": [], "blocks": blocks})
        return sorted(out, key=lambda s: s["address"])


# -------------------------------------------------------------------------- replaying
@dataclass
class Replay:
    """A replayed event stream. Sizes in bytes; one timeline value per event."""
    config: AllocatorConfig
    capacity: Optional[int]
    allocated: list[int]
    reserved: list[int]
    segments: list[dict]          # the final state, in torch's snapshot format
    trace: list[dict]             # torch's device_traces entries, in order
    oom: Optional[str] = None     # the out-of-memory sentence, if the step did not fit
    oom_event: Optional[int] = None
    events: list[Event] = field(default_factory=list)   # what was replayed

    @property
    def allocated_peak(self) -> int:
        return max(self.allocated, default=0)

    @property
    def reserved_peak(self) -> int:
        return max(self.reserved, default=0)

    def to_snapshot(self) -> dict:
        """A dict in the format of ``torch.cuda.memory._snapshot()`` (pickle it for memory_viz)."""
        settings = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
        return {"segments": self.segments, "device_traces": [list(self.trace)],
                "allocator_settings": settings}


def replay(events: Iterable[Event], config: ConfigLike = None, capacity: Optional[int] = None) -> Replay:
    """Replay alloc/free/empty_cache events through the caching allocator (see the module doc).

    ``capacity`` (bytes, optional) is what the driver can give: a segment that would exceed it
    triggers the real OOM path (free cached blocks, retry); if it still does not fit the replay
    stops there and ``Replay.oom`` says why.
    """
    if capacity is not None and capacity <= 0:
        raise ValueError(f"capacity must be a positive number of bytes or None, got {capacity!r}.")
    a = CachingAllocator(config, capacity)
    events = list(events)
    allocated, reserved = [], []
    oom = oom_event = None
    for i, e in enumerate(events):
        a._time = i
        try:
            if e.action == "alloc":
                if e.id in a.live or e.id in a.empty:
                    raise ValueError(f"event {i}: id {e.id} is allocated twice without a free; give "
                                     f"each live allocation its own id.")
                a.malloc(e.id, e.size, e.tag)
            elif e.action == "free":
                if e.id not in a.live and e.id not in a.empty:
                    raise ValueError(f"event {i}: free of id {e.id}, which is not allocated; each free "
                                     f"needs an earlier alloc of the same id.")
                a.free(e.id)
            elif e.action == "empty_cache":
                a.empty_cache()
            else:
                raise ValueError(f"event {i}: action must be 'alloc', 'free' or 'empty_cache', "
                                 f"got {e.action!r}.")
        except OutOfMemory as err:
            oom, oom_event = str(err), i
            break
        allocated.append(a.allocated)
        reserved.append(a.reserved)
    return Replay(a.config, capacity, allocated, reserved, a.snapshot_segments(), a.trace, oom, oom_event,
                  events)
