"""NF4 from scratch (minigpt.nf4) against bitsandbytes 0.50.2 on the CPU.

The 4-bit codes and scales must be byte-for-byte those of
``bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4")``; the double-quantised
scales (``compress_statistics=True``) too, up to the rare platform-dependent rounding noted below.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.model import from_preset
from minigpt.nf4 import (DYNAMIC_CODE_8BIT, GRID_STEPS, NF4_CODE, NF4_OFFSET, NF4Linear, NF4Tensor,
                         create_normal_map, dequantize_nf4, nf4_nbytes, quantize_model, quantize_nf4)
from minigpt.repro import set_seed

bnbF = pytest.importorskip("bitsandbytes.functional")

# Weight shapes: whole blocks, a short last block, an odd number of elements (a padded last
# byte), 1-D and 3-D tensors, a single element.
SHAPES = [(64, 64), (100, 33), (257, 129), (7,), (3, 5, 7), (1, 1)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def bnb_quantize(w, blocksize=64, double_quant=False):
    return bnbF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)


def bnb_dequantize(packed, state):
    # For an odd last dimension bitsandbytes falls back to a function wrapped in torch.compile,
    # which takes ~10 s to compile on a small CPU; running it eagerly executes the same ops.
    # Its native kernel also returns a 1-D tensor of even length as (1, n): we compare values.
    with torch.compiler.set_stance("force_eager"):
        return bnbF.dequantize_4bit(packed, state).reshape(state.shape)


def weight(shape, dtype=torch.float32, seed=0):
    """A Gaussian weight (std 0.02, as MiniGPT initialises) with rows of different scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    if w.dim() > 1:
        w = w * torch.rand(shape[0], *([1] * (w.dim() - 1)), generator=g) * 3
    return w.to(dtype)


# ------------------------------------------------------------------------------- the codes
def test_nf4_code_is_normal_quantiles_and_equals_bitsandbytes_table():
    code = NF4_CODE
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.all(code[1:] > code[:-1])                       # sorted, distinct
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7 and (code == 0).sum() == 1
    assert code[0] == -1.0 and code[-1] == 1.0
    bnb_code = bnbF.get_4bit_type("nf4", device="cpu")
    torch.testing.assert_close(code, bnb_code, rtol=0, atol=1e-6)
    # bitsandbytes' arithmetic (float32 probabilities, float64 quantiles) reproduces the table bit for bit
    assert torch.equal(code, bnb_code)
    # derived, not typed in: another offset gives other levels; the outermost quantile is ~1.85 sd
    assert not torch.allclose(create_normal_map(0.99), code)
    assert abs(torch.special.ndtri(torch.tensor(NF4_OFFSET, dtype=torch.float64)).item() - 1.848) < 1e-3


def test_dynamic_8bit_code_equals_bitsandbytes():
    code = DYNAMIC_CODE_8BIT
    assert torch.equal(code, bnbF.create_dynamic_map(signed=True))
    assert code.shape == (256,) and torch.all(code[1:] >= code[:-1])
    assert code.max() == 1.0 and abs(code.min().item() + 0.99297) < 1e-5 and (code == 0).any()


# --------------------------------------------------------------------- 4-bit, byte for byte
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_matches_bitsandbytes_byte_for_byte(shape, dtype):
    w = weight(shape, dtype)
    packed, state = bnb_quantize(w)
    q = quantize_nf4(w)
    n = w.numel()
    # bitsandbytes returns the same bytes as a (ceil(n / 2), 1) column; we keep them flat
    assert packed.shape == ((n + 1) // 2, 1) and q.packed.shape == ((n + 1) // 2,)
    assert q.packed.dtype == torch.uint8 and torch.equal(q.packed, packed.view(-1))
    assert q.absmax.dtype == torch.float32 and torch.equal(q.absmax, state.absmax)
    assert q.shape == w.shape and q.dtype == dtype and q.blocksize == 64

    ours, theirs = dequantize_nf4(q), bnb_dequantize(packed, state)
    assert ours.shape == theirs.shape == w.shape and ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1024, 1024), (1023, 1025), (2 ** 20 + 2,)])
def test_large_weights_decode_like_bitsandbytes(shape):
    # From 2^20 weights on, dequantize_nf4 reads two bytes per index (a 65,536-row table); an odd
    # number of bytes (the last shape: 2^19 + 1) keeps the one-byte table. Both must give the
    # library's values bit for bit, in float32 and rounded to bfloat16. (The scales are decoded
    # the same way on both paths, so double quantisation is covered by the tests below.)
    w = weight(shape)
    packed, state = bnb_quantize(w)
    q = quantize_nf4(w)
    theirs = bnb_dequantize(packed, state)
    assert torch.equal(dequantize_nf4(q), theirs)
    assert torch.equal(dequantize_nf4(q, torch.bfloat16), theirs.to(torch.bfloat16))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("blocksize", [4, 64, 4096])
def test_the_decode_on_threads_gives_the_one_pass_bits(threads, blocksize):
    # minigpt/nf4_threads.py cuts a large weight into one slice per torch thread (whole blocks
    # each, the short last block in the last slice); the memory tools trace the one-pass decode
    import minigpt.nf4 as nf4
    w = weight((1024, 1031))                               # 2^20 + 7168 weights: a short last block
    q = quantize_nf4(w, blocksize, double_quant=blocksize == 64)
    one_pass = nf4._scale_blocks_(nf4._decode_levels(q.packed)[:q.numel], q.scales(), blocksize).view(q.shape)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert torch.equal(dequantize_nf4(q), one_pass)
        assert torch.equal(dequantize_nf4(q, torch.bfloat16), one_pass.to(torch.bfloat16))
    finally:
        torch.set_num_threads(before)
    if blocksize == 4096 and threads == 2:
        packed, state = bnb_quantize(w, blocksize)
        assert torch.equal(dequantize_nf4(quantize_nf4(w, blocksize)), bnb_dequantize(packed, state))


def test_the_memory_tools_see_the_one_pass_decode():
    # a dispatch mode (the tracker) is per thread: under it the decode must not leave this thread,
    # and its tensors are the threaded decode's (the int32 index, then the float32 output)
    from minigpt.memory import TensorTracker
    q = quantize_nf4(weight((1024, 1024)))
    tracker = TensorTracker()
    with tracker:
        out = dequantize_nf4(q)
    n = q.numel
    assert torch.equal(out, dequantize_nf4(q))
    # peak: the (n/4,) int32 index and the (n,) float32 output, beside the 65,536-row table built
    # afresh under a mode (1 MiB) and what building it takes
    assert 4 * n + n + 2 ** 20 <= tracker.peak <= 4 * n + n + 2 * 2 ** 20


@pytest.mark.parametrize("blocksize", [32, 128, 256, 4096])
def test_other_blocksizes_match_bitsandbytes(blocksize):
    w = weight((96, 200))                                  # 19,200 values: a short last block
    packed, state = bnb_quantize(w, blocksize)
    q = quantize_nf4(w, blocksize)
    assert torch.equal(q.packed, packed.view(-1)) and torch.equal(q.absmax, state.absmax)
    torch.testing.assert_close(dequantize_nf4(q), bnb_dequantize(packed, state), rtol=0, atol=1e-6)


def test_midpoint_ties_zero_blocks_and_outliers_match_bitsandbytes():
    mids = ((NF4_CODE[:-1] + NF4_CODE[1:]) / 2)
    # block 1: every midpoint exactly (absmax 1, so the scaled value is the midpoint itself);
    # a value on a midpoint goes to the LOWER level, as in the library
    ties = torch.cat([mids, torch.ones(1), torch.zeros(64 - 16)])
    zeros = torch.zeros(64)                                   # block 2: all zeros
    outlier = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 0.01
    outlier[5] = 3.0                                          # block 3: one large outlier
    tail = torch.zeros(10)                                    # a short, all-zero last block
    w = torch.cat([ties, zeros, outlier, tail])
    packed, state = bnb_quantize(w)
    q = quantize_nf4(w)
    assert torch.equal(q.packed, packed.view(-1)) and torch.equal(q.absmax, state.absmax)
    codes = torch.stack([q.packed >> 4, q.packed & 15], 1).view(-1)[:15]
    assert torch.equal(codes, torch.arange(15, dtype=torch.uint8))      # midpoint i -> level i
    torch.testing.assert_close(dequantize_nf4(q), bnb_dequantize(packed, state), rtol=0, atol=1e-6)


# ------------------------------------------------------------------- double quantisation
@pytest.fixture(scope="module")
def double_quant_pair():
    """A (1024, 4096) weight: 65,536 blocks of 64, so 256 blocks of 256 scales."""
    w = weight((1024, 4096))
    return w, quantize_nf4(w, double_quant=True), bnb_quantize(w, double_quant=True)


def test_double_quant_matches_bitsandbytes(double_quant_pair):
    w, q, (packed, state) = double_quant_pair
    assert torch.equal(q.packed, packed.view(-1))
    assert torch.equal(q.absmax_offset, state.offset)        # the mean of the scales
    assert torch.equal(q.absmax_scale, state.state2.absmax)  # one float32 per 256 scales
    assert state.state2.blocksize == 256 and q.absmax.dtype == state.absmax.dtype == torch.uint8
    # We reproduce the library's two-step rounding (see _quantize_scales): on x86 every code
    # matches. A CPU kernel that fuses the grid's multiply-add (another architecture) could
    # move a value by one grid step and flip a rare near-tie by one code: allow 1 in 10,000.
    diff = (q.absmax.int() - state.absmax.int()).abs()
    assert (diff == 0).float().mean() >= 0.9999 and diff.max() <= 1
    torch.testing.assert_close(dequantize_nf4(q), bnb_dequantize(packed, state), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_double_quant_of_half_precision_weights_matches_bitsandbytes(dtype):
    w = weight((256, 1100), dtype)                            # 4,400 blocks: a short last block of 256
    q = quantize_nf4(w, double_quant=True)
    packed, state = bnb_quantize(w, double_quant=True)
    assert torch.equal(q.packed, packed.view(-1)) and torch.equal(q.absmax, state.absmax)
    assert torch.equal(q.absmax_offset, state.offset) and torch.equal(q.absmax_scale, state.state2.absmax)
    ours = dequantize_nf4(q)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), bnb_dequantize(packed, state).float(), rtol=0, atol=1e-6)


def test_rounding_scales_directly_would_differ_only_at_near_ties(double_quant_pair):
    """Why the library's 8-bit codes are not always the nearest level, and by how much.

    bitsandbytes' CPU kernel snaps the normalised scale x to a grid of 65,536 points in
    [-1, 1] before it rounds to the nearest level. Rounding x directly instead agrees on
    about 99.9% of the codes; every disagreement is a near-tie at the grid's resolution.
    """
    w, q, (_, state) = double_quant_pair
    centred = quantize_nf4(w).absmax - q.absmax_offset
    x = centred / q.absmax_scale.repeat_interleave(256)[:centred.numel()]     # in [-1, 1]
    code = DYNAMIC_CODE_8BIT
    mids = (code[:-1] + code[1:]) / 2
    direct = torch.bucketize(x, mids)                        # the truly nearest level
    library = state.absmax.long()
    differ = direct != library
    assert 0.0002 < differ.float().mean().item() < 0.005     # ~0.1% of the scales here
    # every disagreement lies within half a grid step (1 / 65535) of a midpoint ...
    gap_to_midpoint = (x[differ, None] - mids).abs().min(dim=1).values
    assert gap_to_midpoint.max() <= 1.0 / GRID_STEPS * (1 + 1e-3)
    # ... so the library's level is never more than one grid step worse than the nearest one
    err_direct = (code[direct[differ]] - x[differ]).abs()
    err_library = (code[library[differ]] - x[differ]).abs()
    assert torch.all(err_library <= err_direct + 2.0 / GRID_STEPS)
    # usually it is the neighbouring level; it is further only among the finest levels (near 0),
    # where several levels lie within one grid step (2 / 65535) of each other
    for d, l in zip(direct[differ].tolist(), library[differ].tolist()):
        if abs(d - l) > 1:
            lo, hi = min(d, l), max(d, l)
            assert code[hi] - code[lo] < 2 * 2.0 / GRID_STEPS


def test_double_quant_error_within_one_percent_of_single():
    w = weight((512, 1024))
    mse_single = (dequantize_nf4(quantize_nf4(w)) - w).pow(2).mean()
    mse_double = (dequantize_nf4(quantize_nf4(w, double_quant=True)) - w).pow(2).mean()
    assert mse_double <= mse_single * 1.01


# ------------------------------------------------------------------------------ storage
def test_bits_per_weight_for_a_4096_square_weight():
    w = torch.empty(4096, 4096, device="meta")       # shapes only: storage is a function of shape
    n = w.numel()
    single, double = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert single.nbytes == n // 2 + 4 * n // 64 and single.bits_per_weight == 4.5
    # 4 bits + 8 bits per 64 + 32 bits per 64 * 256, and one float32 offset for the tensor
    assert double.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n, abs=1e-12)
    assert round(double.bits_per_weight, 3) == 4.127


@pytest.mark.parametrize("shape", [(7,), (100, 33), (300, 300), (1024, 257)], ids=str)
@pytest.mark.parametrize("double_quant", [False, True])
def test_nbytes_formula_equals_the_tensors(shape, double_quant):
    q = quantize_nf4(weight(shape), double_quant=double_quant)
    parts = [q.packed, q.absmax] + ([q.absmax_offset, q.absmax_scale] if double_quant else [])
    assert q.nbytes == sum(t.numel() * t.element_size() for t in parts)
    assert q.nbytes == nf4_nbytes(math.prod(shape), 64, double_quant)


def test_llama_7b_linear_layers_bits_per_weight():
    model = from_preset("llama-7b", device="meta")
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert len(linears) == 32 * 7
    numel = sum(m.weight.numel() for m in linears)
    bits = {dq: 8 * sum(nf4_nbytes(m.weight.numel(), 64, dq) for m in linears) / numel
            for dq in (False, True)}
    assert bits[False] == 4.5
    assert bits[True] == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-5)


# ------------------------------------------------------------------------------- errors
def test_errors_are_one_clear_sentence():
    w = weight((64, 64))
    for bad in (0, -64, 48, 64.0, None):
        with pytest.raises(ValueError, match="blocksize must be a positive power of two"):
            quantize_nf4(w, blocksize=bad)
    # any power of two works here (bitsandbytes itself accepts 32 ... 4096)
    for ok in (1, 16, 8192):
        assert quantize_nf4(w, blocksize=ok).absmax.numel() == -(-w.numel() // ok)
    with pytest.raises(TypeError, match="floating-point tensor"):
        quantize_nf4(torch.ones(64, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point tensor"):
        quantize_nf4([[1.0, 2.0]])
    with pytest.raises(ValueError, match="empty tensor"):
        quantize_nf4(torch.empty(0, 64))
    q = quantize_nf4(w)
    with pytest.raises(ValueError, match="packed must be a uint8 tensor of 2048 bytes"):
        NF4Tensor(q.packed[:-1], q.absmax, q.shape, q.dtype)
    with pytest.raises(ValueError, match="one entry per block"):
        NF4Tensor(q.packed, q.absmax[:-1], q.shape, q.dtype)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        NF4Linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="compute_dtype"):
        NF4Linear(nn.Linear(64, 64), compute_dtype=torch.int8)
    layer = NF4Linear(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(2, 32))
    with pytest.raises(TypeError, match="cast to torch.float16"):
        layer.half()(torch.randn(2, 64))
    with pytest.raises(ValueError, match="blocksize"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), blocksize=3)


# ------------------------------------------------------------------------------ the layer
def test_nf4_linear_forward_backward_and_buffers():
    set_seed(0)
    linear = nn.Linear(96, 40)
    layer = NF4Linear(linear)
    assert (layer.in_features, layer.out_features) == (96, 40)
    assert not any(p.requires_grad for p in layer.parameters())
    assert torch.equal(layer.bias, linear.bias.detach())
    assert {"packed", "absmax", "bias"} <= set(layer.state_dict())
    w_hat = dequantize_nf4(quantize_nf4(linear.weight))
    assert torch.equal(layer.dequantize(), w_hat)

    x = torch.randn(3, 5, 96, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, w_hat, linear.bias), rtol=0, atol=0)
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(x_ref, w_hat, linear.bias.detach()).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-7)

    # state_dict round trip into a layer quantised from another weight
    other = NF4Linear(nn.Linear(96, 40))
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.dequantize(), layer.dequantize())


def test_nf4_linear_does_not_keep_the_dequantised_weight_for_backward():
    layer = NF4Linear(nn.Linear(256, 512, bias=False), double_quant=True)
    saved = []
    x = torch.randn(4, 256, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert (512, 256) not in saved and x.grad.shape == x.shape


def test_nf4_linear_compute_dtype_and_input_dtype():
    layer = NF4Linear(nn.Linear(64, 64), compute_dtype=torch.bfloat16)
    assert layer.dequantize().dtype == torch.bfloat16
    assert layer(torch.randn(2, 64)).dtype == torch.float32          # back to the input's dtype


def test_quantize_model_replaces_linears_but_not_the_tied_head():
    set_seed(0)
    model = from_preset("tiny")
    x = torch.randint(0, model.config.vocab_size, (2, 32))
    _, loss_before = model(x, x)
    quantize_model(model, double_quant=True)
    kinds = {n.rsplit(".", 1)[-1]: type(m) for n, m in model.named_modules() if n.endswith("_proj")}
    assert set(kinds.values()) == {NF4Linear} and len(kinds) == 6
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.wte.weight
    _, loss_after = model(x, x)
    assert abs(loss_after.item() - loss_before.item()) < 0.05 * loss_before.item()

    skipped = quantize_model(from_preset("tiny"), skip="up_proj")   # a single name works too
    assert isinstance(skipped.blocks[0].mlp.up_proj, nn.Linear)
    assert isinstance(skipped.blocks[0].mlp.down_proj, NF4Linear)


def test_nf4_runs_under_fake_tensor_mode():
    # minigpt.memory measures a 7B QLoRA step on fake tensors: quantise, forward and backward
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        layer = NF4Linear(nn.Linear(4096, 4096, bias=False), double_quant=True)
        x = torch.randn(2, 4096, requires_grad=True)
        layer(x).sum().backward()
        assert layer.packed.shape == (4096 * 4096 // 2,) and x.grad.shape == x.shape
