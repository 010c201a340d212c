"""One helper that makes runs repeatable: seeds and a fixed thread count.

Tests and notebooks call ``set_seed()`` first. A fixed number of threads matters as much as
the seed: float sums reduce in a different order with a different number of threads.

``MINIGPT_THREADS`` (an integer), when set, overrides every ``threads`` argument. ``make test``
sets it to a count other than the one the notebooks' outputs were stored with, so that a
checked output which depends on the reduction order fails on the author's own machine
(docs/AUTHORING.md, "Checked outputs hold on every CPU").
"""
from __future__ import annotations

import os
import random

import torch

DEFAULT_THREADS = 2
THREADS_ENV = "MINIGPT_THREADS"


def thread_count(threads: int | None = DEFAULT_THREADS) -> int | None:
    """The thread count to use: ``$MINIGPT_THREADS`` if set, else ``threads``."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if not env:
        return threads
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"{THREADS_ENV}={env!r}: set it to a whole number of threads >= 1, or unset it.")
    return int(env)


def set_seed(seed: int = 0, threads: int | None = DEFAULT_THREADS) -> torch.Generator:
    """Seed Python, NumPy (if installed) and PyTorch, fix the CPU thread count, and return a
    torch.Generator seeded with ``seed`` for code that wants its own stream."""
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    threads = thread_count(threads)
    if threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
