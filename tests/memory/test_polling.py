"""The learner's nvidia-smi polling loop on a replay (minigpt.memory.polling): several steps of the
tiny preset with batches of different lengths (dynamic padding), fake tensors, CUDA semantics."""
import matplotlib
import pytest
import torch

from minigpt.memory import gpus, measure_step
from minigpt.memory.alloc_config import MIN_BLOCK, SMALL_SIZE
from minigpt.memory.device_view import WORKSPACES, context, workspace_bytes
from minigpt.memory.polling import PollTimeline, plot_polling, poll, record_steps, summary
from minigpt.model import from_preset

LENGTHS = (48, 64, 32, 64)   # a longer batch, the longest, a short one, the longest again


def batch(T: int):
    g = torch.Generator().manual_seed(T)
    idx = torch.randint(0, 50, (4, T), generator=g)   # (B=4, T)
    return idx, idx.clone()


def tiny():
    return from_preset("tiny")


@pytest.fixture(scope="module")
def tl() -> PollTimeline:
    return record_steps(tiny, [batch(T) for T in LENGTHS], workspaces=False)


def test_reserved_holds_allocated_which_holds_the_requests(tl):
    assert len(tl) == len(tl.reserved) == len(tl.requested) == len(tl.events)
    assert all(r >= a for r, a in zip(tl.reserved, tl.allocated))
    # a block is the request rounded up to 512 B, or (large pool) that plus an unsplit rest of <= 1 MiB
    assert all(0 <= a - q <= n * (MIN_BLOCK - 1 + SMALL_SIZE)
               for a, q, n in zip(tl.allocated, tl.requested, tl.live_blocks))
    assert tl.shapes == [(4, T) for T in LENGTHS]
    assert tl.step_start == sorted(tl.step_start) and tl.step_start[0] > 0   # weights come first


def test_step_peaks_are_measure_steps_peaks(tl):
    """From step 2 on (the optimizer state exists, as after measure_step's warm-up) each step's
    tracker peak is measure_step's peak for the same batch, to the byte; the replayed allocated
    peak adds only the allocator's rounding and unsplit rests."""
    req, alloc = tl.step_requested_peaks(), tl.step_peaks()
    for k, T in enumerate(LENGTHS):
        if k == 0:
            assert req[0] < measure_step(tiny, batch(T), mode="fake", semantics="cuda").peak  # no AdamW state yet
            continue
        peak = measure_step(tiny, batch(T), mode="fake", semantics="cuda").peak
        assert req[k] == peak, (k, T)
        i = tl._span(k)[0] + max(range(len(tl._span(k))), key=lambda j: tl.allocated[tl._span(k)[0] + j])
        assert peak <= alloc[k] <= peak + tl.live_blocks[i] * (MIN_BLOCK - 1 + SMALL_SIZE)
    assert req[1] == req[3] and alloc[1] == alloc[3]   # the same shape twice: the same peak


def test_the_last_reading_is_not_the_step_peak(tl):
    p = poll(tl, every=97, seed=3)
    s = summary(tl, p)
    assert p.indices[0] < 97 and all(b - a == 97 for a, b in zip(p.indices, p.indices[1:]))
    assert p.indices[-1] > len(tl) - 1 - 97
    lo, hi, _ = context(gpus.gpu("t4"), "lazy")   # the default card
    assert tl.context == (lo, hi) and 0 < lo <= hi
    last = tl.reserved[p.indices[-1]]
    assert p.last == (last + lo, last + hi)
    # reserved never shrinks without empty_cache, so the last reading holds the largest step peak ...
    assert s["reserved_never_drops"] and last >= s["max_step_peak"]
    # ... and overstates it by the cached blocks plus the context: exactly this much
    assert p.last[0] - s["max_step_peak"] == (last - s["max_step_peak"]) + lo > 0
    assert s["last_above_every_peak"] is True
    assert s["max_reserved"] == max(tl.reserved) >= last


def test_deterministic_integers():
    a = record_steps(tiny, [batch(T) for T in LENGTHS[:2]], card="a100")
    b = record_steps(tiny, [batch(T) for T in LENGTHS[:2]], card="a100")
    assert (a.allocated, a.reserved, a.step_start) == (b.allocated, b.reserved, b.step_start)
    assert all(isinstance(v, int) for v in a.allocated + a.reserved)
    assert poll(a, every=50, seed=1) == poll(b, every=50, seed=1)
    # the cuBLAS workspaces open the stream and stay allocated
    assert [e.size for e in a.events[:WORKSPACES]] == [workspace_bytes(gpus.gpu("a100"))] * WORKSPACES
    assert min(a.allocated[WORKSPACES - 1:]) >= WORKSPACES * workspace_bytes(gpus.gpu("a100"))


def test_bad_input_says_what_to_change(tl):
    with pytest.raises(ValueError, match="every must be an integer from 1"):
        poll(tl, every=0)
    with pytest.raises(ValueError, match="batches must hold at least one batch"):
        record_steps(tiny, [])
    with pytest.raises(ValueError, match="mode must be 'fake' or 'cpu'"):
        record_steps(tiny, [batch(8)], mode="cuda")


def test_plot_returns_a_figure_and_saves_nothing(tl, tmp_path):
    matplotlib.use("Agg")
    fig = plot_polling(tl, poll(tl, every=100))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 3
    with pytest.raises(ValueError, match="path must be inside the repository"):
        plot_polling(tl, path=tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
