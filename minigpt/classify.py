"""A sentiment classifier on a pretrained encoder: mean-pooled MiniLM, a training loop, accuracy.

    model = MeanPoolClassifier(load_encoder())          # encoder + dropout + Linear(384, 2)
    history = train_classifier(model, train_loader, lr=1e-4)
    accuracy(model, test_loader)

The head reads the mean of the encoder's last hidden states over the real tokens (the padding is
masked out), which is how all-MiniLM-L6-v2 was trained to summarise a sentence. ``forward`` takes
the batches of ``minigpt.hf_data.review_loader`` as keyword arguments and returns a transformers
``SequenceClassifierOutput`` (``.logits`` (B, 2), ``.loss`` when labels are given), so the same
model trains here, under ``minigpt.memory.measure_step`` and wrapped by ``peft``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .train import autocast_context


class MeanPoolClassifier(nn.Module):
    """``classifier(dropout(mean of encoder(input_ids) over the attention mask))``."""

    def __init__(self, encoder: nn.Module, n_labels: int = 2, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config          # peft and transformers utilities read model.config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                **_ignored):
        from transformers.modeling_outputs import SequenceClassifierOutput
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state       # (B, T, d)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                         # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)                 # (B, d)
        logits = self.classifier(self.dropout(pooled))                               # (B, n_labels)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@dataclass
class TrainResult:
    """What one training run gives back: the loss of every step and the wall time."""
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (requires_grad=True)."""
    return [p for p in model.parameters() if p.requires_grad]


def train_classifier(model: nn.Module, batches: Iterable[dict], lr: float, epochs: int = 1,
                     weight_decay: float = 0.01, warmup: float = 0.1, progress: bool = True,
                     desc: str = "train", max_steps: Optional[int] = None,
                     precision: str = "fp32") -> TrainResult:
    """AdamW over the trainable parameters, a linear warm-up over the first ``warmup`` fraction of
    the steps then a linear decay to 0 (the schedule of transformers' Trainer), one tqdm bar.

    ``batches`` is re-iterated every epoch (a DataLoader reshuffles each time); ``max_steps`` stops
    early (tests). ``precision`` "amp-bf16" runs each forward under torch.autocast (CPU or CUDA,
    the model's device). Returns the loss of every step (floats) and the wall time of the loop.
    """
    from tqdm.auto import tqdm
    params = trainable(model)
    if not params:
        raise ValueError("The model has no trainable parameters; unfreeze some (or apply LoRA) first.")
    per_epoch = len(batches) if hasattr(batches, "__len__") else None
    total = max_steps or (per_epoch * epochs if per_epoch else None)
    if total is None:
        raise ValueError("Pass max_steps when the batches have no len().")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / n_warm if s < n_warm else max(0.0, (total - s) / max(1, total - n_warm)))
    result = TrainResult()
    model.train()
    # redraw at most every 2 s: a notebook stores every redraw of a text bar in its outputs
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=2.0)
    start = time.perf_counter()
    device = params[0].device
    while result.steps < total:
        for batch in batches:
            # autocast around the forward of one step only: inside one autocast context, the
            # 16-bit copy of each weight is cast once and cached until the context exits, so a
            # context around the whole loop would run every forward on the first step's weights
            # (the optimizer updates the fp32 weights, not the cached copies)
            with autocast_context(precision, device):
                loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            result.losses.append(loss.item())
            result.steps += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)   # drawn by the next update
            bar.update(1)
            if result.steps >= total:
                break
    result.seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return result


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict],
            precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over all batches, in eval mode (no dropout), each forward
    under the autocast of ``precision``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in batches:
        batch = dict(batch)
        labels.append(batch.pop("labels"))
        with autocast_context(precision, device):
            preds.append(model(**batch).logits.argmax(-1))
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def accuracy(model: nn.Module, batches: Iterable[dict], precision: str = "fp32") -> float:
    """Fraction of reviews whose predicted label is the true one."""
    preds, labels = predict(model, batches, precision)
    return (preds == labels).float().mean().item()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer holds in its state (AdamW: exp_avg, exp_avg_sq and the
    step counter of every parameter it has stepped); 0 before its first step."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


__all__ = ["MeanPoolClassifier", "TrainResult", "train_classifier", "predict", "accuracy", "trainable",
           "optimizer_state_bytes"]
