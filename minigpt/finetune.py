"""The MiniLM classifier made ready to train, by method: full, LoRA (ours, peft), QLoRA (ours, bitsandbytes).

    model = build_classifier("lora", seed=0)        # MeanPoolClassifier with minigpt.lora adapters

Every method starts from the same pretrained encoder and the same head (seeded), so the runs of
``benchmarks/bench_minilm.py`` differ only in what is trained and how the base is stored:

    full       every parameter trained (22.6M + the head)
    lora       minigpt.lora on query and value (r=8, alpha=16, dropout 0.1); head trained in full
    peft-lora  the same adapters with peft (modules_to_save=["classifier"]): same trainable count
    qlora      every encoder Linear in NF4 (minigpt.nf4), frozen; minigpt.lora on query and value
    qlora-bnb  the same with bitsandbytes' Linear4bit (its CPU kernels) and peft's LoRA

The peft adapter is saved in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``)
by ``save_peft_adapter``, loads back with ``load_peft_adapter`` and merges with peft's
``merge_and_unload``; ``safetensors_sizes`` splits such a file into its header and its tensor data.
``committed_benchmark`` reads the committed results of ``benchmarks/bench_minilm.py``; ``time_step``
times training steps of a method on a device (and reads the CUDA peak there).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .classify import MeanPoolClassifier
from .encoder import load_encoder
from .lora import apply_lora
from .nf4 import quantize_model
from .paths import ROOT

METHODS = ("full", "lora", "peft-lora", "qlora", "qlora-bnb")
HEAD = "classifier"
BENCHMARK = ROOT / "benchmarks" / "results" / "minilm.json"     # written by benchmarks/bench_minilm.py


@dataclass(frozen=True)
class LoRASettings:
    """One set of LoRA hyper-parameters, given to minigpt.lora and to peft alike."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")


LORA = LoRASettings()
# Learning rates, one per kind of run: a full fine-tune moves pretrained weights and wants a small
# step; adapters start at B = 0 and the head from random, and want a larger one.
LEARNING_RATES = {"full": 1e-4, "lora": 2e-3, "peft-lora": 2e-3, "qlora": 2e-3, "qlora-bnb": 2e-3}


def base_classifier(seed: int = 0) -> MeanPoolClassifier:
    """Pretrained MiniLM plus a fresh head, initialised from ``seed`` (the same for every method)."""
    encoder = load_encoder()
    torch.manual_seed(seed)
    return MeanPoolClassifier(encoder)


def _quiet_libraries() -> None:
    """peft imports bitsandbytes, whose CPU backend logs a warning that an optional kernel package
    (which would be downloaded from the Hub) is missing: expected offline, and not the learner's concern."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def peft_config(lora: LoRASettings = LORA):
    """peft's LoraConfig for the same adapters as ``apply_lora(..., trainable=("classifier",))``."""
    _quiet_libraries()
    from peft import LoraConfig
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.targets), modules_to_save=[HEAD])


def _bnb_4bit(model: nn.Module, skip: Sequence[str] = (HEAD,)) -> nn.Module:
    """Every nn.Linear outside ``skip`` replaced by bitsandbytes' Linear4bit (NF4, fp32 compute).

    ``compress_statistics=False`` on both: bitsandbytes' default is True (double quantisation of the
    scales), which would not be the same base as ``quantize_model``'s (float32 absmax per block of 64).
    """
    _quiet_libraries()
    import bitsandbytes as bnb
    linears = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not set(n.split(".")) & set(skip)]
    for name, lin in linears:
        q4 = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                               compute_dtype=torch.float32, quant_type="nf4", compress_statistics=False)
        q4.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                      compress_statistics=False)
        if lin.bias is not None:
            q4.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q4.to("cpu"))    # .to() is where bnb quantises
    model.is_loaded_in_4bit = True        # as transformers marks it: peft then uses its bnb LoRA layer
    return model


def build_classifier(method: str, seed: int = 0, lora: LoRASettings = LORA) -> nn.Module:
    """The classifier ready to train by ``method`` (one of METHODS), in train mode."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    model = base_classifier(seed)
    if method == "qlora":
        quantize_model(model, skip=(HEAD,))
    if method in ("lora", "qlora"):
        apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets,
                   trainable=(HEAD,))
    elif method in ("peft-lora", "qlora-bnb"):
        _quiet_libraries()
        from peft import get_peft_model
        if method == "qlora-bnb":
            _bnb_4bit(model)
        model = get_peft_model(model, peft_config(lora))
    return model.train()


@torch.no_grad()
def copy_adapters(ours: nn.Module, theirs: nn.Module) -> int:
    """Give peft's adapters the A and B of minigpt.lora's (same layer names), so that two runs start
    from identical weights; returns the number of layers copied. Each library draws its own A."""
    from .lora import lora_layers
    inner = theirs.base_model.model
    layers = lora_layers(ours)
    for name, layer in layers.items():
        twin = inner.get_submodule(name)
        twin.lora_A["default"].weight.copy_(layer.A)
        twin.lora_B["default"].weight.copy_(layer.B)
    return len(layers)


def save_peft_adapter(peft_model: nn.Module, folder: str | Path) -> list[str]:
    """Save a peft model's adapter (and its trained head) in peft's format; the names of the files."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    return sorted(p.name for p in folder.iterdir())


def load_peft_adapter(folder: str | Path, seed: int = 0) -> nn.Module:
    """A fresh base classifier with the adapter (and head) of ``folder`` loaded by peft, eval mode."""
    _quiet_libraries()
    from peft import PeftModel
    return PeftModel.from_pretrained(base_classifier(seed), str(folder)).eval()


def safetensors_sizes(path: str | Path) -> tuple[int, int]:
    """(header, data) bytes of a .safetensors file: it is an 8-byte little-endian header length, that
    many bytes of JSON (names, dtypes, shapes, offsets), then the tensors' bytes back to back."""
    path = Path(path)
    with path.open("rb") as f:
        header = int.from_bytes(f.read(8), "little")
    size = path.stat().st_size
    if not 0 <= header <= size - 8:
        raise ValueError(f"{path} is not a safetensors file (its first 8 bytes give a header of {header} bytes).")
    return 8 + header, size - 8 - header


def committed_benchmark(path: str | Path = BENCHMARK) -> dict:
    """The committed results of ``benchmarks/bench_minilm.py`` (command, machine, date, versions,
    and per method: accuracy, trainable parameters, losses, tracked memory); ``make benchmark-minilm``
    writes them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No benchmark results at {path}; run `make benchmark-minilm` to write them.")
    return json.loads(path.read_text(encoding="utf-8"))


def time_step(method: str, batch: dict, device: str = "cuda", steps: int = 3, seed: int = 0,
              lr: Optional[float] = None) -> tuple[float, Optional[int]]:
    """``steps`` AdamW steps of ``build_classifier(method)`` on ``batch`` on ``device``: (seconds of the
    last step, CUDA max_memory_allocated of that step in bytes, None off CUDA). The first step
    allocates AdamW's state, so the last one is the steady state."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    cuda = torch.device(device).type == "cuda"
    model = build_classifier(method, seed).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or LEARNING_RATES[method])
    batch = {k: v.to(device) for k, v in batch.items()}
    seconds, peak = 0.0, None
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        seconds = time.perf_counter() - start
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return seconds, peak


__all__ = ["METHODS", "LORA", "LEARNING_RATES", "BENCHMARK", "LoRASettings", "base_classifier", "peft_config",
           "build_classifier", "copy_adapters", "save_peft_adapter", "load_peft_adapter", "safetensors_sizes",
           "committed_benchmark", "time_step"]
