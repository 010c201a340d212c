"""Plots of training memory: stacked bucket bars, and peak memory against a swept size.

Both functions return a matplotlib Figure and save nothing unless given ``path``. Axes are in
binary units and say so (MiB = 2**20 bytes, GiB = 2**30 bytes). Every bucket has one colour in
every plot of the course (``BUCKET_COLORS``).

    fig = bucket_bars({"full": est_full, "LoRA": est_lora, "QLoRA": est_qlora})
    fig = peak_vs([64, 128, 256], measured=[...], predicted=[...], xlabel="sequence length")
    fig = sweep("small", "seq", [64, 128, 256], method="lora", precision="amp-bf16")
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .buckets import BUCKET_COLORS, BUCKETS, GiB, MiB

__all__ = ["BUCKET_COLORS", "bucket_bars", "peak_vs", "sweep"]


def save_figure(fig, path) -> None:
    """Save ``fig`` at ``path``, which must lie inside the repository (the course writes nothing outside it)."""
    from pathlib import Path

    from ..paths import ROOT
    out = Path(path).resolve()
    if ROOT not in out.parents:
        raise ValueError(f"path must be inside the repository ({ROOT}), got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def _buckets_of(r: Any) -> dict[str, int]:
    """The bucket split of an Estimate, a MemoryReport, or a plain {bucket: bytes} dict."""
    b = r.get("buckets", r) if isinstance(r, Mapping) else getattr(r, "buckets", None)
    if not isinstance(b, Mapping) or not set(BUCKETS) <= set(b):
        raise TypeError(f"expected an Estimate, a MemoryReport or a dict with the keys "
                        f"{', '.join(BUCKETS)}; got {type(r).__name__}.")
    extra = {k: int(v) for k, v in b.items() if k in BUCKET_COLORS and k not in BUCKETS}  # communication
    return {**{k: int(b[k]) for k in BUCKETS}, **extra}


def _unit(max_bytes: float, unit: str) -> tuple[str, int]:
    if unit == "auto":
        unit = "GiB" if max_bytes >= GiB else "MiB"
    if unit not in ("MiB", "GiB"):
        raise ValueError(f"unit must be 'MiB', 'GiB' or 'auto', got {unit!r}.")
    return unit, (GiB if unit == "GiB" else MiB)


def _figure(ax=None):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.2), layout="constrained")   # no pyplot: nothing global, no display
    return fig, fig.add_subplot()


def bucket_bars(reports: Mapping[str, Any], unit: str = "auto", title: Optional[str] = None,
                ax=None, path: Optional[str] = None):
    """Stacked bars, one per setup, one segment per bucket (the split at each setup's peak).

    ``reports``: {label: Estimate | MemoryReport | {bucket: bytes}}, in display order.
    """
    if not reports:
        raise ValueError("bucket_bars needs at least one {label: report} entry.")
    splits = {label: _buckets_of(r) for label, r in reports.items()}
    unit, div = _unit(max(sum(b.values()) for b in splits.values()), unit)
    fig, ax = _figure(ax)
    labels = list(splits)
    bottoms = [0.0] * len(labels)
    keys = [*BUCKETS, *(k for k in BUCKET_COLORS if k not in BUCKETS and any(k in s for s in splits.values()))]
    for k in keys:
        heights = [splits[l].get(k, 0) / div for l in labels]
        ax.bar(labels, heights, bottom=bottoms, color=BUCKET_COLORS[k], label=k, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.annotate(f"{total:.2f}", (i, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"memory at the peak ({unit}, 1 {unit} = 2^{20 if unit == 'MiB' else 30} bytes)")
    ax.set_title(title or "Where the memory goes at the peak")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if path:
        save_figure(fig, path)
    return fig


def peak_vs(xs: Sequence[float], measured: Optional[Sequence[float]] = None,
            predicted: Optional[Sequence[float]] = None, xlabel: str = "sequence length",
            unit: str = "auto", title: Optional[str] = None, ax=None, path: Optional[str] = None,
            measured_label: str = "measured", predicted_label: str = "predicted (estimate)"):
    """Peak memory against a swept size: measured points, predicted line (bytes in, axis in MiB/GiB)."""
    if measured is None and predicted is None:
        raise ValueError("peak_vs needs measured or predicted values (or both).")
    for name, ys in (("measured", measured), ("predicted", predicted)):
        if ys is not None and len(ys) != len(xs):
            raise ValueError(f"{name} has {len(ys)} values for {len(xs)} x values; give one per x.")
    top = max(max(measured or [0]), max(predicted or [0]))
    unit, div = _unit(top, unit)
    fig, ax = _figure(ax)
    if predicted is not None:
        ax.plot(xs, [y / div for y in predicted], "-", color="#1f77b4", label=predicted_label)
    if measured is not None:
        ax.plot(xs, [y / div for y in measured], "o", color="#d62728", label=measured_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"peak memory ({unit}, 1 {unit} = 2^{20 if unit == 'MiB' else 30} bytes)")
    ax.set_title(title or f"Peak memory against {xlabel}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if path:
        save_figure(fig, path)
    return fig


def sweep(model: str, param: str, values: Sequence[int], measure: bool = True, mode: str = "fake",
          unit: str = "auto", path: Optional[str] = None, **kwargs):
    """Estimate (and, with ``measure=True``, measure with measure_step) the peak for each value of
    ``param`` ("seq" or "batch"), and plot them with peak_vs. Returns (figure, predicted, measured)."""
    if param not in ("seq", "batch"):
        raise ValueError(f"param must be 'seq' or 'batch', got {param!r}.")
    from .compare import measure as run_measure
    from .estimate import estimate
    predicted, measured = [], []
    for v in values:
        args = {**kwargs, "model": model, param: v}
        predicted.append(estimate(**args).peak)
        if measure:
            measured.append(run_measure(mode=mode, **args).peak)
    label = {"seq": "sequence length", "batch": "batch size"}[param]
    fig = peak_vs(list(values), measured if measure else None, predicted, xlabel=label, unit=unit,
                  title=f"{model}: peak memory against {label}", path=path)
    return fig, predicted, (measured if measure else None)
