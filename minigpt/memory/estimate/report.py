"""The Estimate report: the predicted buckets at the peak, the model states, and their table."""
from __future__ import annotations
from dataclasses import dataclass, field
from ..buckets import BUCKETS, GiB, MiB, MODEL_STATE_BUCKETS, fmt_bytes
from .spec import ADAPTER_METHODS, EstimateError


LABEL = "estimated (closed form from the shapes; nothing was run or measured)"


@dataclass
class Estimate:
    """A predicted training step. Sizes are integer bytes.

    ``buckets`` is the split at the predicted peak (same keys and meaning as MemoryReport.buckets);
    ``model_state`` the full persistent amounts per GPU (weights, all gradients, optimizer state);
    ``phases`` the largest total of each phase with its split.
    """
    peak: int
    buckets: dict
    peak_phase: str
    phases: dict
    model_state: dict
    activations: int                 # saved for backward at the end of the forward pass
    config: dict
    n_params: int
    n_trainable: int
    paged_bytes: int = 0             # optimizer state in unified memory (paged optimizers)
    host_bytes: int = 0              # optimizer step counters kept on the host
    activation_terms: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    label: str = LABEL
    communication: int = 0    # collective buffers alive at the peak (FSDP2; inside temporaries)

    def to_dict(self) -> dict:
        """The bucket keys as integer bytes, ``peak``, and the echoed configuration."""
        out = {k: int(self.buckets[k]) for k in BUCKETS}
        out.update({
            "peak": int(self.peak), "peak_phase": self.peak_phase,
            "phases": {p: {"peak": int(v["peak"]), "buckets": {k: int(b) for k, b in v["buckets"].items()}}
                       for p, v in self.phases.items()},
            "model_state": {k: int(v) for k, v in self.model_state.items()},
            "activations_end_of_forward": int(self.activations),
            "activation_terms": {k: int(v) for k, v in self.activation_terms.items()},
            "n_params": self.n_params, "n_trainable": self.n_trainable,
            "paged_bytes": int(self.paged_bytes), "host_bytes": int(self.host_bytes),
            "config": dict(self.config), "label": self.label, "notes": list(self.notes),
        })
        return out

    def table(self, unit: str = "auto") -> str:
        """Bucket split at the peak and at each phase's own peak, in MiB or GiB (says which)."""
        if unit == "auto":
            unit = "GiB" if self.peak >= GiB else "MiB"
        div = {"MiB": MiB, "GiB": GiB}.get(unit)
        if div is None:
            raise EstimateError(f"unit must be 'MiB', 'GiB' or 'auto', got {unit!r}.")
        c = self.config
        cols = [p for p in ("forward", "backward", "optimizer") if p in self.phases]
        w = 18
        shard = f"  gpus={c['gpus']} zero={c['zero']}" if c["gpus"] > 1 or c["zero"] else ""
        lines = [self.label,
                 f"model={c['model']}  method={c['method']}" +
                 (f" (r={c['rank']}, targets={c['targets']}{', double-quant' if c['double_quant'] else ''})"
                  if c["method"] in ADAPTER_METHODS else "") +
                 f"  precision={c['precision']}  optimizer={c['optimizer']}",
                 f"batch={c['batch']}  seq={c['seq']}  attention={c['attention']}  dropout={c['dropout']}  "
                 f"checkpointing={c['checkpointing']}  semantics={c['semantics']}{shard}" +
                 (f"  loss={c['loss_dtype']}" if c.get("loss_dtype") else "") +
                 (f"  loss_chunk={c['loss_chunk']}" if c.get("loss_chunk") else "") +
                 ("  padding" if c.get("padding") else ""),
                 f"params={self.n_params:,} (trainable {self.n_trainable:,})",
                 f"units: {unit} (1 {unit} = 2**{20 if unit == 'MiB' else 30} bytes)",
                 f"{'bucket':<{w}}{'at peak':>12}" + "".join(f"{p + ' pk':>14}" for p in cols)]
        for k in BUCKETS:
            lines.append(f"{k:<{w}}{self.buckets[k] / div:>12.2f}" +
                         "".join(f"{self.phases[p]['buckets'][k] / div:>14.2f}" for p in cols))
        lines.append(f"{'total':<{w}}{self.peak / div:>12.2f}" +
                     "".join(f"{self.phases[p]['peak'] / div:>14.2f}" for p in cols))
        lines.append(f"peak {fmt_bytes(self.peak, unit)} = {self.peak:,} bytes, during {self.peak_phase}")
        ms = self.model_state
        lines.append("model state per GPU: " + ", ".join(f"{k} {fmt_bytes(ms[k], unit)}" for k in MODEL_STATE_BUCKETS))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
