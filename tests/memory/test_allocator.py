"""The caching-allocator model (minigpt.memory.allocator), one rule per test, each on a hand-made
event stream whose reserved bytes are derived by hand in the comments (MiB = 2**20 bytes)."""
import pickle

import pytest
import torch

from minigpt.memory import zoo
from minigpt.memory.allocator import Event, replay, round_size
from minigpt.memory.alloc_config import AllocatorConfig
from minigpt.memory.snapshot import events_from_cuda_snapshot, replay_step, save_snapshot

M = 2 ** 20


def A(i, size, tag=""):
    return Event("alloc", i, size, tag)


def F(i):
    return Event("free", i)


def blocks(r):
    return [[(b["size"], b["state"]) for b in s["blocks"]] for s in r.segments]


def actions(r):
    return [t["action"] for t in r.trace]


# ------------------------------------------------------------------------------ sizes
def test_one_byte_rounds_to_512_in_a_2mib_small_segment():
    # round_size(1) = kMinBlockSize = 512; a small request gets a kSmallBuffer = 2 MiB segment
    r = replay([A(1, 1)])
    assert (r.allocated_peak, r.reserved_peak) == (512, 2 * M)
    assert blocks(r) == [[(512, "active_allocated"), (2 * M - 512, "inactive")]]  # rest >= 512: split


def test_small_requests_share_one_2mib_segment():
    # 2048 blocks of 1 KiB fill one 2 MiB segment exactly (2048 * 1024 = 2 MiB); the 2049th needs a
    # second segment: reserved 4 MiB, allocated 2049 KiB
    r = replay([A(i, 1000) for i in range(2049)])       # 1000 bytes -> 1024
    assert r.reserved[2047] == 2 * M and r.allocated[2047] == 2 * M
    assert (r.allocated_peak, r.reserved_peak) == (2049 * 1024, 4 * M)
    assert len(r.segments) == 2


def test_5mib_request_makes_a_20mib_segment_and_a_second_splits_it():
    # 1 MiB < 5 MiB < 10 MiB: kLargeBuffer = 20 MiB segment, split 5 | 15; the second 5 MiB takes
    # the 15 MiB free block (best fit) and splits it 5 | 10: reserved stays 20 MiB
    r = replay([A(1, 5 * M), A(2, 5 * M)])
    assert (r.allocated_peak, r.reserved_peak) == (10 * M, 20 * M)
    assert blocks(r) == [[(5 * M, "active_allocated"), (5 * M, "active_allocated"), (10 * M, "inactive")]]


def test_request_over_10mib_gets_its_own_segment_rounded_to_2mib():
    # 30 MiB exactly -> a 30 MiB segment; 30 MiB + 1 byte -> 30 MiB + 512 -> rounded up to 32 MiB
    assert replay([A(1, 30 * M)]).reserved_peak == 30 * M
    r = replay([A(1, 30 * M + 1)])
    assert (r.allocated_peak, r.reserved_peak) == (30 * M + 512, 32 * M)
    # the 1.5 MiB rest is > 1 MiB and the request < max_split_size (unlimited): it is split off
    assert blocks(r) == [[(30 * M + 512, "active_allocated"), (2 * M - 512, "inactive")]]


def test_round_size_power2_divisions():
    # roundup_power2_next_division(1 MiB + 1, 4): floor 1 MiB, steps of 256 KiB -> 1.25 MiB
    assert round_size(M + 1) == M + 512
    assert round_size(M + 1, AllocatorConfig.parse("roundup_power2_divisions:4")) == M + M // 4
    assert round_size(1200, AllocatorConfig.parse("roundup_power2_divisions:4")) == 1536  # <= 512*4


def test_round_size_power2_divisions_match_torchs_own_test_reference():
    # pytorch's test/test_cuda.py (test_allocator_settings) checks round_size against a reference:
    # from the power of 2 below the size, step up by (that power / divisions) until >= size.
    # 21 Mi floats = 84 MiB with 4 divisions: 64 MiB + 16 MiB steps -> 96 MiB.
    def reference(size, div):
        p = 1 << (size - 1).bit_length()           # the power of 2 >= size
        if p == size:
            return size
        half, step = p // 2, p // 2 // div
        return half + -(-(size - half) // step) * step
    assert reference(84 * M, 4) == 96 * M
    for div in (2, 4, 8, 16):
        cfg = AllocatorConfig.parse(f"roundup_power2_divisions:{div}")
        for size in (5000, M + 1, 3 * M + 12345, 84 * M, 100 * M + 7, 2 ** 30):
            if size > 512 * div:
                assert round_size(size, cfg) == reference(size, div), (size, div)


def test_three_1mib_requests_as_in_torchs_mempool_test():
    # pytorch's test_cuda.py (test_mempool_with_allocator): a 1 MiB request is packed into a 2 MiB
    # segment, a second one shares it, a third needs a second segment
    r = replay([A(i, M) for i in range(3)])
    assert r.reserved == [2 * M, 2 * M, 4 * M]
    assert blocks(r) == [[(M, "active_allocated")] * 2, [(M, "active_allocated"), (M, "inactive")]]


# ---------------------------------------------------------------------- placement
def test_large_pool_keeps_a_rest_of_at_most_1mib_in_the_block():
    # a 12 MiB segment, freed; an 11 MiB request takes it and the 1 MiB rest is not > kSmallSize:
    # no split, the whole 12 MiB block is allocated
    r = replay([A(1, 12 * M), F(1), A(2, 11 * M)])
    assert r.allocated[-1] == 12 * M and r.reserved_peak == 12 * M
    # a 10 MiB request leaves 2 MiB > 1 MiB: split 10 | 2
    r = replay([A(1, 12 * M), F(1), A(2, 10 * M)])
    assert r.allocated[-1] == 10 * M
    assert blocks(r) == [[(10 * M, "active_allocated"), (2 * M, "inactive")]]


def test_best_fit_takes_the_smallest_block_then_the_lower_address():
    # free blocks of 12 MiB (segment 1) and 16 MiB (segment 2): a 10 MiB request takes the 12 MiB one
    ev = [A(1, 12 * M), A(2, 16 * M), F(1), F(2), A(3, 10 * M)]
    r = replay(ev)
    seg_addr = [t["addr"] for t in r.trace if t["action"] == "segment_alloc"]
    assert r.trace[-1]["addr"] == seg_addr[0] and r.reserved_peak == 28 * M
    # two free 12 MiB blocks: a 12 MiB request takes the one at the lower address
    r = replay([A(1, 12 * M), A(2, 12 * M), F(2), F(1), A(3, 12 * M)])
    first = min(t["addr"] for t in r.trace if t["action"] == "segment_alloc")
    assert r.trace[-1]["addr"] == first


def test_freed_neighbours_coalesce():
    # 5 | 5 | 10 in one 20 MiB segment; both 5 MiB blocks freed merge with the 10 MiB rest into one
    # 20 MiB free block, which then serves a 15 MiB request (rest 5 MiB > 1 MiB: split): reserved
    # stays 20 MiB. Without merging, 15 MiB would fit no block and need a new 16 MiB segment.
    r = replay([A(1, 5 * M), A(2, 5 * M), F(1), F(2)])
    assert blocks(r) == [[(20 * M, "inactive")]]
    r = replay([A(1, 5 * M), A(2, 5 * M), F(1), F(2), A(3, 15 * M)])
    assert r.reserved_peak == 20 * M and r.allocated[-1] == 15 * M


# ------------------------------------------------------------------- max_split_size
def test_a_request_below_max_split_size_never_takes_an_oversize_block():
    # max_split_size 40 MiB: the cached 50 MiB block is oversize; a 12 MiB request gets its own
    # 12 MiB segment: 50 + 12 = 62 MiB. Unlimited: it splits the 50 MiB block, 50 MiB reserved.
    ev = [A(1, 50 * M), F(1), A(2, 12 * M)]
    assert replay(ev, "max_split_size_mb:40").reserved_peak == 62 * M
    assert replay(ev).reserved_peak == 50 * M


def test_an_oversize_request_takes_a_block_only_within_20mib_and_never_splits_it():
    # 64 MiB cached; a 42 MiB request: 64 >= 42 + 20 -> not taken, new 42 MiB segment (106 MiB)
    assert replay([A(1, 64 * M), F(1), A(2, 42 * M)], "max_split_size_mb:40").reserved_peak == 106 * M
    # a 46 MiB request: 64 < 46 + 20 -> taken whole (a request >= max_split_size is not split)
    r = replay([A(1, 64 * M), F(1), A(2, 46 * M)], "max_split_size_mb:40")
    assert (r.allocated[-1], r.reserved_peak) == (64 * M, 64 * M)
    # max_non_split_rounding_mb:30 widens the window: 64 < 42 + 30 -> the 42 MiB request takes it
    r = replay([A(1, 64 * M), F(1), A(2, 42 * M)], "max_split_size_mb:40,max_non_split_rounding_mb:30")
    assert r.reserved_peak == 64 * M


# ----------------------------------------------------------------------- empty_cache
def test_empty_cache_releases_only_fully_free_segments():
    # segments: 20 MiB (5 | 5 live, 10 free), 30 MiB (freed); empty_cache frees the 30 MiB one only
    # (the 20 MiB one still holds a live block): 50 -> 20 MiB
    r = replay([A(1, 5 * M), A(2, 5 * M), A(3, 30 * M), F(1), F(3), Event("empty_cache")])
    assert r.reserved[-2:] == [50 * M, 20 * M]
    assert actions(r)[-1] == "segment_free"


# ---------------------------------------------------------------- expandable segments
def test_expandable_segments_grow_in_20mib_pages_and_shrink_on_empty_cache():
    # three 12 MiB requests. Plain: three 12 MiB segments, 36 MiB. Expandable: one virtual segment,
    # large pages of 20 MiB: the first maps page 1 (12 used, 8 free); the second finds the free
    # 8 MiB followed by unmapped space, maps page 2 (28 MiB free) and takes 12 (16 left); the third
    # fits the 16 MiB: 40 MiB reserved in one contiguous segment.
    ev = [A(1, 12 * M), A(2, 12 * M), A(3, 12 * M)]
    assert replay(ev).reserved_peak == 36 * M
    r = replay(ev, "expandable_segments:True")
    assert r.reserved == [20 * M, 40 * M, 40 * M]
    assert actions(r).count("segment_map") == 2 and len(r.segments) == 1
    assert r.segments[0]["total_size"] == 40 * M and r.segments[0]["is_expandable"]
    # free the 2nd and 3rd: [0, 12) live, [12, 40) free; empty_cache unmaps the only fully free
    # page, [20, 40): 20 MiB stay reserved
    r = replay(ev + [F(3), F(2), Event("empty_cache")], "expandable_segments:True")
    assert r.reserved[-1] == 20 * M and actions(r)[-1] == "segment_unmap"
    r = replay(ev + [F(3), F(2), F(1), Event("empty_cache")], "expandable_segments:True")
    assert r.reserved[-1] == 0 and r.segments == []


def test_expandable_small_pool_maps_2mib_pages():
    # three 1 MiB requests (small pool: <= 1 MiB): page 1 holds two, the third maps page 2
    r = replay([A(i, M) for i in range(3)], "expandable_segments:True")
    assert r.reserved == [2 * M, 2 * M, 4 * M]
    # large_segment_size_mb:40 also sets the large page: a 5 MiB request maps one 40 MiB page
    assert replay([A(1, 5 * M)], "expandable_segments:True,large_segment_size_mb:40").reserved_peak == 40 * M


# -------------------------------------------------------------- capacity and OOM
def test_a_failed_segment_frees_the_cache_and_retries():
    # capacity 40 MiB: 30 MiB cached (free), a 32 MiB request: 30 + 32 > 40, so cudaMalloc fails;
    # release_cached_blocks frees the 30 MiB segment and the retry succeeds: 32 MiB reserved
    r = replay([A(1, 30 * M), F(1), A(2, 32 * M)], capacity=40 * M)
    assert r.oom is None and r.reserved == [30 * M, 30 * M, 32 * M]
    assert actions(r)[-3:] == ["segment_free", "segment_alloc", "alloc"]
    # with the 30 MiB still live nothing can be freed: out of memory at event 1
    r = replay([A(1, 30 * M), A(2, 32 * M)], capacity=40 * M)
    assert r.oom_event == 1 and "tried to allocate 33,554,432 bytes" in r.oom
    assert actions(r)[-1] == "oom"


def test_oversize_blocks_are_released_first_under_max_split_size():
    # max_split_size 40 MiB, capacity 70 MiB: 64 MiB cached; a 12 MiB request may not take it, and
    # 64 + 12 > 70: release_available_cached_blocks frees the oversize 64 MiB block, then 12 fits
    r = replay([A(1, 64 * M), F(1), A(2, 12 * M)], "max_split_size_mb:40", capacity=70 * M)
    assert r.oom is None and r.reserved == [64 * M, 64 * M, 12 * M]


def test_expandable_oom_when_the_free_pages_are_partly_used():
    # capacity 40 MiB: 30 MiB maps two pages (40 MiB); a 12 MiB request needs a third; the free
    # 10 MiB sits in a page that is partly used, so nothing can be unmapped: out of memory
    r = replay([A(1, 30 * M), A(2, 12 * M)], "expandable_segments:True", capacity=40 * M)
    assert r.oom_event == 1 and r.reserved == [40 * M]


def test_max_split_oom_then_oversize_blocks_released_as_in_torchs_test():
    # pytorch's test_cuda.py (test_max_split_expandable, non-expandable part): 120 MiB allowed,
    # max_split_size 40 MiB. Three 40 MiB blocks fill it; a fourth is out of memory. Freed, they
    # are three cached oversize blocks; a 120 MiB request fits none, cudaMalloc fails, and
    # release_available_cached_blocks frees oversize blocks from the largest down until 120 MiB
    # are released (all three): then the 120 MiB segment fits.
    ev = [A(1, 40 * M), A(2, 40 * M), A(3, 40 * M)]
    r = replay(ev + [A(4, 40 * M)], "max_split_size_mb:40", capacity=120 * M)
    assert r.oom_event == 3
    r = replay(ev + [F(1), F(2), F(3), A(5, 120 * M)], "max_split_size_mb:40", capacity=120 * M)
    assert r.oom is None and r.reserved[-1] == 120 * M
    assert actions(r)[-5:] == ["segment_free"] * 3 + ["segment_alloc", "alloc"]


# --------------------------------------------------------------------- config strings
def test_conf_string_parsing_matches_torch():
    c = AllocatorConfig.parse("expandable_segments:True, max_split_size_mb:128")
    assert c.expandable_segments and c.max_split_size == 128 * M
    assert c.max_non_split_rounding == 20 * M and AllocatorConfig().max_split_size is None
    assert AllocatorConfig.parse("large_segment_size_mb:40").large_segment_size == 40 * M
    # a 5 MiB request then gets a 40 MiB segment
    assert replay([A(1, 5 * M)], "large_segment_size_mb:40").reserved_peak == 40 * M
    prev = torch._C._accelerator_getAllocatorSettings()
    try:   # torch's own parser (c10, on the CPU build too) agrees on what is valid
        for good in ("expandable_segments:True,max_split_size_mb:128", "garbage_collection_threshold:0.5"):
            torch._C._accelerator_setAllocatorSettings(good)
            AllocatorConfig.parse(good)
        for bad, says in [("expandable_segments:yes", "True or False"),
                          ("max_split_size_mb:10", ">= 20"),
                          ("garbage_collection_threshold:1.5", "in (0, 1)"),
                          ("roundup_power2_divisions:3", "power of 2"),
                          ("large_segment_size_mb:10", "> 10")]:
            with pytest.raises((ValueError, RuntimeError)):
                torch._C._accelerator_setAllocatorSettings(bad)
            with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
                AllocatorConfig.parse(bad)
    finally:
        torch._C._accelerator_setAllocatorSettings(prev)
    with pytest.raises(ValueError, match="key 'bogus' is not known; use one of max_split_size_mb"):
        AllocatorConfig.parse("bogus:1")
    with pytest.raises(ValueError, match="needs the form key:value"):
        AllocatorConfig.parse("max_split_size_mb")
    with pytest.raises(ValueError, match="capacity must be a positive"):
        replay([], capacity=0)
    with pytest.raises(ValueError, match="allocated twice"):
        replay([A(1, 8), A(1, 8)])
    with pytest.raises(ValueError, match="free of id 2, which is not allocated"):
        replay([A(1, 8), F(2)])
    assert replay([A(1, 0), F(1)]).reserved == [0, 0]   # a zero-byte tensor gets no block


# -------------------------------------------------------------- real CUDA recordings
def test_a_real_snapshot_becomes_an_event_stream():
    # the format torch.cuda.memory._snapshot() returns after _record_memory_history(); a free of a
    # block allocated before recording started (addr 7) cannot be replayed and is counted
    snap = {"segments": [], "device_traces": [[
        {"action": "segment_alloc", "addr": 100, "size": 20 * M, "stream": 0, "frames": []},
        {"action": "alloc", "addr": 100, "size": 5 * M, "stream": 0,
         "frames": [{"name": "forward", "filename": "x.py", "line": 1}]},
        {"action": "alloc", "addr": 100 + 5 * M, "size": 5 * M, "stream": 0, "frames": []},
        {"action": "free_requested", "addr": 100, "size": 5 * M, "stream": 0, "frames": []},
        {"action": "free_completed", "addr": 100, "size": 5 * M, "stream": 0, "frames": []},
        {"action": "free_completed", "addr": 7, "size": 512, "stream": 0, "frames": []},
        {"action": "alloc", "addr": 100, "size": 3 * M, "stream": 0, "frames": []},
    ]]}
    events, skipped = events_from_cuda_snapshot(snap)
    assert skipped == 1
    assert [(e.action, e.id, e.size) for e in events] == [
        ("alloc", 0, 5 * M), ("alloc", 1, 5 * M), ("free", 0, 5 * M), ("alloc", 3, 3 * M)]
    assert events[0].tag == "forward"
    # 5 | 5 | 10 in a 20 MiB segment; the freed first 5 MiB takes the 3 MiB (best fit: 5 < 10)
    r = replay(events)
    assert r.reserved_peak == 20 * M and r.allocated[-1] == 8 * M
    with pytest.raises(ValueError, match="device must be in 0..0"):
        events_from_cuda_snapshot(snap, device=1)


# ------------------------------------------------------------------ a real training step
def test_tiny_step_replayed_and_opened_by_memory_viz(tmp_path):
    from torch.cuda import _memory_viz as viz
    report, r = replay_step(zoo.factory("tiny"), zoo.make_batch("tiny", 4, 64), mode="fake",
                            semantics="cuda")
    # the event stream, summed by hand: exact bytes reproduce the tracker's peak. Every storage of
    # the tiny model is <= 1 MiB (small pool, where a rest >= 512 bytes is always split off), so
    # each block is its request rounded to 512 and allocated_peak is the peak of rounded sizes.
    # (In the large pool a rest <= 1 MiB stays in the block: allocated can exceed that sum.)
    assert max(e.size for e in r.events) <= M
    events = r.events
    exact = rounded = peak_exact = peak_rounded = 0
    size = {}
    for e in events:
        if e.action == "alloc":
            size[e.id] = e.size
            exact, rounded = exact + e.size, rounded + round_size(e.size)
        else:
            s = size.pop(e.id)
            exact, rounded = exact - s, rounded - round_size(s)
        peak_exact, peak_rounded = max(peak_exact, exact), max(peak_rounded, rounded)
    assert peak_exact == report.peak
    assert r.allocated_peak == peak_rounded >= report.peak
    assert r.reserved_peak >= r.allocated_peak
    assert {e.tag for e in events} >= {"weights_trainable", "activations", "gradients", "optimizer"}
    # the pickle opens with torch's viewer module
    path = save_snapshot(r, tmp_path / "tiny.pickle")
    with open(path, "rb") as f:
        snap = pickle.load(f)
    assert {t["category"] for t in snap["device_traces"][0]} >= {"activations", "unknown"}
    assert viz.trace_plot(snap).startswith("\n<!DOCTYPE html>") and "base64" in viz.trace_plot(snap)
    assert "total_reserved" in viz.segsum(snap)           # segsum checks its own byte accounting
    text = viz.trace(snap)
    assert "cudaMalloc" in text and "del " in text
    flame = viz.memory(snap, format_flamegraph=lambda lines: lines)   # no flamegraph.pl download
    assert "active_allocated" in flame and "weights_trainable" in flame
    # the written trace is itself a real-format recording: replayed again, the same numbers
    again = replay(events_from_cuda_snapshot(snap)[0])
    assert (again.allocated_peak, again.reserved_peak) == (r.allocated_peak, r.reserved_peak)



def test_event_log_is_off_by_default_and_exact_on_a_cpu_step():
    from minigpt.memory import TensorTracker, measure_step
    assert TensorTracker().events is None
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    events: list = []
    report = measure_step(lambda: mlp, (torch.randn(4, 32),), events=events)
    live, peak, sizes = 0, 0, {}
    for e in events:
        if e.action == "alloc":
            sizes[e.id] = e.size
            live += e.size
        else:
            live -= sizes.pop(e.id)
        peak = max(peak, live)
    assert peak == report.peak
    # every byte of the step's buckets is in the log: AdamW's two moments are tagged optimizer
    assert sum(e.size for e in events if e.action == "alloc" and e.tag == "optimizer") >= 8 * 2762
