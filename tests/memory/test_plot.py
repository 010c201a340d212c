"""minigpt.memory.plot: figures with the right number of bars and points, binary-unit axes."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from minigpt.memory.buckets import BUCKETS  # noqa: E402
from minigpt.memory.estimate import estimate  # noqa: E402
from minigpt.memory.plot import BUCKET_COLORS, bucket_bars, peak_vs, sweep  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402


@pytest.fixture(scope="module")
def three():
    return {m: estimate("small", method=m, precision="amp-bf16", batch=2, seq=64) for m in ("full", "lora", "qlora")}


def test_bucket_bars_one_stacked_bar_per_setup(three, tmp_path):
    fig = bucket_bars(three)
    ax = fig.axes[0]
    assert len(ax.patches) == len(BUCKETS) * 3                       # 7 segments x 3 setups
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full", "lora", "qlora"]
    assert "MiB" in ax.get_ylabel() and "2^20 bytes" in ax.get_ylabel()
    # consistent colours: the first segment of every bar is weights_trainable's colour
    first = ax.patches[:3]
    assert all(matplotlib.colors.to_hex(p.get_facecolor()) == BUCKET_COLORS["weights_trainable"] for p in first)
    # stacked to the peak
    tops = [max(p.get_y() + p.get_height() for p in ax.patches[i::3]) for i in range(3)]
    for top, est in zip(tops, three.values()):
        assert top == pytest.approx(est.peak / 2**20)
    assert not list(tmp_path.iterdir())                             # nothing saved without a path
    with pytest.raises(ValueError, match="inside the repository"):     # the course saves nothing outside it
        bucket_bars(three, unit="GiB", path=str(tmp_path / "bars.png"))
    out = ROOT / "build" / "test-plot" / f"bars-{os.getpid()}.png"    # build/: ignored scratch output
    try:
        bucket_bars(three, unit="GiB", path=str(out))
        assert out.stat().st_size > 0
    finally:
        out.unlink(missing_ok=True)


def test_bucket_bars_accepts_plain_dicts_and_rejects_others():
    fig = bucket_bars({"a": {k: 2**20 for k in BUCKETS}})
    assert len(fig.axes[0].patches) == len(BUCKETS)
    with pytest.raises(TypeError):
        bucket_bars({"a": 3})


def test_peak_vs_points_and_line():
    xs = [64, 128, 256]
    fig = peak_vs(xs, measured=[1 * 2**30, 2 * 2**30, 4 * 2**30], predicted=[1.1 * 2**30, 2 * 2**30, 4 * 2**30],
                  xlabel="sequence length")
    ax = fig.axes[0]
    line, points = ax.lines
    assert list(line.get_xdata()) == xs and list(points.get_ydata()) == [1, 2, 4]
    assert points.get_linestyle() == "None" and points.get_marker() == "o"
    assert "GiB" in ax.get_ylabel() and ax.get_xlabel() == "sequence length"
    with pytest.raises(ValueError):
        peak_vs(xs, measured=[1, 2])


def test_sweep_estimates_and_measures_each_point():
    fig, predicted, measured = sweep("tiny", "seq", [16, 32, 64], method="lora", precision="fp32", batch=2,
                                     semantics="cpu")
    line, points = fig.axes[0].lines
    assert len(points.get_xdata()) == 3 and len(line.get_xdata()) == 3
    assert predicted == sorted(predicted) and measured == sorted(measured)
    for p, m in zip(predicted, measured):
        assert abs(p - m) / m < 0.02
