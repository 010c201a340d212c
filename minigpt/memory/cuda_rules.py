"""What a CUDA run would hold where the CPU kernels hold something else: explicit, tested rules.

``measure_step(..., semantics="cuda")`` runs the step on CPU (or fake CPU) tensors but applies the
rules below, so the tracker sees the tensors a CUDA run would allocate. Results are labelled
"simulated CUDA", never "measured on GPU". We do not use fake ``cuda`` tensors: on a CPU build of
torch autocast does nothing to them and some backward kernels abort.

Rule 1, dropout masks (``DROPOUT``). On CUDA ``F.dropout`` runs the fused kernel
    ``aten::native_dropout`` (aten/src/ATen/native/Dropout.cpp: ``is_fused_kernel_acceptable`` is
    true for CUDA tensors), which keeps a 1-byte ``bool`` mask for backward. On CPU it runs
    ``_dropout_impl``: a noise tensor of the *input's dtype* (4 bytes per element in fp32) is saved.
    Rule: route ``F.dropout`` in training through ``aten::native_dropout`` (which has a CPU kernel
    returning the same bool mask).

Rule 2, autocast op lists (``AUTOCAST``). CUDA and CPU autocast register different ops
    (aten/src/ATen/autocast_mode.h: ``AT_FORALL_FP32``, ``AT_FORALL_FP32_SET_OPT_DTYPE`` for CUDA;
    autocast_mode.cpp has CPU's own, shorter fp32 list). On CUDA softmax, log_softmax, layer_norm,
    rms_norm, group_norm, exp, log, pow, rsqrt, sum, cumsum, ... run in fp32 (their outputs, often
    saved for backward, are 4 bytes per element); on CPU they run in bf16/fp16. Rule: during autocast,
    for each op of CUDA's fp32 lists that the *installed* torch has an AutocastCUDA kernel for and no
    AutocastCPU kernel (read from the dispatcher: ``torch._C._dispatch_has_kernel_for_dispatch_key``),
    apply CUDA's policy before the call: ``fp32`` casts the floating inputs to float32,
    ``fp32_set_opt_dtype`` passes ``dtype=torch.float32``.
    Residual: CUDA's fp16 softmax/log_softmax read fp16 and write fp32 directly (``half_to_float``);
    the CPU has no such kernel, so the simulation makes a transient fp32 copy of the input (freed
    right after; nothing extra is saved). bf16 is exact (CUDA makes the same copy).

Rule 3, foreach optimizers (``FOREACH``). On CUDA, torch's optimizers default to ``foreach=True``
    (torch/optim/optimizer.py ``_default_to_fused_or_foreach``); on CPU to the for-loop. The foreach
    AdamW (torch/optim/adam.py ``_multi_tensor_adam``) computes ``torch._foreach_sqrt(exp_avg_sqs)``
    for all parameters of a dtype group at once: a temporary as large as the whole second moment,
    4 bytes per trainable fp32 parameter, where the for-loop needs two tensors of one parameter's size.
    Rule: build the optimizer with ``foreach=True``.

Rule 4, AdamW step counters (``STEP_ON_HOST``). Non-capturable, non-fused Adam/AdamW keep ``step``
    as a float32 scalar on the *CPU* (torch/optim/adam.py: ``torch.tensor(0.0, dtype=_get_scalar_dtype(),
    device="cpu")``), even for CUDA parameters: 0 GPU bytes. With ``capturable=True`` or ``fused=True``
    it is a device scalar (``fused`` uses float32 too), 4 bytes per parameter tensor on the GPU.
    On CPU runs the counters are 4 bytes per parameter tensor. Rule: under CUDA semantics the tracker
    books them (and the 0-dim scalars the step makes from them) as host memory, outside every bucket.

Rule 5, attention kernels (``SDPA``). On CUDA ``F.scaled_dot_product_attention`` in training runs
    flash attention (fp16/bf16, no mask, head_dim <= 256, sm_80+) or memory-efficient attention (fp32,
    a mask, or a card without flash: a T4 or V100 in fp16). Which one a given card dispatches is
    gpus.sdpa_backend's reading of sdp_utils.cpp; ``on_card(card)`` makes the rule follow it (without
    a card: flash for 16-bit, as on any sm_80+ card). Both save q, k, v, the output and a logsumexp in fp32 — flash (B, H, T); memory-efficient
    (B, H, ceil(T/32)*32) — never the T x T matrix, and apply dropout from a random seed, with no mask
    (aten/src/ATen/native/transformers/cuda/attention.cu; flash-attention csrc/flash_api.cpp). The
    output is written (B, T, H, hd) and returned as a transposed view, so a later
    ``.transpose(1, 2).contiguous()`` copies nothing. Backward allocates dq, dk, dv and a workspace:
    flash: softmax_d fp32 (B, H, T128) and dq_accum fp32 (B, T128, H, hd32) (T rounded up to 128, hd to
    32 (<= 128) or 64); memory-efficient: delta fp32 (B, H, T). On CPU, SDPA without dropout runs a CPU
    flash kernel that saves the same q, k, v, out, logsumexp (B, H, T), but with dropout it falls back
    to the math path that saves the T x T probabilities and a T x T fp32 mask.
    With grouped-query attention (``enable_gqa=True``) the kernels read the Hkv key/value heads in
    place (k and v are saved unrepeated) and flash's backward writes dk/dv for all H heads
    (``dk_expanded``, ``dv_expanded``) before summing each group.
    Rule: route SDPA through a function that computes attention with the CPU flash kernel (dropout
    is not applied to the values: the memory, not the numbers, is simulated) and saves and allocates
    exactly the CUDA tensors above. Not modelled: the memory-efficient kernel's padding of a float
    mask's last dimension to a multiple of 16 (no copy when T is a multiple of 16) and its fp32
    gradient-accumulation workspace for fp16/bf16 inputs with a mask.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten

DROPOUT = "dropout: CUDA's fused kernel keeps a 1-byte bool mask (CPU: a mask in the input dtype)"
AUTOCAST = "autocast: CUDA's fp32 op list (softmax, layer/rms norm, exp, pow, sum, ...)"
FOREACH = "optimizer foreach=True (CUDA default): one temporary the size of all second moments"
STEP_ON_HOST = "AdamW step counters live on the host (non-capturable, non-fused): 0 GPU bytes"
SDPA = "attention: flash/memory-efficient kernels save q, k, v, out, logsumexp; no T x T matrix"

# CUDA autocast policies (aten/src/ATen/autocast_mode.h). Python-level names of the functions that
# reach these ops (F.softmax, Tensor.softmax, torch.softmax are all called "softmax").
_CUDA_FP32 = ("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
              "reciprocal", "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm",
              "rms_norm", "group_norm", "frobenius_norm", "nuclear_norm", "cosine_similarity",
              "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
              "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
              "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
              "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
              "renorm", "logsumexp")
_CUDA_FP32_SET_OPT_DTYPE = ("prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm",
                            "linalg_matrix_norm", "sum")
_PY_ALIASES = {"pow": ("pow", "__pow__", "__rpow__"), "norm": ("norm",)}


def _cuda_only(op: str) -> bool:
    """True if the installed torch has an AutocastCUDA kernel for aten::op and no AutocastCPU one."""
    for overload in ("", ".int", ".Tensor_Scalar", ".default"):
        name = f"aten::{op}{overload}"
        try:
            cuda = torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCUDA")
            cpu = torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCPU")
        except RuntimeError:
            continue
        if cuda or cpu:
            return cuda and not cpu
    return False


def autocast_rules() -> dict[str, str]:
    """{python function name: CUDA policy} for the ops whose CUDA and CPU autocast policies differ."""
    rules: dict[str, str] = {}
    for ops, policy in ((_CUDA_FP32, "fp32"), (_CUDA_FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype")):
        for op in ops:
            if _cuda_only(op):
                for py in _PY_ALIASES.get(op, (op,)):
                    rules[py] = policy
    return rules


AUTOCAST_RULES = autocast_rules()


def optimizer_foreach(semantics: str) -> Optional[bool]:
    """``foreach`` for the optimizer: True under CUDA semantics (rule FOREACH), else torch's default."""
    return True if semantics == "cuda" else None


def rules_applied(precision: str) -> list[str]:
    rules = [DROPOUT, FOREACH, STEP_ON_HOST, SDPA]
    if precision.startswith("amp"):
        rules.insert(1, AUTOCAST)
    return rules


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# The card whose kernels the simulation follows (None: any sm_80+ card, flash for 16-bit inputs).
# Set with ``on_card``; a module-level setting, so the CudaSemantics that checkpointing creates for
# its recomputation (see CudaSemantics) follows the same card.
_CARD = None


@contextlib.contextmanager
def on_card(card):
    """Inside this context rule 5 picks the kernel ``card`` (a gpus.GpuSpec or a name) dispatches,
    by gpus.sdpa_backend (e.g. memory-efficient on a T4 in fp16), instead of flash for 16-bit."""
    global _CARD
    from .gpus import GpuSpec, gpu
    prev, _CARD = _CARD, (card if isinstance(card, GpuSpec) or card is None else gpu(card))
    try:
        yield _CARD
    finally:
        _CARD = prev


def kernel_for(card, dtype: torch.dtype, head_dim: int, has_mask: bool, dropout: float = 0.0) -> str:
    """Rule 5's kernel: "flash" or "efficient". Without a card: flash for fp16/bf16 without a mask and
    head_dim <= 256 (sm_80+), else memory-efficient. With one: gpus.sdpa_backend's choice; the math
    (and cuDNN) kernels are not simulated, so they raise with a sentence saying what to change."""
    if card is None:
        return "flash" if dtype in (torch.float16, torch.bfloat16) and not has_mask and head_dim <= 256 \
            else "efficient"
    from .gpus import sdpa_backend
    kernel = sdpa_backend(card, dtype, head_dim, has_mask=has_mask, dropout=dropout)
    if kernel not in ("flash", "efficient"):
        raise ValueError(f"on the {card.name} ({card.sm_name}) SDPA runs its {kernel} kernel for {dtype} with "
                         f"head_dim {head_dim}, which is not simulated; use attention='eager' (it saves the "
                         f"same T x T probabilities) or another precision.")
    return kernel


def sdpa_kernel(q: torch.Tensor, attn_mask: Optional[torch.Tensor], dropout: float = 0.0) -> str:
    """Which CUDA kernel PyTorch picks by default for training: "flash" or "efficient" (on_card's card)."""
    return kernel_for(_CARD, q.dtype, q.shape[-1], attn_mask is not None, dropout)


class CudaLikeSDPA(torch.autograd.Function):
    """Attention that saves and allocates what CUDA's flash / memory-efficient kernels do (rule 5)."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, is_causal, scale, dropout_p=0.0):
        B, H, T, hd = q.shape
        rep = H // k.shape[-3]         # grouped-query attention: each k/v head serves rep q heads
        kernel = sdpa_kernel(q, attn_mask, dropout_p)
        # the kernels read the k/v heads in place; the CPU kernel needs them repeated (transient)
        kr, vr = (k, v) if rep == 1 else (k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3))
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(
            q, kr, vr, 0.0, is_causal, attn_mask=attn_mask, scale=scale)
        del kr, vr
        # CUDA writes the output as (B, T, H, hd) and returns its (B, H, T, hd) transpose
        out_cuda = torch.empty((B, T, H, hd), dtype=q.dtype, device=q.device).transpose(1, 2)
        out_cuda.copy_(out)
        del out
        if kernel == "efficient":  # logsumexp padded to a multiple of 32 along T
            lse_cuda = torch.zeros((B, H, _round_up(T, 32)), dtype=torch.float32, device=q.device)
            lse_cuda[:, :, :T] = lse
            del lse
        else:
            lse_cuda = lse  # (B, H, T) float32, as flash's softmax_lse
        ctx.kernel, ctx.is_causal, ctx.scale, ctx.T, ctx.rep = kernel, is_causal, scale, T, rep
        ctx.save_for_backward(q, k, v, out_cuda, lse_cuda, *(() if attn_mask is None else (attn_mask,)))
        return out_cuda

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, *mask = ctx.saved_tensors
        attn_mask = mask[0] if mask else None
        B, H, T, hd = q.shape
        rep = ctx.rep
        # the CUDA backward kernel's workspace, alive while dq, dk, dv are computed
        if ctx.kernel == "flash":
            hd_r = _round_up(hd, 32 if hd <= 128 else 64)
            work = [torch.empty((B, H, _round_up(T, 128)), dtype=torch.float32, device=q.device),
                    torch.empty((B, _round_up(T, 128), H, hd_r), dtype=torch.float32, device=q.device)]
        else:
            work = [torch.empty((B, H, T), dtype=torch.float32, device=q.device)]
        kr, vr = (k, v) if rep == 1 else (k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3))
        lse_t = lse[:, :, :ctx.T]
        dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.contiguous(), q, kr, vr, out, lse_t, 0.0, ctx.is_causal, attn_mask=attn_mask,
            scale=ctx.scale)
        del kr, vr, work
        if rep > 1:  # flash: dk_expanded/dv_expanded for all H heads, summed over each group
            Hk = H // rep
            dk = dk.view(B, Hk, rep, T, hd).sum(2)       # (B, Hk, T, hd)
            dv = dv.view(B, Hk, rep, T, hd).sum(2)
        return dq, dk, dv, None, None, None, None


def _autocast_lower_precision(*tensors):
    """CUDA autocast's ``lower_precision_fp`` policy for scaled_dot_product_attention
    (aten/src/ATen/autocast_mode.cpp): floating inputs other than float64 are cast to the autocast
    dtype. The simulation runs under CPU autocast, whose dtype stands for the CUDA one."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dtype) if _eligible(t) and t.dtype != dtype else t for t in tensors)


def _cuda_like_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    # autocast acts on the dispatcher's aten::scaled_dot_product_attention, which this function
    # replaces before the dispatcher is reached: apply CUDA's policy for it here, as CUDA would
    # before choosing a kernel (the kernel, the saved q, k, v, out then have autocast's dtype)
    query, key, value, attn_mask = _autocast_lower_precision(query, key, value, attn_mask)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # the kernels take an additive float mask; CUDA converts a bool mask the same way
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, float("-inf"))
    if key.shape[-3] != query.shape[-3] and not enable_gqa:
        raise ValueError("query and key have different numbers of heads; pass enable_gqa=True.")
    return CudaLikeSDPA.apply(query, key, value, attn_mask, is_causal, scale, float(dropout_p))


class CudaSemantics(TorchFunctionMode):
    """Apply rules 1, 2 and 5 to every torch function call inside the context.

    Gradient checkpointing: torch.utils.checkpoint (non-reentrant) recomputes a block inside an
    unpack hook during backward, where the autograd engine runs with an empty torch-function mode
    stack. Left alone, the recomputation would run the CPU kernels (CPU attention, CPU dropout)
    while the first forward ran the rules, and checkpoint rejects the mismatch (CheckpointError:
    different metadata). While this mode is entered, the recomputation runs under the same rules.
    """

    def __init__(self, precision: str = "fp32"):
        super().__init__()
        self.precision = precision
        self.amp = precision.startswith("amp")
        self._patched = None

    def __enter__(self):
        out = super().__enter__()
        import torch.utils.checkpoint as ckpt
        run = getattr(ckpt, "_run_fn_with_dynamo_disabled", None)
        if run is not None and self._patched is None:
            precision = self.precision

            def run_with_rules(fn, *args, **kwargs):
                from torch.overrides import _get_current_function_mode_stack
                if any(isinstance(m, CudaSemantics) for m in _get_current_function_mode_stack()):
                    return run(fn, *args, **kwargs)
                with CudaSemantics(precision):
                    return run(fn, *args, **kwargs)
            ckpt._run_fn_with_dynamo_disabled = run_with_rules
            self._patched = (ckpt, run)
        return out

    def __exit__(self, *exc):
        if self._patched is not None:
            ckpt, run = self._patched
            ckpt._run_fn_with_dynamo_disabled = run
            self._patched = None
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is F.scaled_dot_product_attention:
            return _cuda_like_sdpa(*args, **kwargs)
        if name == "dropout" and func in (F.dropout, torch.dropout):
            return _native_dropout(*args, **kwargs)
        if self.amp and name in AUTOCAST_RULES and torch.is_autocast_enabled("cpu"):
            args, kwargs = _apply_policy(AUTOCAST_RULES[name], name, args, kwargs)
        return func(*args, **kwargs)


def _native_dropout(input, p=0.5, training=True, inplace=False, train=None):
    if train is not None:          # torch.dropout(input, p, train)
        training = train
    if not training or p == 0.0:
        return input
    out, _mask = aten.native_dropout(input, p, True)  # _mask: bool, saved by autograd for backward
    if inplace:
        return input.copy_(out)
    return out


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _apply_policy(policy: str, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if policy == "fp32":
        cast = lambda t: t.float() if _eligible(t) and t.dtype != torch.float32 else t  # noqa: E731
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
    # fp32_set_opt_dtype: if the first argument is eligible and no dtype was given, ask for float32
    if args and _eligible(args[0]) and kwargs.get("dtype") is None and not _dtype_positional(name, args):
        kwargs = {**kwargs, "dtype": torch.float32}
    return args, kwargs


def _dtype_positional(name: str, args: tuple) -> bool:
    # softmax(input, dim, _stacklevel=3, dtype=None): a dtype given positionally is respected
    return any(isinstance(a, torch.dtype) for a in args)


def simulate(precision: str = "fp32") -> CudaSemantics:
    """The context manager that applies rules 1, 2 and 5 (rules 3 and 4 act on the optimizer)."""
    return CudaSemantics(precision)
