"""The precisions the course names, in one table: which dtype the matmuls run in, which dtype the
trained weights are kept in, and whether torch.autocast does the casting.

Every module that accepts a ``precision=`` argument (training, the tracker, the estimator, the CLI,
the GPU table) reads its names and dtypes from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    compute: torch.dtype    # dtype of the matmuls (autocast's target, or the weights' own dtype)
    weights: torch.dtype    # dtype of the parameters the optimizer updates
    autocast: bool          # torch.autocast casts 16-bit copies of fp32 weights during the step
    master: bool = False    # an fp32 master copy in the optimizer (Megatron/ZeRO accounting)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", torch.float32, torch.float32, autocast=False),
    Precision("amp-fp16", torch.float16, torch.float32, autocast=True),
    Precision("amp-bf16", torch.bfloat16, torch.float32, autocast=True),
    Precision("bf16", torch.bfloat16, torch.bfloat16, autocast=False),
    Precision("fp16", torch.float16, torch.float16, autocast=False),
    Precision("fp16-master", torch.float16, torch.float16, autocast=False, master=True),
)}
# What a training step can run (tracker, CUDA): the master-copy accounting exists only in the estimator.
RUNNABLE = tuple(k for k, p in PRECISIONS.items() if not p.master)
# What minigpt.train's loop offers: fp32 or autocast (pure 16-bit training needs loss scaling it lacks).
TRAINABLE = tuple(k for k, p in PRECISIONS.items() if k == "fp32" or p.autocast)


def get_precision(name: str, allowed: tuple[str, ...] = tuple(PRECISIONS)) -> Precision:
    """The entry of ``name``; a one-sentence error naming the allowed ones otherwise."""
    if name not in allowed:
        raise ValueError(f"Unknown precision {name!r}; use one of {', '.join(allowed)}.")
    return PRECISIONS[name]


def compute_dtype(name: str) -> torch.dtype:
    """The dtype the matmuls of ``name`` run in (fp32 for fp32)."""
    return get_precision(name).compute
