"""The buckets of training memory: one definition used by every tool in minigpt.memory.

Every byte a training step holds belongs to exactly one bucket:

    weights_trainable  parameters the optimizer updates
    weights_frozen     parameters that stay fixed (a LoRA/QLoRA base; NF4-packed bytes and scales)
    weight_copies      casts of weights made during the step: autocast fp16/bf16 copies,
                       dequantised NF4 weights
    gradients          .grad of the trainable parameters
    optimizer          optimizer state: moments and step counters
    activations        tensors autograd saved in forward for use in backward
    temporaries        everything else alive at that moment (inputs, workspaces, outputs)

``peak`` is the largest total over the step. All values are integer bytes.
Display helpers use binary units and say so: 1 MiB = 2**20 bytes, 1 GiB = 2**30 bytes.
"""
from __future__ import annotations

BUCKETS: tuple[str, ...] = ("weights_trainable", "weights_frozen", "weight_copies", "gradients",
                            "optimizer", "activations", "temporaries")
MODEL_STATE_BUCKETS: tuple[str, ...] = ("weights_trainable", "weights_frozen", "gradients", "optimizer")

MiB = 2 ** 20
GiB = 2 ** 30
GB = 10 ** 9


def empty_buckets() -> dict[str, int]:
    return {k: 0 for k in BUCKETS}


def fmt_bytes(n: int | float, unit: str = "auto") -> str:
    """Bytes in binary units, e.g. '1.50 GiB' (GiB = 2**30 bytes) or '12.0 MiB' (MiB = 2**20)."""
    if unit == "auto":
        unit = "GiB" if abs(n) >= GiB else "MiB" if abs(n) >= MiB else "KiB" if abs(n) >= 1024 else "B"
    div = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": GiB, "GB": GB}
    if unit not in div:
        raise ValueError(f"unit must be one of {', '.join(div)} or 'auto', got {unit!r}.")
    if unit == "B":
        return f"{int(n)} B"
    return f"{n / div[unit]:.2f} {unit}"


def fmt_error(predicted: float, measured: float) -> str:
    """A prediction's error relative to the measurement, in percent: '+1.3%' ('n/a' when the
    measurement is 0 and the prediction is not)."""
    if measured:
        return f"{100 * (predicted - measured) / measured:+.1f}%"
    return "0" if predicted == 0 else "n/a"


# one colour per bucket, the same in every figure, bar charts and timelines alike
# (matplotlib's tab10, in a colour-blind friendly order)
BUCKET_COLORS: dict[str, str] = {
    "weights_trainable": "#1f77b4",
    "weights_frozen": "#aec7e8",
    "weight_copies": "#9467bd",
    "gradients": "#ff7f0e",
    "optimizer": "#d62728",
    "activations": "#2ca02c",
    "temporaries": "#7f7f7f",
    "communication": "#17becf",   # collective buffers of a sharded run (minigpt.memory.distributed)
}
