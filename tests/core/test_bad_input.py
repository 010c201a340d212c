"""The package on bad input (issue 20, part 6): each case works or raises one sentence that says
what to change, and a refused call leaves the model exactly as it was."""
from __future__ import annotations

import copy
import math
import struct
import zipfile

import pytest
import torch
import torch.nn as nn

from minigpt.lora import LoRALinear, apply_lora, lora_layers
from minigpt.model import from_preset
from minigpt.nf4 import dequantize_nf4, quantize_model, quantize_nf4
from minigpt.train import PRETRAINED_PATH, load_checkpoint, save_checkpoint


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    """The message, asserted to be a single sentence (one full stop, at the end, no newline)."""
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith("."), msg
    body = msg[:-1].replace("e.g.", "eg").replace("...", "")
    assert ". " not in body, f"more than one sentence: {msg}"
    return msg


def snapshot(model: nn.Module) -> tuple:
    """Everything a half-applied apply_lora could change: module types, tensors, flags."""
    return ([(n, type(m)) for n, m in model.named_modules()],
            {n: p.detach().clone() for n, p in model.state_dict().items()},
            [(n, p.requires_grad) for n, p in model.named_parameters()])


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    after = snapshot(model)
    assert after[0] == before[0]
    assert after[1].keys() == before[1].keys()
    assert all(torch.equal(after[1][k], before[1][k]) for k in before[1])
    assert after[2] == before[2]


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return from_preset("tiny")


# ------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("alpha", [math.inf, -math.inf, math.nan, 0, -2.0])
def test_apply_lora_refuses_a_non_finite_or_non_positive_alpha(tiny, alpha):
    before = snapshot(tiny)
    with pytest.raises(ValueError, match="LoRA alpha must be") as e:
        apply_lora(tiny, r=4, alpha=alpha)
    one_sentence(e)
    assert_unchanged(tiny, before)


@pytest.mark.parametrize("targets, match", [([], "targets is empty"), ((), "targets is empty"),
                                             (["nope"], "matches no linear layer"),
                                             (["q_proj", "nope"], "'nope' matches no linear layer")])
def test_apply_lora_refuses_targets_that_adapt_nothing(tiny, targets, match):
    before = snapshot(tiny)
    with pytest.raises(ValueError, match=match) as e:
        apply_lora(tiny, r=4, alpha=8, targets=targets)
    assert "q_proj" in one_sentence(e)       # the message names the layers there are
    assert_unchanged(tiny, before)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, "float32"])
def test_apply_lora_refuses_a_non_float_adapter_dtype_and_leaves_the_model_as_it_was(tiny, dtype):
    before = snapshot(tiny)
    with pytest.raises(ValueError, match="adapter_dtype must be a floating-point dtype") as e:
        apply_lora(tiny, r=4, alpha=8, adapter_dtype=dtype)
    one_sentence(e)
    assert_unchanged(tiny, before)
    assert all(p.requires_grad for p in tiny.parameters())
    with pytest.raises(ValueError, match="adapter_dtype"):
        LoRALinear(nn.Linear(8, 8), r=2, alpha=4, adapter_dtype=dtype)


def test_apply_lora_rolls_back_when_building_an_adapter_fails(tiny, monkeypatch):
    """A failure inside the wrapper (here a forced one) leaves no layer frozen or swapped."""
    import minigpt.lora as lora
    built = []
    real_init = lora.LoRALinear.__init__

    def failing_init(self, *args, **kwargs):
        if built:
            raise MemoryError("out of memory")
        built.append(1)
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(lora.LoRALinear, "__init__", failing_init)
    before = snapshot(tiny)
    with pytest.raises(MemoryError):
        apply_lora(tiny, r=4, alpha=8)
    assert_unchanged(tiny, before)


def test_apply_lora_refuses_a_rank_larger_than_a_layer(tiny):
    before = snapshot(tiny)
    with pytest.raises(ValueError, match=r"r=65 is too large for layer .*use r <= 64") as e:
        apply_lora(tiny, r=65, alpha=8)
    one_sentence(e)
    assert_unchanged(tiny, before)
    apply_lora(tiny, r=64, alpha=8)         # the largest rank that fits works
    assert len(lora_layers(tiny)) == 4


# ------------------------------------------------------------------------------ NF4
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_refuses_nan_and_inf_instead_of_spreading_them(bad, double_quant):
    w = torch.randn(64, 96)
    w[3, 7] = bad
    with pytest.raises(ValueError, match=r"1 NaN or inf value\(s\) .* at index \(3, 7\)") as e:
        quantize_nf4(w, double_quant=double_quant)
    one_sentence(e)
    model = nn.Sequential(nn.Linear(96, 64))
    with torch.no_grad():
        model[0].weight.copy_(w)
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_model(model, double_quant=double_quant)
    assert isinstance(model[0], nn.Linear)       # not replaced
    w[3, 7] = 0.5                                # a finite tensor still round-trips
    assert torch.isfinite(dequantize_nf4(quantize_nf4(w, double_quant=double_quant))).all()


def test_bitsandbytes_turns_the_whole_tensor_to_nan_which_is_why_we_raise():
    """What we compared against: bitsandbytes on the CPU spreads one NaN over the whole tensor
    under double quantisation (the mean of the scales is NaN), and over its block without."""
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(64 * 600)
    w[5] = math.nan
    nans = {}
    for dq in (False, True):
        q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        nans[dq] = int(bnb.dequantize_4bit(q, state).isnan().sum())
    assert nans == {False: 64, True: w.numel()}


# ------------------------------------------------------------------------------ checkpoints
def _data_span(path, member_suffix: str) -> tuple[int, int]:
    """(offset, size) in the file of a stored (uncompressed) zip member's bytes."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if i.filename.endswith(member_suffix) or "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


@pytest.fixture
def saved(tmp_path, tiny):
    return save_checkpoint(tmp_path / "ck.pt", tiny, tiny.config, extra={"step": 3}), tiny


def test_a_checkpoint_round_trips_with_its_digest(saved):
    path, model = saved
    assert len(torch.load(path, weights_only=True)["digest"]) == 64
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_bit_flipped_checkpoint_raises_one_sentence(saved):
    path, _ = saved
    offset, size = _data_span(path, "/data/0")
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2] ^= 0x10               # one bit in the middle of the largest tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match the digest") as e:
        load_checkpoint(path)
    one_sentence(e)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_raises_one_sentence(saved, keep):
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(ValueError, match="truncated or damaged") as e:
        load_checkpoint(path)
    one_sentence(e)


def test_a_checkpoint_missing_its_parts_raises_one_sentence(tmp_path, saved):
    path, _ = saved
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="lacks config") as e:
        load_checkpoint(tmp_path / "cut.pt")
    one_sentence(e)


def test_a_checkpoint_without_a_digest_still_loads(tmp_path, saved):
    path, model = saved
    ckpt = torch.load(path, weights_only=True)
    del ckpt["digest"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])


def test_the_shipped_checkpoint_has_no_digest_and_loads():
    assert "digest" not in torch.load(PRETRAINED_PATH, weights_only=True, mmap=True)
    model, meta = load_checkpoint(PRETRAINED_PATH)
    assert meta["config"].n_layer == 4


# ------------------------------------------------------------------------------ devices
def test_from_preset_refuses_an_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'huge'; choose one of: tiny") as e:
        from_preset("huge")
    one_sentence(e)


@pytest.mark.parametrize("device, match", [("gpu", "is not a device name"), ("xla", "not one the course supports"),
                                           ("cuda:99", "GPU"), ("mps", "Apple GPU")])
def test_from_preset_and_load_checkpoint_refuse_an_unavailable_device(saved, device, match):
    if device == "cuda:99" and not torch.cuda.is_available():
        match = "PyTorch sees none"
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises((ValueError, RuntimeError), match=match) as e:
        from_preset("tiny", device=device)
    one_sentence(e)
    with pytest.raises((ValueError, RuntimeError), match=match):
        load_checkpoint(saved[0], device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_from_preset_on_cuda_without_a_gpu_says_so():
    with pytest.raises(RuntimeError, match="asks for a CUDA GPU but PyTorch sees none") as e:
        from_preset("tiny", device="cuda")
    one_sentence(e)


def test_meta_and_cpu_devices_still_work():
    assert from_preset("tiny", device="meta").lm_head.weight.is_meta
    assert copy.deepcopy(from_preset("tiny", device=torch.device("cpu"))).lm_head.weight.device.type == "cpu"
