"""A small training loop, and checkpoints that load with ``torch.load(weights_only=True)``.

``train`` works for any model whose ``forward(*batch)`` returns ``(logits, loss)``, where
``batch = get_batch()`` is a tuple of positional arguments: ``(x, y)`` for the GPT,
``(idx, labels, lengths)`` for the GPTClassifier, or whatever a LoRA/QLoRA wrapper takes.
Only parameters with ``requires_grad=True`` reach the optimizer, so frozen and LoRA models
train (and spend optimizer memory on) just their trainable weights.

    model = from_preset("tiny")
    data = encode_corpus(shakespeare_text("train"))
    g = torch.Generator().manual_seed(0)
    history = train(model, lambda: lm_batch(data, 16, 64, g), steps=100, lr=1e-3)

Precision (``precision=``):
    "fp32"      plain float32.
    "amp-bf16"  torch.autocast to bfloat16 on the model's device (CPU or CUDA); weights,
                gradients and optimizer state stay float32. bf16 has float32's exponent
                range, so no loss scaling is needed.
    "amp-fp16"  torch.autocast to float16 with a GradScaler, on CUDA only: fp16 gradients
                underflow without loss scaling, and the course runs loss scaling on CUDA
                only, so on the CPU this raises a one-sentence error (use "amp-bf16").
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .device import check_device
from .model import GPT, GPTClassifier, GPTConfig
from .paths import CHECKPOINTS
from .precision import TRAINABLE, compute_dtype

PRECISIONS = TRAINABLE
# The checkpoint shipped with the repo (made by `make pretrain`, see checkpoints/MODEL_CARD.md).
PRETRAINED_PATH = CHECKPOINTS / "minigpt-small-shakespeare.pt"
CHECKPOINT_FORMAT = "minigpt-checkpoint-v1"

Batch = tuple  # the positional arguments of model.forward, e.g. (x, y)


@dataclass
class History:
    """What happened during ``train``: one entry per step, and one per evaluation."""
    step: list[int] = field(default_factory=list)                # 1, 2, ..., steps
    train_loss: list[float] = field(default_factory=list)        # loss of that step's batch
    seconds_per_step: list[float] = field(default_factory=list)  # wall time of that step
    eval_step: list[int] = field(default_factory=list)           # steps at which we evaluated
    val_loss: list[float] = field(default_factory=list)          # mean loss at those steps

    def summary(self) -> str:
        """One line, e.g. 'steps 100, train loss 3.41 -> 2.52, val 2.55, 0.031 s/step'."""
        if not self.step:
            return "no steps run"
        k = min(10, len(self.train_loss))  # single-batch losses are noisy: average the last few
        last = sum(self.train_loss[-k:]) / k
        val = f", val {self.val_loss[-1]:.3f}" if self.val_loss else ""
        sps = sorted(self.seconds_per_step)[len(self.seconds_per_step) // 2]
        return (f"steps {self.step[-1]}, train loss {self.train_loss[0]:.3f} -> {last:.3f} "
                f"(mean of last {k}){val}, median {sps:.3f} s/step")


# ----------------------------------------------------------------------------- helpers
def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the whole model is assumed to live there)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("The model has no parameters to train.") from None


def _to_device(batch: Any, device: torch.device) -> tuple:
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"get_batch() must return a tuple of the model's positional arguments, "
                        f"e.g. (x, y); got {type(batch).__name__}.")
    return tuple(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)


def autocast_context(precision: str, device: torch.device):
    """torch.autocast for the chosen precision on ``device`` (a no-op context for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return nullcontext()
    if precision == "amp-fp16" and device.type != "cuda":
        raise ValueError("precision='amp-fp16' needs a CUDA GPU (fp16 training needs a GradScaler, "
                         "which the course runs on CUDA only); use 'amp-bf16' or 'fp32' on the CPU.")
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


def _loss_of(output: Any) -> torch.Tensor:
    """The loss from a model's output: our (logits, loss) tuple, or a transformers ModelOutput."""
    loss = output.loss if hasattr(output, "loss") else output[1]
    if loss is None:
        raise ValueError("The model returned loss=None: get_batch() must also return "
                         "the targets/labels, e.g. (x, y).")
    return loss


def _checkpointable(model: nn.Module) -> list[nn.Module]:
    """The modules that can switch gradient checkpointing on: our GPT (also inside a
    GPTClassifier or a LoRA wrapper), or a transformers model."""
    found = [m for m in model.modules() if hasattr(m, "set_gradient_checkpointing")]
    if not found and hasattr(model, "gradient_checkpointing_enable"):
        found = [model]
    return found


def _set_checkpointing(modules: list[nn.Module], enabled: bool) -> None:
    for m in modules:
        if hasattr(m, "set_gradient_checkpointing"):
            m.set_gradient_checkpointing(enabled)
        elif enabled:
            m.gradient_checkpointing_enable()
        else:
            m.gradient_checkpointing_disable()


def lr_at(step: int, steps: int, lr: float, warmup_steps: int, schedule: str, min_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then constant or cosine to min_lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.99)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only. Matrices (dim >= 2) get weight decay;
    biases and norm weights do not (as in nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters (every requires_grad is False); "
                         "unfreeze some weights or add LoRA adapters before training.")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


# ------------------------------------------------------------------------------- train
@torch.no_grad()
def evaluate(model: nn.Module, get_batch: Callable[[], Batch], iters: int,
             precision: str = "fp32") -> float:
    """Mean loss over ``iters`` batches, in eval mode (no dropout) and without gradients."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}.")
    device = model_device(model)
    was_training = model.training
    model.eval()
    total = 0.0
    for _ in range(iters):
        with autocast_context(precision, device):
            total += _loss_of(model(*_to_device(get_batch(), device))).item()
    model.train(was_training)
    return total / iters


def train(model: nn.Module, get_batch: Callable[[], Batch], steps: int, lr: float = 1e-3,
          weight_decay: float = 0.1, grad_clip: Optional[float] = 1.0,
          eval_every: Optional[int] = None, eval_fn: Optional[Callable[[], Batch]] = None,
          eval_iters: int = 10, precision: str = "fp32", checkpointing: bool = False,
          progress: bool = True, warmup_steps: int = 0, schedule: str = "constant",
          min_lr: Optional[float] = None, optimizer: Optional[torch.optim.Optimizer] = None
          ) -> History:
    """Train ``model`` for ``steps`` optimizer steps on batches from ``get_batch()``.

    eval_fn: a get_batch for validation data; every ``eval_every`` steps (and after the last
        step) the mean loss over ``eval_iters`` of its batches goes into ``History.val_loss``.
    grad_clip: clip the global gradient norm to this value (None: no clipping).
    checkpointing: recompute activations in backward (model.set_gradient_checkpointing);
        switched back off when training ends.
    schedule: "constant" or "cosine" (decays to min_lr, default lr / 10), after
        ``warmup_steps`` of linear warmup.
    optimizer: bring your own (e.g. 8-bit AdamW); by default AdamW over trainable params.
        The schedule then scales each of its param groups' own learning rate.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"Unknown schedule {schedule!r}; use 'constant' or 'cosine'.")
    if eval_every is not None and eval_fn is None:
        raise ValueError("eval_every is set but eval_fn is None; pass eval_fn=<a get_batch for validation data>.")
    device = model_device(model)
    autocast_context(precision, device)  # validates precision/device before any work is done
    min_lr = lr / 10 if min_lr is None else min_lr
    opt = optimizer or make_optimizer(model, lr, weight_decay)
    base_lrs = [group["lr"] for group in opt.param_groups]  # the schedule scales each group's own lr
    # fp16 gradients underflow: scale the loss up before backward, unscale before clipping
    scaler = torch.amp.GradScaler("cuda") if precision == "amp-fp16" else None

    ckpt_modules = _checkpointable(model) if checkpointing else []
    if checkpointing and not ckpt_modules:
        raise ValueError(f"checkpointing=True but {type(model).__name__} has no "
                         f"set_gradient_checkpointing(); train it with checkpointing=False.")
    _set_checkpointing(ckpt_modules, True)

    from tqdm import tqdm  # imported here so that importing minigpt stays light
    history = History()
    was_training = model.training
    model.train()
    bar = tqdm(range(steps), disable=not progress, desc="train", mininterval=1.0, leave=True)
    try:
        for step in bar:
            lr_now = lr_at(step, steps, lr, warmup_steps, schedule, min_lr)
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = lr_now * (base / lr)  # base / lr is exactly 1.0 for our own AdamW
            t0 = time.perf_counter()
            batch = _to_device(get_batch(), device)
            with autocast_context(precision, device):
                loss = _loss_of(model(*batch))
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)  # so that grad_clip sees the true gradient norm
            else:
                loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            loss_value = loss.item()  # .item() waits for the GPU, so the timing below is honest
            history.step.append(step + 1)
            history.train_loss.append(loss_value)
            history.seconds_per_step.append(time.perf_counter() - t0)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"The loss became {loss_value} at step {step + 1}; "
                                         f"lower the learning rate (lr={lr}) or use precision='fp32'.")
            if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
                history.eval_step.append(step + 1)
                history.val_loss.append(evaluate(model, eval_fn, eval_iters, precision))
                bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{history.val_loss[-1]:.3f}", refresh=False)
            else:
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    finally:
        bar.close()
        _set_checkpointing(ckpt_modules, False)
        model.train(was_training)
    return history


# -------------------------------------------------------------------------- checkpoints
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """weights_only=True loads tensors and plain Python containers only: refuse anything else now,
    rather than writing a checkpoint that cannot be loaded safely later."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; use str keys.")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where} is a {type(value).__name__}; checkpoints store only tensors, str, "
                        f"int, float, bool, None, lists and dicts, so convert it first.")


def save_checkpoint(path: str | Path, model: nn.Module, config: GPTConfig | dict,
                    extra: Optional[dict] = None) -> Path:
    """Write {format, arch, config (a dict), model (state_dict), extra} with torch.save.

    ``extra`` holds anything else worth keeping (steps, losses, the data used); it must be
    plain Python types and tensors so that ``torch.load(path, weights_only=True)`` reads it.
    """
    extra = dict(extra or {})
    if "config" in extra:
        raise ValueError("extra must not have a 'config' key: the config is saved from the config argument.")
    _check_plain(extra, "extra")
    if isinstance(model, GPTClassifier):
        arch, n_classes = "GPTClassifier", model.classifier.out_features
    elif isinstance(model, GPT):
        arch, n_classes = "GPT", None
    else:
        raise TypeError(f"save_checkpoint saves GPT and GPTClassifier models, not {type(model).__name__}; "
                        f"for other models use torch.save(model.state_dict(), path).")
    cfg = config.to_dict() if isinstance(config, GPTConfig) else dict(config)
    GPTConfig(**cfg)  # fail now, not at load time, if the config is not a valid GPTConfig
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # tied weights stay shared
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "n_classes": n_classes,
                "config": cfg, "model": state, "extra": extra, "digest": checkpoint_digest(state, cfg)}, path)
    return path


def checkpoint_digest(state: dict[str, torch.Tensor], config: dict) -> str:
    """sha256 over the config and every tensor's name, dtype, shape and bytes, in key order.

    torch.save's zip container has no checksum that torch.load checks, so a flipped bit in a
    weight would otherwise load silently as a slightly different model.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# what torch.load and the dict lookups raise on a cut-off or garbled file
_DAMAGED = (RuntimeError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError,
            pickle.UnpicklingError, zipfile.BadZipFile, OSError)


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's dict (tensors on the CPU, where the digest is computed), or one
    sentence if the file is truncated or garbled."""
    path.open("rb").close()      # a permission problem is raised as itself, not as "damaged"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except _DAMAGED as e:
        raise ValueError(f"{path} is truncated or damaged and cannot be read ({type(e).__name__}); "
                         f"copy it again or re-create it with save_checkpoint.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a minigpt checkpoint (written by minigpt.train.save_checkpoint).")
    missing = [k for k in ("arch", "config", "model", "extra") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}, so it is damaged; copy it again or re-create it "
                         f"with save_checkpoint.")
    # Checkpoints written before the digest existed (the shipped one) have none and still load.
    digest = ckpt.get("digest")
    if digest is not None and digest != checkpoint_digest(ckpt["model"], ckpt["config"]):
        raise ValueError(f"{path} does not match the digest stored when it was saved, so its bytes have "
                         f"changed since; copy it again or re-create it with save_checkpoint.")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved by ``save_checkpoint``; returns (model in eval mode, meta) where
    meta is the saved ``extra`` dict plus "config" (the GPTConfig)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    device = check_device(device)
    ckpt = _read_checkpoint(path)
    cfg = GPTConfig(**ckpt["config"])
    with torch.device(device):
        model: nn.Module = GPT(cfg)
        if ckpt["arch"] == "GPTClassifier":
            model = GPTClassifier(model, n_classes=ckpt["n_classes"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, {**ckpt["extra"], "config": cfg}


def load_pretrained(device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """The shipped MiniGPT ``small`` checkpoint pretrained on Shakespeare (checkpoints/MODEL_CARD.md)."""
    if not PRETRAINED_PATH.exists():
        raise FileNotFoundError(f"The pretrained checkpoint {PRETRAINED_PATH} is missing; "
                                f"re-create it with `make pretrain` (about 10 minutes on a CPU).")
    return load_checkpoint(PRETRAINED_PATH, device)
