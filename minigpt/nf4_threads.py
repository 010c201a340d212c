"""Decoding a large NF4 weight on every core: minigpt.nf4's gather, one slice per thread.

ATen's ``index_select`` of a 1-D table is a single loop on one core, and the 64 MiB float32
output of a 4096 x 4096 weight is fresh memory, so that core also takes every page fault of it.
bitsandbytes' CPU kernel spreads both over its OpenMP threads. Here the output is cut into one
slice per torch thread and each slice is gathered and scaled by a Python thread: torch ops release
the GIL, so the slices run at the same time. Same tensors as the one-pass decode (the int32 index,
then the output), same bits (tests/core/test_nf4.py); ``make benchmark`` times both against
bitsandbytes.

Only for real tensors outside any dispatch mode: the memory tools' modes (the tracker, fake
tensors) are per thread and would not see work done on another one, so they trace the one-pass
decode, which allocates the same tensors.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

_POOL: Optional[ThreadPoolExecutor] = None
_POOL_KEY: tuple[int, int] = (0, 0)    # (pid, workers): a forked child or a new thread count gets a new pool


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)
    if _POOL is None or _POOL_KEY != key:
        _POOL, _POOL_KEY = ThreadPoolExecutor(workers, thread_name_prefix="nf4-decode"), key
    return _POOL


def decode_on_threads(table: torch.Tensor, index: torch.Tensor, scales: torch.Tensor, blocksize: int,
                      scale_blocks, threads: int) -> torch.Tensor:
    """``scale_blocks(table[index].view(float32))`` in ``threads`` slices of whole blocks.

    table (65536,) complex128 rows of 4 levels, index (m,) int32 -> (4 m,) float32, each block of
    ``blocksize`` levels multiplied by its scale (``scale_blocks``: minigpt.nf4._scale_blocks_).
    """
    out = torch.empty(4 * index.numel(), dtype=torch.float32, device=index.device)
    rows = out.view(torch.complex128)                                     # (m,) rows of 4 levels
    per_block = max(1, blocksize // 4)                                    # rows per block of scales
    cuts = [index.numel() * k // threads // per_block * per_block for k in range(threads)] + [index.numel()]

    def work(a: int, b: int) -> None:
        torch.index_select(table, 0, index[a:b], out=rows[a:b])
        scale_blocks(out[4 * a:4 * b], scales[4 * a // blocksize:], blocksize)

    for f in [_pool(threads).submit(work, a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]:
        f.result()                                                        # re-raises a worker's error
    return out
