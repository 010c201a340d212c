"""NF4 (4-bit NormalFloat) quantisation from scratch, as QLoRA stores its frozen base weights.

QLoRA (Dettmers et al. 2023) keeps every frozen weight in 4 bits:

1. Cut the flattened weight into blocks of ``blocksize`` (64) values and remember each
   block's largest magnitude, ``absmax`` (one float32 per block).
2. Divide the block by its absmax, so every value lands in [-1, 1], and replace it by the index
   (0..15) of the nearest of 16 fixed levels, ``NF4_CODE``: quantiles of a standard normal, since
   trained weights are roughly normal, so each level stands for about as many weights.
3. Pack two 4-bit indices into each byte.

``dequantize_nf4`` reverses it: ``weight = NF4_CODE[index] * absmax``. That costs 4 bits per
weight plus 32 bits per block of 64 (0.5 bits per weight) for the scales. *Double
quantisation* stores the scales themselves in 8 bits (blocks of 256, with the mean subtracted
first), which brings the total from 4.5 to about 4.127 bits per weight.

Everything here reproduces ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")`` on the
CPU byte for byte (tests/core/test_nf4.py); comments mark where we follow its exact arithmetic.

    q = quantize_nf4(w)                  # NF4Tensor: packed codes + scales
    w_hat = dequantize_nf4(q)            # same shape and dtype as w
    q.bits_per_weight                    # 4.5 (4.127 with double_quant=True, large tensors)
    model = quantize_model(model)        # every nn.Linear except the head -> NF4Linear
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nf4_threads import decode_on_threads

BLOCKSIZE = 64                # QLoRA's block size: one absmax per 64 weights (the default everywhere here)
DOUBLE_QUANT_BLOCKSIZE = 256  # bitsandbytes quantises the scales in blocks of 256
NF4_OFFSET = 0.9677083        # probability of the outermost NF4 quantile (QLoRA / bitsandbytes)


# ----------------------------------------------------------------------------- the two codes
def create_normal_map(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, in [-1, 1]: quantiles of N(0, 1), normalised.

    Two asymmetric halves so that 0 is exactly representable (zero padding, ReLU outputs)
    and no level is wasted: 8 positive levels from the quantiles at probabilities
    ``offset ... 0.5`` (9 evenly spaced points, the last one, 0.5, dropped), 7 negative levels
    from 8 points the same way, and an exact 0. Dividing by the largest level maps the
    outermost quantile (``ndtri(offset)`` ~ 1.85 standard deviations) to +1 and -1.

    We follow bitsandbytes' arithmetic so the table is bit-identical to the library's:
    the probabilities are float32 (``torch.linspace``), the quantiles float64, and the
    result is rounded to float32 before it is normalised.
    """
    def quantiles(n: int) -> torch.Tensor:
        p = torch.linspace(offset, 0.5, n)[:-1]           # float32 probabilities, 0.5 dropped
        return torch.special.ndtri(p.double())            # inverse normal CDF, float64
    positive = quantiles(9)                               # 8 levels
    negative = -quantiles(8)                              # 7 levels
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float()
    levels = levels.sort().values
    return levels / levels.max()


def create_dynamic_map_8bit() -> torch.Tensor:
    """The signed 8-bit "dynamic" code (Dettmers 2015) that double quantisation uses for scales.

    A byte is a sign bit, then a decimal exponent written as a run of zero bits ended by a
    1, then a linear fraction in the bits that are left: small magnitudes get a large
    exponent range and few fraction levels, large ones many levels. Exponent 10^e for
    e = -6 ... 0 has 2^(e+6) fraction levels, the midpoints of an even split of [0.1, 1].
    With their negatives, 0 and 1 that is 2 * 127 + 2 = 256 values. Note the ends are not
    symmetric: the largest is 1.0, the most negative -0.993 (the midpoint of the last bin).
    Float32 arithmetic throughout, as in bitsandbytes' ``create_dynamic_map``.
    """
    values = [0.0, 1.0]
    for i in range(7):                                    # exponent 10^(i-6)
        edges = torch.linspace(0.1, 1.0, 2 ** i + 1)      # 2^i fraction bins (float32)
        mids = (edges[:-1] + edges[1:]) / 2
        magnitudes = (10.0 ** (i - 6) * mids).tolist()
        values += magnitudes + [-m for m in magnitudes]
    return torch.tensor(sorted(values), dtype=torch.float32)


NF4_CODE: torch.Tensor = create_normal_map()                 # (16,) float32
DYNAMIC_CODE_8BIT: torch.Tensor = create_dynamic_map_8bit()  # (256,) float32

# Rounding to the nearest level = counting the midpoints between neighbouring levels that lie
# below the value (torch.bucketize). A value exactly on a midpoint goes to the lower level,
# as in bitsandbytes (bucketize's default, right=False).
_NF4_MIDPOINTS = ((NF4_CODE[:-1] + NF4_CODE[1:]) / 2).tolist()                    # 15 floats
_DYNAMIC_MIDPOINTS = ((DYNAMIC_CODE_8BIT[:-1] + DYNAMIC_CODE_8BIT[1:]) / 2).tolist()  # 255 floats
_NF4_ZERO_INDEX = NF4_CODE.tolist().index(0.0)               # 7: pads an odd-length tensor

# Dequantisation lookup table: a packed byte -> its two levels (high nibble first): one gather
# decodes two weights, no shifts or masks. Each row of two float32 is viewed as one 8-byte word,
# faster to gather than a row of a 2-D table (benchmarks/bench_from_scratch.py).
_BYTE_TO_PAIR = torch.stack([NF4_CODE.repeat_interleave(16), NF4_CODE.repeat(16)], dim=1)  # (256, 2)
_BYTE_TO_PAIR_WORDS = _BYTE_TO_PAIR.view(torch.int64).view(256).tolist()                # 256 ints
# Large weights read two bytes at a time instead: a uint16 (little-endian: the first byte is the
# low half) indexes a table of 65,536 rows of four levels (1 MiB), so the gather and the int32
# index it needs are half as long. The 16-byte rows are gathered as complex128 values: the bits
# are only copied, never computed on. Used from this many weights on, where the int32 index it
# saves (1 byte per weight) outweighs the table: the decode transient is then smaller, never larger.
_QUAD_MIN_NUMEL = 2 ** 20
_LITTLE_ENDIAN = sys.byteorder == "little"

# bitsandbytes rounds the 8-bit scales after snapping x in [-1, 1] to GRID_STEPS + 1 points
GRID_STEPS = 65535
_TINY = 1e-38  # bitsandbytes clamps absmax to this before dividing (an all-zero block)


def _table(values: list, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A small constant table on ``like``'s device.

    Built from Python numbers on each call (microseconds), so that under FakeTensorMode it
    is a fake tensor like the weights: the memory tools run a 7B QLoRA step that way.
    """
    return torch.tensor(values, dtype=dtype, device=like.device)


# ------------------------------------------------------------------------------- the tensor
@dataclass
class NF4Tensor:
    """A weight in NF4: what QLoRA keeps in memory instead of the float tensor.

    packed         uint8 (ceil(numel / 2),): two 4-bit level indices per byte, the first
                   element of each pair in the high nibble. (bitsandbytes returns the same
                   bytes as a (ceil(numel / 2), 1) column.)
    absmax         the per-block scales, one per ``blocksize`` values (the last block may be
                   shorter): float32 (n_blocks,); with double quantisation uint8 (n_blocks,),
                   the 8-bit codes of ``absmax - absmax_offset``.
    shape, dtype   of the original weight (dequantisation returns this dtype).
    blocksize      values per block.
    absmax_offset  double quantisation only: float32 scalar, the mean of the scales.
    absmax_scale   double quantisation only: float32 (ceil(n_blocks / 256),), the absmax of
                   each block of 256 centred scales.
    """
    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = BLOCKSIZE
    absmax_offset: Optional[torch.Tensor] = None
    absmax_scale: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        self.shape = torch.Size(self.shape)
        n = self.shape.numel()
        if self.packed.dtype != torch.uint8 or self.packed.numel() != (n + 1) // 2:
            raise ValueError(f"packed must be a uint8 tensor of {(n + 1) // 2} bytes for a weight "
                             f"of shape {tuple(self.shape)}, got {self.packed.dtype} with "
                             f"{self.packed.numel()} elements.")
        if self.absmax.numel() != self.n_blocks:
            raise ValueError(f"absmax must have one entry per block of {self.blocksize} "
                             f"({self.n_blocks}), got {self.absmax.numel()}.")

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def double_quant(self) -> bool:
        return self.absmax_offset is not None

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies: codes + scales (+ offset and second-level scales).

        The two code tables (16 and 256 float32 values) are constants of the format, shared
        by every tensor, and are not counted.
        """
        tensors = [self.packed, self.absmax, self.absmax_offset, self.absmax_scale]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    def scales(self) -> torch.Tensor:
        """The float32 scale of every block (decoded from 8 bits under double quantisation)."""
        if not self.double_quant:
            return self.absmax.float()
        code = _table(DYNAMIC_CODE_8BIT.tolist(), self.absmax, torch.float32)
        levels = code.index_select(0, self.absmax.int())                      # (n_blocks,)
        centred = _scale_blocks_(levels, self.absmax_scale, DOUBLE_QUANT_BLOCKSIZE)
        return centred + self.absmax_offset

    def to(self, device: torch.device | str) -> "NF4Tensor":
        """The same tensor on another device."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return NF4Tensor(move(self.packed), move(self.absmax), self.shape, self.dtype,
                         self.blocksize, move(self.absmax_offset), move(self.absmax_scale))


def nf4_nbytes(numel: int, blocksize: int = BLOCKSIZE, double_quant: bool = False) -> int:
    """Bytes of ``quantize_nf4`` of a tensor with ``numel`` elements, without building it."""
    n_blocks = -(-numel // blocksize)
    packed = (numel + 1) // 2
    if not double_quant:
        return packed + 4 * n_blocks
    return packed + n_blocks + 4 + 4 * -(-n_blocks // DOUBLE_QUANT_BLOCKSIZE)


# ------------------------------------------------------------------------ blockwise helpers
def _check_blocksize(blocksize: int) -> None:
    if not isinstance(blocksize, int) or blocksize < 1 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a positive power of two (bitsandbytes accepts 32 "
                         f"to 4096; QLoRA uses 64), got {blocksize!r}.")


def _blockwise_absmax(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Largest |value| of each block of a flat float32 tensor; the last block may be short."""
    n = x.numel()
    full = n - n % blocksize
    absmax = x[:full].view(-1, blocksize).abs().amax(dim=1)                    # (full / bs,)
    if full < n:
        absmax = torch.cat([absmax, x[full:].abs().amax().view(1)])
    return absmax


def _scale_blocks_(levels: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Multiply flat float32 levels (n,) by the scale of their block, in place, and return them."""
    n = levels.numel()
    full = n - n % blocksize
    levels[:full].view(-1, blocksize).mul_(scales[:full // blocksize, None])  # (blocks, bs) * (blocks, 1)
    if full < n:
        levels[full:].mul_(scales[-1])                                           # the short last block
    return levels


def _quantize_scales(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantisation: float32 scales (n_blocks,) -> (uint8 codes, offset, scale per 256).

    The scales are all positive, so subtracting their mean centres them and the signed
    8-bit code spends its levels on both sides of zero. Each block of 256 centred scales is
    divided by its own absmax (times the reciprocal, like the 4-bit path) and rounded to one
    of the 256 dynamic levels.

    The rounding follows bitsandbytes' CPU kernel (C++), in two steps so that it can use a lookup
    table instead of a search: snap x in [-1, 1] to the nearest of 65,536 evenly spaced points
    (``t = ((x + 1) * 0.5) * 65535 + 0.5``, truncated), then take the level nearest that point.
    Rounding x straight to its nearest level would give another code for 0.1-0.2% of the scales
    of a Gaussian weight (near-ties within half a grid step of a midpoint; tests/core/test_nf4.py
    characterises them), so we do the same two steps and our codes equal the library's.
    """
    offset = absmax.mean()
    centred = absmax - offset                                                 # (n_blocks,)
    n, bs = centred.numel(), DOUBLE_QUANT_BLOCKSIZE
    scale = _blockwise_absmax(centred, bs)                                    # (ceil(n / 256),)
    per_value = scale.repeat_interleave(bs)[:n]                               # (n_blocks,)
    x = (centred * (1.0 / per_value)).clamp(-1.0, 1.0)
    grid = ((((x + 1.0) * 0.5) * GRID_STEPS + 0.5).int()).float()             # 0 .. 65535
    x_on_grid = -1.0 + (2.0 * grid) / GRID_STEPS
    codes = torch.bucketize(x_on_grid, _table(_DYNAMIC_MIDPOINTS, x, torch.float32))  # nearest level
    codes = torch.where(per_value == 0, 0, codes)  # 256 equal scales: the library stores code 0
    return codes.to(torch.uint8), offset, scale


def _is_concrete(t: torch.Tensor) -> bool:
    """False for meta and fake tensors (the memory tools), whose values cannot be read."""
    from torch._subclasses.fake_tensor import is_fake
    return t.device.type != "meta" and not is_fake(t)


def _check_finite(x: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, blocksize: int) -> None:
    """Refuse NaN and inf. A non-finite value makes its block's absmax NaN/inf; with double
    quantisation the mean of the scales then is too, and every weight of the tensor decodes to
    NaN (bitsandbytes 0.50 on the CPU does exactly that; without double quantisation it spoils
    the one block). Both are silent, so we raise instead. Checking the absmax (one value per
    block) is cheaper than checking every weight."""
    if not _is_concrete(absmax) or bool(torch.isfinite(absmax).all()):
        return
    bad = (~torch.isfinite(x)).nonzero()
    first = tuple(int(i) for i in torch.unravel_index(bad[0, 0], shape)) if len(bad) else "?"
    raise ValueError(f"quantize_nf4 got {len(bad)} NaN or inf value(s) in a tensor of shape {tuple(shape)} "
                     f"(the first at index {first}), which would make its block of {blocksize} (or, with "
                     f"double quantisation, the whole tensor) NaN; find where they come from and fix them "
                     f"(e.g. torch.nan_to_num) before quantising.")


# --------------------------------------------------------------------------- (de)quantise
def quantize_nf4(w: torch.Tensor, blocksize: int = BLOCKSIZE, double_quant: bool = False) -> NF4Tensor:
    """Quantise a float tensor of any shape to NF4 in blocks of ``blocksize`` values.

    Matches ``bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4",
    compress_statistics=double_quant)`` on the CPU byte for byte.
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        kind = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"quantize_nf4 needs a floating-point tensor (float32, float16 or "
                        f"bfloat16), got {kind}; convert it with .float() first.")
    _check_blocksize(blocksize)
    if w.numel() == 0:
        raise ValueError(f"quantize_nf4 got an empty tensor of shape {tuple(w.shape)}; there is nothing to quantise.")
    x = w.detach().reshape(-1).float()                     # (n,) float32, blocks run along it
    n = x.numel()
    full = n - n % blocksize                               # elements in complete blocks

    # 1. scale each block into [-1, 1]. bitsandbytes multiplies complete blocks by the
    #    reciprocal of their absmax but divides the short last block by it; the two can differ
    #    in the last bit, which can move a value across a midpoint, so we do the same.
    absmax = _blockwise_absmax(x, blocksize)                                   # (n_blocks,)
    _check_finite(x, absmax, w.shape, blocksize)
    safe = absmax.clamp(min=_TINY)                         # an all-zero block scales to zeros
    scaled = (x[:full].view(-1, blocksize) * (1.0 / safe[:full // blocksize, None])).view(-1)
    if full < n:
        scaled = torch.cat([scaled, x[full:] / safe[-1]])
        absmax[-1] = safe[-1]                              # the library stores the clamped tail absmax
    scaled = scaled.clamp(-1.0, 1.0)

    # 2. nearest NF4 level: 0..15
    mids = _table(_NF4_MIDPOINTS, x, torch.float32)
    idx = torch.bucketize(scaled, mids, out_int32=True).to(torch.uint8)       # (n,)

    # 3. pack pairs, first element in the high nibble; an odd tail is padded with the zero level
    if n % 2:
        idx = torch.cat([idx, idx.new_full((1,), _NF4_ZERO_INDEX)])
    packed = (idx[0::2] << 4) | idx[1::2]                                     # (ceil(n / 2),)

    if not double_quant:
        return NF4Tensor(packed, absmax, w.shape, w.dtype, blocksize)
    codes, offset, scale = _quantize_scales(absmax)
    return NF4Tensor(packed, codes, w.shape, w.dtype, blocksize, absmax_offset=offset, absmax_scale=scale)


_QUAD_TABLES: dict[torch.device, torch.Tensor] = {}   # (65536,) complex128 per device, built on first use


def _quad_table(words: torch.Tensor) -> torch.Tensor:
    """The 65,536-row table of four levels, from the (256,) table of byte pairs (as 8-byte words).

    Row (hi << 8) | lo holds the pair of byte lo, then that of byte hi. Kept per device once
    built (1 MiB, a constant of the format like the 16 levels): building it is one more pass
    over 1 MiB on every call. While a dispatch mode is active (minigpt.memory's tracker, fake
    tensors) it is built afresh instead, so the mode sees a table made from constants, not a
    tensor of unknown origin.
    """
    cached = _QUAD_TABLES.get(words.device)
    if cached is not None and torch._C._len_torch_dispatch_stack() == 0:
        return cached
    lo, hi = words.view(1, 256, 1).expand(256, 256, 1), words.view(256, 1, 1).expand(256, 256, 1)
    quads = torch.cat([lo, hi], dim=2).view(65536, 2).view(torch.complex128).view(65536)
    if torch._C._len_torch_dispatch_stack() == 0 and _is_concrete(words):
        _QUAD_TABLES[words.device] = quads
    return quads


def _decode_levels(packed: torch.Tensor) -> torch.Tensor:
    """The levels of every packed byte, high nibble first: (2 * n_bytes,) float32, unscaled."""
    words = _table(_BYTE_TO_PAIR_WORDS, packed, torch.int64)                  # (256,) = (256, 2) levels
    if _reads_pairs(packed):
        pairs_of_bytes = packed.view(torch.uint16).int()                            # (n_bytes / 2,)
        return _quad_table(words).index_select(0, pairs_of_bytes).view(torch.float32)
    return words.index_select(0, packed.int()).view(torch.float32)             # (n_bytes,) words


def _reads_pairs(packed: torch.Tensor) -> bool:  # decoded two bytes at a time: large, even, aligned
    return (packed.numel() * 2 >= _QUAD_MIN_NUMEL and packed.numel() % 2 == 0 and _LITTLE_ENDIAN
            and packed.is_contiguous() and packed.storage_offset() % 2 == 0)


def dequantize_nf4(q: NF4Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The float tensor an NF4Tensor stands for: level * block scale, in ``q.dtype`` (or ``dtype``).

    The product is formed in float32 and rounded once to the output dtype, as bitsandbytes does.
    One gather from a lookup table, then one in-place multiply by the block scales; a large real
    weight on several threads is cut into one slice per thread (minigpt/nf4_threads.py).
    """
    p, threads = q.packed, torch.get_num_threads()
    if threads > 1 and _reads_pairs(p) and torch._C._len_torch_dispatch_stack() == 0 and _is_concrete(p):
        table = _quad_table(_table(_BYTE_TO_PAIR_WORDS, p, torch.int64))     # (65536,) 4 levels a row
        w = decode_on_threads(table, p.view(torch.uint16).int(), q.scales(), q.blocksize, _scale_blocks_, threads)[:q.numel]
    else:
        levels = _decode_levels(q.packed)[:q.numel]        # (2 * n_bytes,) -> (n,) float32
        w = _scale_blocks_(levels, q.scales(), q.blocksize)
    return w.view(q.shape).to(dtype or q.dtype)


# ------------------------------------------------------------------------------ the layer
class _NF4LinearFunction(torch.autograd.Function):
    """y = x W^T + b with W dequantised in forward, and again in backward.

    Saving the dequantised W for backward would keep a full-precision copy of every layer
    alive until the backward pass, which is the memory QLoRA exists to avoid. Like
    bitsandbytes' MatMul4Bit we keep only the 4-bit weight and decode it a second time.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "NF4Linear", bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.layer = layer
        # The dequantised weight: this transient copy is the `weight_copies` bucket in
        # minigpt.memory (weights_frozen holds only the packed bytes and the scales).
        w = layer.dequantize()                                                 # (out, in)
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ ctx.layer.dequantize().to(grad_out.dtype)      # (..., in)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, grad_bias


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 and decoded on the fly in forward.

    ``packed`` and ``absmax`` (and, with double quantisation, ``absmax_offset`` and
    ``absmax_scale``) are buffers, so ``.to(device)`` moves them and ``state_dict()`` saves
    them. The bias, if any, stays in full precision as a frozen parameter. Inputs are cast to
    ``compute_dtype`` and the output back to the input's dtype. Choose the precision with
    ``compute_dtype``, not with ``model.half()`` / ``model.to(dtype)``: those would also cast
    the float32 scales, which forward refuses.
    """

    def __init__(self, linear: nn.Linear, blocksize: int = BLOCKSIZE, double_quant: bool = False,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear wraps an nn.Linear, got {type(linear).__name__}.")
        if not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
            raise ValueError(f"compute_dtype must be a floating-point dtype such as torch.float32 or "
                             f"torch.bfloat16, got {compute_dtype!r}.")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        q = quantize_nf4(linear.weight, blocksize, double_quant)
        self.weight_shape, self.weight_dtype, self.blocksize = q.shape, q.dtype, q.blocksize
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax_offset", q.absmax_offset)  # None without double quant
        self.register_buffer("absmax_scale", q.absmax_scale)
        self.bias = (nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                     if linear.bias is not None else None)

    @property
    def quantized_weight(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax, self.weight_shape, self.weight_dtype,
                         self.blocksize, self.absmax_offset, self.absmax_scale)

    def dequantize(self) -> torch.Tensor:
        """The weight (out_features, in_features) in compute_dtype."""
        scales = [t for t in (self.absmax, self.absmax_offset, self.absmax_scale)
                  if t is not None and t.is_floating_point()]
        if any(t.dtype != torch.float32 for t in scales):
            raise TypeError(f"NF4Linear's scales were cast to {scales[0].dtype} (model.half() or "
                            f"model.to(dtype)); rebuild the layer and pick compute_dtype instead.")
        return dequantize_nf4(self.quantized_weight, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"NF4Linear expects inputs whose last dimension is in_features="
                             f"{self.in_features}, got shape {tuple(x.shape)}.")
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        y = _NF4LinearFunction.apply(x.to(self.compute_dtype), self, bias)
        return y.to(x.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight (codes and scales; the bias is not included)."""
        return self.quantized_weight.nbytes

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.absmax_offset is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, blocksize={self.blocksize}{dq}, "
                f"compute_dtype={self.compute_dtype}")


def quantize_model(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), blocksize: int = BLOCKSIZE,
                   double_quant: bool = False, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace the nn.Linear layers of ``model`` by NF4Linear, in place, and return the model.

    Left as they are: layers with a name in ``skip`` (any part of the dotted path, e.g.
    ``"lm_head"`` or ``"classifier"``: list every layer you want to keep training in full), and
    any linear whose weight is an embedding's weight (MiniGPT's head is tied to the token
    embedding; quantising it would quantise the embedding's copy). Embeddings and norms are
    not linear layers and are never touched.
    """
    _check_blocksize(blocksize)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    targets = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not set(name.split(".")) & set(skip)
               and id(m.weight) not in embeddings]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, NF4Linear(getattr(parent, child), blocksize, double_quant, compute_dtype))
    return model


__all__ = ["NF4_CODE", "DYNAMIC_CODE_8BIT", "NF4Tensor", "NF4Linear", "create_normal_map",
           "create_dynamic_map_8bit", "quantize_nf4", "dequantize_nf4", "nf4_nbytes", "quantize_model"]
