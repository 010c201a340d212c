"""``PYTORCH_CUDA_ALLOC_CONF`` for the caching-allocator model (allocator.py): the settings that
change where blocks go, parsed with the ranges torch checks, and the allocator's size constants.

Read from pytorch/pytorch ``c10/core/AllocatorConfig.cpp`` (``AllocatorConfig::parseArgs`` and its
``parse*`` helpers, commit 065861fb) and ``c10/cuda/CUDACachingAllocator.cpp`` (``round_size``,
``roundup_power2_next_division``, the ``k*`` constants; commit 001074d2); the bounds of
``large_segment_size_mb`` are torch 2.13.0's own error sentence (``torch._C._accelerator_setAllocatorSettings``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .buckets import MiB

MIN_BLOCK = 512              # kMinBlockSize
SMALL_SIZE = MiB             # kSmallSize: largest small-pool request
SMALL_BUFFER = 2 * MiB       # kSmallBuffer: small-pool segment (and expandable page)
MIN_LARGE_ALLOC = 10 * MiB   # kMinLargeAlloc: below it a large request gets a whole large segment
ROUND_LARGE = 2 * MiB        # kRoundLarge
LARGE_BUFFER = 20 * MiB      # kLargeBuffer: large segment (and expandable page)
_BOOLS = {"True": True, "False": False}


# ---------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class AllocatorConfig:
    """The ``PYTORCH_CUDA_ALLOC_CONF`` settings that change block placement. Sizes in bytes."""
    max_split_size: Optional[int] = None         # None: unlimited (torch's default)
    max_non_split_rounding: int = LARGE_BUFFER
    expandable_segments: bool = False
    large_segment_size: int = LARGE_BUFFER
    roundup_power2_divisions: int = 0            # 0: plain 512-byte rounding
    garbage_collection_threshold: float = 0.0    # parsed, not modelled (needs a memory fraction)
    text: str = ""

    @classmethod
    def parse(cls, conf: str) -> "AllocatorConfig":
        """Parse ``"expandable_segments:True,max_split_size_mb:128"``; ranges as torch checks them."""
        kw: dict = {"text": conf}
        for item in (s.strip() for s in conf.split(",")):
            if not item:
                continue
            key, sep, value = (s.strip() for s in item.partition(":"))
            if not sep or not value:
                raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF item {item!r} needs the form key:value, "
                                 f"e.g. max_split_size_mb:128.")
            kw.update(_parse_item(key, value))
        return cls(**kw)


def _int(key: str, value: str, low: int, what: str) -> int:
    if not value.isdigit() or int(value) < low:
        raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF {key} must be an integer {what}, got {value!r}.")
    return int(value)


def _parse_item(key: str, value: str) -> dict:
    if key == "max_split_size_mb":            # AllocatorConfig::parseMaxSplitSize: >= 20
        return {"max_split_size": _int(key, value, LARGE_BUFFER // MiB, ">= 20") * MiB}
    if key == "max_non_split_rounding_mb":    # parseMaxNonSplitRoundingSize: >= 20
        return {"max_non_split_rounding": _int(key, value, LARGE_BUFFER // MiB, ">= 20") * MiB}
    if key == "large_segment_size_mb":        # torch 2.13: "must be > 10 MB"
        return {"large_segment_size": _int(key, value, 11, "> 10") * MiB}
    if key == "roundup_power2_divisions":
        n = _int(key, value, 0, "that is 0 or a power of 2 (the [interval:divisions] list form is "
                 "not modelled)")
        if n & (n - 1):
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF roundup_power2_divisions must be 0 or a power "
                             f"of 2, got {value!r}.")
        return {"roundup_power2_divisions": n}
    if key in ("expandable_segments", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
               "pinned_use_background_threads"):
        if value not in _BOOLS:
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF {key} must be True or False, got {value!r}.")
        return {"expandable_segments": _BOOLS[value]} if key == "expandable_segments" else {}
    if key == "garbage_collection_threshold":
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if not 0.0 < t < 1.0:
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF garbage_collection_threshold must be a number "
                             f"in (0, 1), got {value!r}.")
        return {"garbage_collection_threshold": t}
    if key == "pinned_num_register_threads":  # host (pinned) memory only
        _int(key, value, 1, ">= 1")
        return {}
    if key == "backend":
        if value != "native":
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF backend:{value} is not modelled; only "
                             f"backend:native (the caching allocator) is.")
        return {}
    known = ("max_split_size_mb", "max_non_split_rounding_mb", "large_segment_size_mb",
             "roundup_power2_divisions", "expandable_segments", "garbage_collection_threshold",
             "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
             "pinned_use_background_threads", "pinned_num_register_threads", "backend")
    raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF key {key!r} is not known; use one of {', '.join(known)}.")


ConfigLike = Union[AllocatorConfig, str, None]


def as_config(config: ConfigLike) -> AllocatorConfig:
    if config is None:
        return AllocatorConfig()
    return AllocatorConfig.parse(config) if isinstance(config, str) else config


def round_size(size: int, config: AllocatorConfig = AllocatorConfig()) -> int:
    """``round_size``: the block size a request of ``size`` bytes gets."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    div = config.roundup_power2_divisions
    if div > 1 and size > MIN_BLOCK * div:
        if size & (size - 1) == 0:             # roundup_power2_next_division
            return size
        floor = 1 << (size.bit_length() - 1)
        step = floor >> (div.bit_length() - 1)
        if step == 0:
            return floor << 1
        low = size & ~(step - 1)
        return size if low == size else low + step
    return -(-size // MIN_BLOCK) * MIN_BLOCK


