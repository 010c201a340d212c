"""One helper that makes runs repeatable: seeds and a fixed thread count.

Tests and notebooks call ``set_seed()`` first. A fixed number of threads matters as much as
the seed: float sums reduce in a different order with a different number of threads.
"""
from __future__ import annotations

import os
import random

import torch

DEFAULT_THREADS = 2


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
    if threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
