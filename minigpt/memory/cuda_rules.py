"""What a CUDA run would hold where CPU kernels differ (first draft: optimizer rule only)."""
from __future__ import annotations

import contextlib
from typing import Optional


def optimizer_foreach(semantics: str) -> Optional[bool]:
    return True if semantics == "cuda" else None


def simulate(precision: str):
    return contextlib.nullcontext()


def rules_applied(precision: str) -> list[str]:
    return ["optimizer foreach=True (CUDA default)", "AdamW step counters kept on the host"]
