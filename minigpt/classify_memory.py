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
    from .memory.estimate import Estimate, RunSpec

# The estimator's names for the methods: peft and bitsandbytes hold the same bytes as ours
_ESTIMATOR_METHOD = {"full": "full", "lora": "lora", "peft-lora": "lora", "qlora": "qlora", "qlora-bnb": "qlora"}


def step_memory(method: str, batch: dict, seed: int = 0) -> MemoryReport:
    """One AdamW step of ``build_classifier(method)`` on ``batch``, tracked bucket by bucket
    (``minigpt.memory.measure_step``, mode="cpu": a warm-up step, then the measured one)."""
    return measure_step(lambda: build_classifier(method, seed), dict(batch))


def estimated_memory(method: str, batch_size: int, seq: int, lora: LoRASettings = LORA,
                     precision: str = "fp32") -> "Estimate":
    """The estimator's prediction for the same step (CPU semantics, AdamW, the model's dropout, the
    adapters' ``lora.dropout``; ``precision`` "fp32" or "amp-bf16" as grid_memory runs it)."""
    from .memory.estimate import estimate
    return estimate(run_spec(method, batch_size, seq, lora, precision))


def run_spec(method: str, batch_size: int, seq: int, lora: LoRASettings = LORA, precision: str = "fp32") -> "RunSpec":
    """The RunSpec of grid_memory's step as the estimator sees it (CPU semantics, AdamW, the adapters of
    ``lora``; the model: the MiniLM encoder's config with 2 labels)."""
    from .encoder import load_encoder
    from .memory.estimate import RunSpec
    cfg = load_encoder().config
    cfg.num_labels = 2
    est_method = _ESTIMATOR_METHOD[method]
    return RunSpec(cfg, method=est_method, rank=lora.r, alpha=lora.alpha, targets=tuple(lora.targets), batch=batch_size,
                   seq=seq, semantics="cpu", precision=precision, lora_dropout=lora.dropout if est_method != "full" else 0.0)


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


__all__ = ["step_memory", "estimated_memory", "run_spec", "padding_memory", "bucket_row"]


# ------------------------------------------------------------------ the forum's grid, on MiniLM
# The learner's four settings (fp32 / mixed precision x short / 8x longer inputs) for full and LoRA.
# On a CPU, mixed precision is bf16 autocast (CPU autocast has no fp16 matmuls worth measuring);
# the buckets are tracked by the same tensor tracker as step_memory.
GRID_PRECISIONS = ("fp32", "amp-bf16")
GRID_METHODS = ("full", "lora")
GRID_SCALES = (1, 8)
MAX_POSITIONS = 512          # MiniLM's position embeddings: a longer row is cut here


def repeat_text(text: str, scale: int) -> str:
    """The learner's "8 x length" input: the review written ``scale`` times, joined by spaces
    (so that the last word of one copy and the first of the next stay two words)."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer (1 = the review as it is), got {scale!r}.")
    return " ".join([text] * scale)


def scaled_reviews(split: str, n: int, scale: int, tokenizer) -> tuple[object, dict]:
    """The first ``n`` reviews of ``split``, each repeated ``scale`` times, tokenized and cut at
    MiniLM's MAX_POSITIONS tokens. Returns (tokenized dataset, {"rows", "rows_cut", "max_tokens"}):
    ``rows_cut`` counts the rows the cap shortened (0 when the cap is never hit)."""
    from .hf_data import reviews_dataset, tokenize
    ds = reviews_dataset(split, n=n)
    texts = [repeat_text(t, scale) for t in ds["text"]]
    ds = ds.remove_columns("text").add_column("text", texts)
    full = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    tok = tokenize(ds, tokenizer, max_length=MAX_POSITIONS)
    return tok, {"rows": len(full), "rows_cut": sum(t > MAX_POSITIONS for t in full),
                 "max_tokens_uncut": max(full)}


def grid_memory(method: str, batch: dict, precision: str = "fp32", seed: int = 0) -> MemoryReport:
    """One tracked AdamW step of ``build_classifier(method)`` on ``batch`` at ``precision``
    ("fp32", or "amp-bf16": torch.autocast on the CPU, fp32 weights, bf16 matmuls)."""
    if precision not in GRID_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(GRID_PRECISIONS)}, got {precision!r}.")
    return measure_step(lambda: build_classifier(method, seed), dict(batch), precision=precision)


def grid_estimate(method: str, batch_size: int, seq: int, precision: str = "fp32",
                  lora: LoRASettings = LORA) -> "Estimate":
    """The estimator's prediction for grid_memory's step: estimated_memory at ``precision``."""
    return estimated_memory(method, batch_size, seq, lora, precision)


__all__ += ["GRID_PRECISIONS", "GRID_METHODS", "GRID_SCALES", "MAX_POSITIONS", "repeat_text",
            "scaled_reviews", "grid_memory", "grid_estimate"]
