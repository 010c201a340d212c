"""Memory of one training step of the MiniLM classifier: tracked by bucket, estimated, and by padding.

    step_memory("lora", batch)            # MemoryReport: the course's tensor tracker on the CPU
    estimated_memory("lora", 16, 64)      # Estimate: minigpt.memory.estimate, from shapes alone
    padding_memory(tokenizer, ds)         # activations when padding to the longest row vs a fixed length

The estimator knows transformers' ``BertForSequenceClassification``, which pools the [CLS] token
through BERT's pooler (one more 384 x 384 Linear) and has no attention mask unless one is given;
our classifier has no pooler and averages over the mask. ``estimated_memory`` therefore describes a
close relative of the measured model, and the difference is part of its error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .finetune import LORA, LoRASettings, build_classifier
from .hf_data import MAX_LENGTH, review_loader
from .memory import MemoryReport, measure_step

if TYPE_CHECKING:
    from .memory.estimate import Estimate

# The estimator's names for the methods: peft and bitsandbytes hold the same bytes as ours
_ESTIMATOR_METHOD = {"full": "full", "lora": "lora", "peft-lora": "lora", "qlora": "qlora", "qlora-bnb": "qlora"}


def step_memory(method: str, batch: dict, seed: int = 0) -> MemoryReport:
    """One AdamW step of ``build_classifier(method)`` on ``batch``, tracked bucket by bucket
    (``minigpt.memory.measure_step``, mode="cpu": a warm-up step, then the measured one)."""
    return measure_step(lambda: build_classifier(method, seed), dict(batch))


def estimated_memory(method: str, batch_size: int, seq: int, lora: LoRASettings = LORA) -> "Estimate":
    """The estimator's prediction for the same step (CPU semantics, fp32, AdamW, the model's dropout,
    the adapters' ``lora.dropout``)."""
    from .encoder import load_encoder
    from .memory.estimate import estimate
    cfg = load_encoder().config
    cfg.num_labels = 2
    est_method = _ESTIMATOR_METHOD[method]
    return estimate(cfg, method=est_method, rank=lora.r, alpha=lora.alpha, targets=list(lora.targets),
                    batch=batch_size, seq=seq, semantics="cpu",
                    lora_dropout=lora.dropout if est_method != "full" else 0.0)


def padding_memory(tokenizer, ds, batch_size: int = 16, fixed: int = MAX_LENGTH, method: str = "lora",
                   seed: int = 0) -> dict[str, dict]:
    """The first ``batch_size`` reviews of a tokenized dataset, padded two ways, one tracked step each:

        {"longest": {"tokens": T, "activations": bytes, "peak": bytes},   # DataCollatorWithPadding default
         "fixed":   {"tokens": fixed, ...}}                                # padding="max_length"

    Every saved activation of a transformer grows with the padded length T (attention masks and
    scores with T^2), so the padding tokens cost memory although the mask makes them count for nothing.
    """
    out: dict[str, dict] = {}
    for name, pad_to in (("longest", None), ("fixed", fixed)):
        batch = next(iter(review_loader(ds, tokenizer, batch_size=batch_size, pad_to=pad_to)))
        report = step_memory(method, batch, seed)
        out[name] = {"tokens": int(batch["input_ids"].shape[1]), "activations": report.buckets["activations"],
                     "peak": report.peak}
    return out


def bucket_row(report: MemoryReport, estimate: Optional["Estimate"] = None) -> dict:
    """The buckets at the peak (integer bytes) and the peak; with an estimate, its peak and error."""
    row = dict(report.buckets)
    row["peak"] = report.peak
    if estimate is not None:
        row["estimated_peak"] = int(estimate.to_dict()["peak"])
        row["estimate_error"] = (row["estimated_peak"] - report.peak) / report.peak
    return row


__all__ = ["step_memory", "estimated_memory", "padding_memory", "bucket_row"]
