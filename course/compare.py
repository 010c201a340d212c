"""How the checks compare a learner's value with the reference, and the one-line messages they print:
numbers, tensors and arrays, dicts and sequences, exceptions raised by the learner's code.
"""
from __future__ import annotations

import math
import traceback
from typing import Any


def explain_exception(exc: BaseException) -> str:
    """One sentence for a failed check block, naming where the learner should look."""
    where = _learner_frame(exc)
    if isinstance(exc, NameError):
        return (f"{_short(str(exc), 100)}; run the exercise cell above (after filling it in) "
                f"before this check")
    place = f" in `{where}`" if where and where != "<module>" else ""
    return f"your code raised {type(exc).__name__}{place}: {_short(str(exc), 160)}"


def _is_cell(filename: str) -> bool:
    # ipykernel compiles cells to files named /tmp/ipykernel_<pid>/<hash>.py (<ipython-input-...> before)
    return "ipykernel_" in filename or filename.startswith("<ipython-input")


def _learner_frame(exc: BaseException) -> str | None:
    """The innermost function defined in a notebook cell ("<module>" for a cell's top level)."""
    name = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if _is_cell(frame.filename):
            name = frame.name
    return name


def raised_in_cell(exc: BaseException) -> str | None:
    """The function (or "<module>") of a notebook cell that raised ``exc`` itself; None when the
    innermost frame is library code (torch's own NotImplementedError is not a stub)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return frames[-1].name if frames and _is_cell(frames[-1].filename) else None


def _compare(got: Any, expected: Any, what: str, close: bool, rtol: float = 1e-5,
             atol: float = 0.0) -> tuple[bool, str]:
    """(passed, message) — never raises."""
    try:
        got, expected = _scalar(got), _scalar(expected)
        if got is None and expected is not None:
            return False, f"{what} is None — did your code forget to `return` its result?"
        if _is_array(got) or _is_array(expected):
            return _compare_arrays(got, expected, what, close, rtol, atol)
        if isinstance(expected, dict):
            if not isinstance(got, dict) or set(got) != set(expected):
                return False, f"{what}: expected a dict with keys {sorted(expected)}, got {_fmt(got)}"
            for key in expected:
                ok, msg = _compare(got[key], expected[key], f"{what}[{key!r}]", close, rtol, atol)
                if not ok:
                    return False, msg
            return True, f"{what} matches ({len(expected)} entries)"
        if close and isinstance(expected, (list, tuple)):
            if not isinstance(got, (list, tuple)) or len(got) != len(expected):
                return False, f"{what}: expected {len(expected)} items, got {_fmt(got)}"
            for i, (g, e) in enumerate(zip(got, expected)):
                ok, msg = _compare(g, e, f"{what}[{i}]", close, rtol, atol)
                if not ok:
                    return False, msg
            return True, f"{what} matches ({len(expected)} items)"
        if close and _is_number(expected):
            if not _is_number(got):
                return False, f"{what} should be a number, got {_fmt(got)}"
            g, e = float(got), float(expected)
            if math.isnan(e) and math.isnan(g):
                return True, f"{what} = nan, as expected"
            ok = abs(g - e) <= atol + rtol * abs(e) or g == e
            if ok:
                return True, f"{what} = {_fmt(got)} (reference {_fmt(expected)})"
            return False, (f"{what} is {_fmt(got)}, expected {_fmt(expected)}{_off_by(got, expected)} "
                           f"(rtol={rtol:g}, atol={atol:g})")
        ok = bool(got == expected)
        if ok:
            return True, f"{what} = {_fmt(got)}, as expected"
        return False, f"{what} is {_fmt(got)}, expected {_fmt(expected)}{_off_by(got, expected)}"
    except Exception as exc:
        return False, f"{what} could not be compared with the reference ({type(exc).__name__}: {_short(str(exc), 100)})"


def _off_by(got: Any, expected: Any) -> str:
    """How far a wrong number is from the expected one: the difference and the factor, which
    often says what was missed (2x: a bucket counted twice; 0.5x: one of two moments)."""
    if not (_is_number(got) and _is_number(expected)):
        return ""
    g, e = float(got), float(expected)
    if not (math.isfinite(g) and math.isfinite(e)) or e == 0 or g == e:
        return ""
    diff = f"{int(got) - int(expected):+,}" if isinstance(got, int) and isinstance(expected, int) else f"{g - e:+.3g}"
    ratio = g / e
    if ratio <= 0:
        return f" (off by {diff}; the sign differs)"
    big = max(ratio, 1 / ratio)
    factor = (f"{round(big)}x too {'large' if ratio > 1 else 'small'}" if abs(big - round(big)) < 1e-3 * big
              else f"{ratio:.3g}x the expected")
    return f" (off by {diff}; {factor})"


def _compare_arrays(got: Any, expected: Any, what: str, close: bool, rtol: float,
                    atol: float) -> tuple[bool, str]:
    import numpy as np

    def as_np(x: Any) -> Any:
        if hasattr(x, "detach"):  # torch.Tensor: bf16/fp16 have no NumPy twin, compare in fp64
            x = x.detach().cpu()
            return x.double().numpy() if x.is_floating_point() else x.numpy()
        return np.asarray(x)

    if got is None:
        return False, f"{what} is None — did your code forget to `return` its result?"
    g, e = as_np(got), as_np(expected)
    if g.shape != e.shape:
        return False, f"{what} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    if g.size == 0:
        return True, f"{what} matches (empty, shape {tuple(g.shape)})"
    if close:
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        diff = np.abs(g64 - e64)
        bad = ~((diff <= atol + rtol * np.abs(e64)) | (np.isnan(g64) & np.isnan(e64)) | (g64 == e64))
    else:
        bad = ~((g == e) | (_isnan(g) & _isnan(e)))
    n_bad = int(bad.sum())
    if n_bad == 0:
        return True, f"{what} matches the reference (shape {tuple(g.shape)})"
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    first = f"first at index {idx}: {_fmt(g[idx].item())} vs {_fmt(e[idx].item())}"
    if close:
        worst = float(np.nanmax(np.where(bad, np.abs(g.astype(np.float64) - e.astype(np.float64)), 0)))
        return False, (f"{what}: {n_bad} of {g.size} elements differ from the reference "
                       f"(max |difference| {worst:.3g}; {first})")
    return False, f"{what}: {n_bad} of {g.size} elements differ from the reference ({first})"


def _isnan(a: Any) -> Any:
    import numpy as np
    return np.isnan(a) if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, dtype=bool)


def _is_array(x: Any) -> bool:
    """A tensor or NumPy array with at least one dimension (0-d ones are compared as numbers)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and len(tuple(x.shape)) > 0


def _scalar(x: Any) -> Any:
    """0-d tensors/arrays and NumPy scalars as plain Python numbers; anything else unchanged."""
    if hasattr(x, "shape") and hasattr(x, "item") and tuple(getattr(x, "shape", (1,))) == ():
        try:
            return x.item()
        except Exception:
            return x
    return x


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    try:  # NumPy scalars, 0-d arrays
        import numbers
        return isinstance(x, numbers.Number)
    except Exception:
        return False


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.6g}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        try:
            if getattr(x, "ndim", None) == 0 or tuple(x.shape) == ():
                return _fmt(x.item())
            return f"an array of shape {tuple(x.shape)} ({x.dtype})"
        except Exception:
            pass
    return _short(repr(x), 80)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
