"""The facts the figures are computed from: dtype sizes, precision regimes, parameter and LoRA counts,
NF4 bits, the GPUs the text quotes, and the client draft's figures (quoted, never computed from).

Every count comes from the package (``minigpt.model.parameter_count``, ``minigpt.lora``,
``minigpt.nf4``, ``minigpt.memory.zoo``); nothing here is typed in but hyper-parameters and
vendor specifications, each with its source.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from minigpt.memory.buckets import GiB
from minigpt.model import parameter_count, preset_config


# ----------------------------------------------------------------------------- dtype sizes
def nbytes_of(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype``, as torch reports it."""
    return torch.empty((), dtype=dtype).element_size()


FP32, FP16, BF16 = nbytes_of(torch.float32), nbytes_of(torch.float16), nbytes_of(torch.bfloat16)


# AdamW keeps two moments (exp_avg, exp_avg_sq) per parameter, in the parameter's dtype
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class Regime:
    """Bytes per trainable parameter in one precision regime (persistent state + step-time copies)."""
    key: str
    weights: int          # the parameter tensors the optimizer updates (fp32 master included)
    low_copy: int         # low-precision weight copies that live only during the step
    grads: int
    optimizer: int
    parts: tuple[tuple[str, int], ...] = ()   # the named terms of `weights` (for the formula)

    @property
    def persistent(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def peak(self) -> int:
        return self.persistent + self.low_copy


def regimes() -> dict[str, Regime]:
    """The four accountings of file 03, built from dtype sizes, never typed in."""
    return {
        # everything fp32
        "fp32": Regime("fp32", FP32, 0, FP32, ADAM_MOMENTS * FP32),
        # torch.autocast + GradScaler: fp32 parameters, fp32 .grad (autograd accumulates into the
        # parameter's dtype), fp32 moments; autocast makes fp16/bf16 copies of weights for the matmuls
        "amp": Regime("amp", FP32, FP16, FP32, ADAM_MOMENTS * FP32),
        # the accounting of Megatron/ZeRO (and the client's draft): fp16 model weights and
        # gradients, plus an fp32 master copy of the weights kept by the optimizer
        "fp16-master": Regime("fp16-master", FP16 + FP32, 0, FP16, ADAM_MOMENTS * FP32,
                              parts=(("fp16", FP16), ("fp32 master", FP32))),
        # pure bf16: weights, gradients and moments all bf16
        "bf16": Regime("bf16", BF16, 0, BF16, ADAM_MOMENTS * BF16),
    }


# -------------------------------------------------------------------------- parameter counts
MODELS = {"minigpt-85m": "MiniGPT-85M", "roberta-base": "RoBERTa-base", "llama-7b": "LLaMA-7B",
          "llama-13b": "LLaMA-13B", "llama-70b": "LLaMA-70B"}


@lru_cache(maxsize=None)
def n_params(model: str) -> int:
    """Parameters of a model of the zoo (closed form for minigpt shapes, meta build for RoBERTa)."""
    if model == "roberta-base":
        from minigpt.memory.zoo import build
        m = build("roberta-base", device="meta")
        return sum(p.numel() for p in m.parameters())
    return parameter_count(preset_config(model))


@lru_cache(maxsize=None)
def _lora_spec(model: str):
    if model == "roberta-base":
        from minigpt.memory.zoo import hf_config
        return hf_config("roberta-base")
    return preset_config(model)


TARGETS = {"qv": ("q_proj", "v_proj"), "all": "all-linear"}


@lru_cache(maxsize=None)
def n_lora(model: str, targets: str, r: int) -> int:
    """LoRA parameters (A and B) for ``targets`` "qv" (q and v projections) or "all" (all linear
    layers but the output head; RoBERTa's classifier head is trained in full, not adapted)."""
    from minigpt.lora import lora_parameter_count
    spec = _lora_spec(model)
    tgt = TARGETS[targets]
    trainable: tuple = ()
    if model == "roberta-base":
        tgt = ("query", "value") if targets == "qv" else tgt
        trainable = ("classifier",)
    return lora_parameter_count(spec, r, tgt, trainable)


@lru_cache(maxsize=None)
def n_head_roberta() -> int:
    """Parameters of RoBERTa's classification head (trained in full next to LoRA)."""
    from minigpt.memory.zoo import build
    m = build("roberta-base", device="meta")
    return sum(p.numel() for p in m.classifier.parameters())


def _linears(model: str) -> list[tuple[str, int, int]]:
    from minigpt.lora import lora_linear_shapes
    return lora_linear_shapes(_lora_spec(model))


def _roberta_dropout() -> float:
    from minigpt.memory.zoo import hf_config
    return hf_config("roberta-base").hidden_dropout_prob


# ------------------------------------------------------------------------------------ NF4
def nf4_bits(numel: int, blocksize: int = 64, double_quant: bool = False) -> float:
    from minigpt.nf4 import nf4_nbytes
    return 8 * nf4_nbytes(numel, blocksize, double_quant) / numel


BIG = 4096 * 4096      # one LLaMA-7B q_proj: large enough that the per-tensor constants vanish


NF4_BLOCK = 64         # QLoRA's block size (hyper-parameter)


DQ_BLOCK = 256         # double quantisation: scales per second-level block (bitsandbytes)


def all_linear_weights(model: str) -> int:
    """Weights of every linear layer, the LM head included: what autocast makes 16-bit copies of."""
    from minigpt.lora import lora_linear_shapes
    return sum(i * o for _, i, o in lora_linear_shapes(_lora_spec(model)))


def linear_weight_count(model: str) -> int:
    """Weights of the linear layers that QLoRA quantises (all but the head and embeddings)."""
    from minigpt.lora import lora_linear_shapes
    return sum(i * o for n, i, o in lora_linear_shapes(_lora_spec(model)) if n != "lm_head"
               and not n.startswith("classifier"))


# ---------------------------------------------------------------------------- hardware
# GPU memory sizes quoted in the text (vendor specifications; nvidia-smi reports them in MiB):
# A100 80GB = 81920 MiB = 80 GiB; RTX 4090 / A10G = 24 GiB class.
GPUS = {"a100": 80 * GiB, "24": 24 * GiB}


ZERO_GPUS = 8                  # data-parallel GPUs in the sharding table (one 8-GPU node)


CKPT_T0 = 1.0                  # drill 03.4: seconds per step without checkpointing (given)


BACKWARD_OVER_FORWARD = 2      # backward does about twice the forward's matmul work


# ---------------------------------------------------------------------------- alignment
def alignment_bytes() -> dict[str, float]:
    N, nl, amp = n_params("llama-7b"), n_lora("llama-7b", "all", 16), regimes()["amp"]
    T, F, A = amp.persistent * N, BF16 * N, amp.persistent * nl
    return {"sft.full": T, "sft.lora": F + A, "dpo.full": T + F, "dpo.lora": F + A,
            "ppo.full": 2 * T + 2 * F, "ppo.lora": 2 * F + 2 * A}


# ---------------------------------------------------------------------------- quoted draft
# Figures exactly as the client's draft of file 03 (shared/seeds/001) prints them: quoted so the
# "Corrections" box can show them next to the computed values. Nothing is computed from them.
DRAFT = {
    "full7b": "112 GiB", "full7b_expr": "16 × 7e9", "lora_nlora": "19M", "lora_base": "14 GiB", "lora_base_expr": "2N",
    "lora_total": "14.3 GiB", "lora_adapters": "304 MiB", "nf4_per_weight": "0.56 N",
    "nf4_scale": "fp16", "qlora_base": "3.9 GiB", "qlora_total": "4.2 GiB", "dq_save": "~0.5 bytes",
    "ckpt": "~sqrt(L)", "mini_full": "~1.4 GiB", "mini_lora": "~200 MiB", "mini_qlora": "~80 MiB",
    "qlora_lt": "<6 GiB", "qlora_lt_text": "a 7B model fine-tunes in <6 GiB", "ratio_full_qlora": "~27×",
}
