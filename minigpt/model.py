"""MiniGPT: a small decoder-only transformer, in the spirit of nanoGPT.

One file holds the whole model. The same code builds three shapes of network:

* GPT-2-style presets (``tiny``, ``small``, ``minigpt-85m``): learned positions, LayerNorm,
  GELU MLP, biases, the output head tied to the token embedding;
* LLaMA-shaped presets (``llama-7b``, ``llama-13b``, ``llama-70b``) for the what-if memory
  math: rotary positions, RMSNorm, SwiGLU MLP, no biases, untied head. Build those on the
  ``meta`` device: they have the true parameter count and shapes but allocate nothing.

Attention has two paths because the memory lessons need both: ``"sdpa"`` calls
``F.scaled_dot_product_attention`` (a fused kernel on GPU that never stores the T x T
score matrix), ``"eager"`` writes softmax(QK^T)V out by hand and materialises the scores.

Linear layers use LLaMA's names (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``up_proj``, ``down_proj``, ``gate_proj``) so the same LoRA targets work on MiniGPT and on a
LLaMA model from ``transformers``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .device import check_device

# Number of characters in the Shakespeare vocabulary (minigpt.data.SHAKESPEARE_CHARS);
# a test checks that the two agree.
SHAKESPEARE_VOCAB = 79


@dataclass
class GPTConfig:
    vocab_size: int = SHAKESPEARE_VOCAB  # tokens the embedding knows
    block_size: int = 128                # longest sequence (context length)
    n_layer: int = 4                     # transformer blocks
    n_head: int = 4                      # attention heads; n_embd must divide by it
    n_kv_head: Optional[int] = None      # key/value heads (grouped-query attention); None = n_head
    n_embd: int = 256                    # model width (hidden size)
    ffn_hidden: Optional[int] = None     # MLP inner width; None means 4 * n_embd
    dropout: float = 0.0                 # embedding, attention and residual dropout
    bias: bool = True                    # biases in Linear and LayerNorm layers
    attention: str = "sdpa"              # "sdpa" (fused) or "eager" (materialises T x T scores)
    mlp: str = "gelu"                    # "gelu" (GPT-2) or "swiglu" (LLaMA)
    norm: str = "layernorm"              # "layernorm" (GPT-2) or "rmsnorm" (LLaMA)
    pos: str = "learned"                 # "learned" position embedding or "rope" (rotary)
    tie_weights: bool = True             # output head shares the token-embedding matrix
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        choices = {"attention": ("sdpa", "eager"), "mlp": ("gelu", "swiglu"),
                   "norm": ("layernorm", "rmsnorm"), "pos": ("learned", "rope")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not known; "
                                 f"use one of {', '.join(allowed)}.")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}; "
                             f"pick a width that is a multiple of the number of heads.")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}.")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary positions need an even head size (n_embd / n_head).")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")

    @property
    def hidden(self) -> int:
        """Inner width of the MLP."""
        return self.ffn_hidden if self.ffn_hidden is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets, minGPT-style: pick a size by name in tests, labs and the memory CLI.
PRESETS: dict[str, dict] = {
    # for unit tests: trains in seconds on a laptop CPU
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    # the shipped pretrained checkpoint; the CPU labs fine-tune it
    "small": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),
    # the Phase-17 model: 12 layers, 12 heads, width 768, context 512, character vocabulary
    "minigpt-85m": dict(n_layer=12, n_head=12, n_embd=768, block_size=512),
    # LLaMA shapes (Touvron et al. 2023, table 2) with LLaMA's 32,000-token vocabulary.
    # Only for what-if memory math: build them with device="meta".
    "llama-7b": dict(vocab_size=32000, block_size=2048, n_layer=32, n_head=32, n_embd=4096,
                     ffn_hidden=11008, bias=False, mlp="swiglu", norm="rmsnorm", pos="rope",
                     tie_weights=False, norm_eps=1e-6),
    "llama-13b": dict(vocab_size=32000, block_size=2048, n_layer=40, n_head=40, n_embd=5120,
                      ffn_hidden=13824, bias=False, mlp="swiglu", norm="rmsnorm", pos="rope",
                      tie_weights=False, norm_eps=1e-6),
    # LLaMA-2-70B (Touvron et al. 2023b): grouped-query attention with 8 key/value heads
    "llama-70b": dict(vocab_size=32000, block_size=4096, n_layer=80, n_head=64, n_kv_head=8,
                      n_embd=8192, ffn_hidden=28672, bias=False, mlp="swiglu", norm="rmsnorm",
                      pos="rope", tie_weights=False, norm_eps=1e-5),
}


def preset_config(name: str, **overrides) -> GPTConfig:
    """The GPTConfig of a named preset, with any field overridden (e.g. dropout=0.1)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    unknown = set(overrides) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"GPTConfig has no field(s) {', '.join(sorted(unknown))}; "
                         f"the fields are: {', '.join(GPTConfig.__dataclass_fields__)}.")
    return GPTConfig(**{**PRESETS[name], **overrides})


def parameter_count(cfg: GPTConfig) -> int:
    """Number of parameters of GPT(cfg), in closed form (tests compare it with the module)."""
    d, h, L, V = cfg.n_embd, cfg.hidden, cfg.n_layer, cfg.vocab_size
    b = 1 if cfg.bias else 0
    norm = (2 * d if cfg.bias else d) if cfg.norm == "layernorm" else d  # weight (+ bias)
    kv = cfg.kv_heads * cfg.head_dim                     # width of k and v (= d without GQA)
    attn = 2 * (d * d + b * d) + 2 * (d * kv + b * kv)   # q, o and k, v projections
    if cfg.mlp == "gelu":
        mlp = d * h + b * h + h * d + b * d              # up, down
    else:
        mlp = 2 * (d * h + b * h) + h * d + b * d        # gate, up, down
    block = attn + mlp + 2 * norm
    embed = V * d + (cfg.block_size * d if cfg.pos == "learned" else 0)
    head = 0 if cfg.tie_weights else V * d
    return embed + L * block + norm + head


# --------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """x / rms(x) * weight (LLaMA). Written out so the saved tensors are easy to reason about."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg: GPTConfig, T: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (T, head_dim // 2)."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head vector; x is (B, H, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d, kv = cfg.n_embd, cfg.kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=cfg.bias)
        self.k_proj = nn.Linear(d, kv, bias=cfg.bias)
        self.v_proj = nn.Linear(d, kv, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: Optional[tuple] = None) -> torch.Tensor:
        B, T, C = x.shape
        H, Hkv, hd = self.cfg.n_head, self.cfg.kv_heads, self.cfg.head_dim
        # (B, T, C) -> (B, H, T, hd); k and v have Hkv <= H heads
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if Hkv != H:  # grouped-query attention: each k/v head serves H // Hkv query heads
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        p = self.cfg.dropout if self.training else 0.0
        if self.cfg.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))   # (B, H, T, T)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
            att = self.attn_dropout(F.softmax(scores, dim=-1))
            y = att @ v                                                   # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d, h = cfg.n_embd, cfg.hidden
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(d, h, bias=cfg.bias)
        self.up_proj = nn.Linear(d, h, bias=cfg.bias)
        self.down_proj = nn.Linear(h, d, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x))
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: Optional[tuple] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------- model
class GPT(nn.Module):
    """The language model. ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if not self.wte.weight.is_meta:
            self.apply(self._init_weights)
            # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (the tied head is not counted twice)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def set_gradient_checkpointing(self, enabled: bool = True) -> "GPT":
        """Recompute each block's activations in backward instead of storing them."""
        self.gradient_checkpointing = enabled
        return self

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> final normalised hidden states (B, T, C)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be a (batch, time) tensor of token ids, got shape {tuple(idx.shape)}.")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"Sequence length {T} is longer than the context block_size="
                             f"{self.config.block_size}; crop the input or use a larger block_size.")
        x = self.wte(idx)                                                 # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = rope_tables(self.config, T, idx.device, x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        logits = self.lm_head(self.hidden_states(idx))                    # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None) -> torch.Tensor:
        """Sample max_new_tokens tokens after idx (B, T); returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / max(temperature, 1e-8)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), 1)), dim=1)
        return idx


class GPTClassifier(nn.Module):
    """A GPT body with a classification head on a pooled hidden state of each sequence.

    ``forward(idx, labels=None, lengths=None) -> (logits, loss)``; ``lengths`` (B,) gives the
    number of real tokens per row when sequences are right-padded. ``pooling`` chooses what the
    head reads: ``"last"`` (default) the hidden state of the last real token, ``"mean"`` the mean
    of the hidden states of the real tokens (padding excluded). The head is named ``classifier``
    so LoRA's ``trainable=("classifier",)`` keeps it trainable.

    ``minigpt.data.classification_batches`` yields ``(idx, lengths, labels)``, a different order:
    call ``model(*batch.forward_args())`` or ``model(**batch._asdict())`` rather than ``model(*batch)``.
    """

    POOLINGS = ("last", "mean")

    def __init__(self, gpt: GPT, n_classes: int = 2, pooling: str = "last"):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; use one of {', '.join(self.POOLINGS)}.")
        self.gpt = gpt
        self.pooling = pooling
        self.classifier = nn.Linear(gpt.config.n_embd, n_classes)
        if not self.classifier.weight.is_meta:
            nn.init.normal_(self.classifier.weight, std=0.02)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, idx: torch.Tensor, labels: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None):
        x = self.gpt.hidden_states(idx)                                  # (B, T, C)
        B, T = idx.shape
        if lengths is None:
            lengths = torch.full((B,), T, device=idx.device)
        if self.pooling == "mean":
            mask = (torch.arange(T, device=idx.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)                   # (B, C)
        else:
            pooled = x[torch.arange(B, device=idx.device), lengths - 1]  # (B, C)
        logits = self.classifier(pooled)                                 # (B, n_classes)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return logits, loss


def from_preset(name: str, device: str | torch.device = "cpu", **overrides) -> GPT:
    """Build GPT(preset_config(name, **overrides)).

    ``device="meta"`` builds the model without allocating memory: every parameter has its
    true shape and dtype but no storage, which is all the memory math needs.
    """
    cfg = preset_config(name, **overrides)
    with torch.device(check_device(device)):
        return GPT(cfg)
