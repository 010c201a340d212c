"""The live-tensor tracker is exact: weights, gradients, AdamW state and activations to the byte."""
import pytest
import torch
import torch.nn as nn

from minigpt.memory import measure_step
from minigpt.memory import zoo
from minigpt.memory.measure import Session
from minigpt.repro import set_seed



IN, HID, OUT = 32, 64, 10


def mlp() -> nn.Module:
    set_seed(0)
    return nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))


N_MLP = IN * HID + HID + HID * OUT + OUT        # 2762 parameters in 4 tensors


def test_mlp_weights_gradients_adamw_state_exact_bytes():
    r = measure_step(mlp, (torch.randn(4, IN),), optimizer="adamw")
    end = r.phases["optimizer"]["buckets"]          # at the optimizer step all of it is alive
    assert end["weights_trainable"] == 4 * N_MLP
    assert end["gradients"] == 4 * N_MLP
    # two fp32 moments per parameter + one float32 `step` scalar per parameter tensor (4 tensors)
    assert end["optimizer"] == 8 * N_MLP + 4 * 4
    assert r.buckets["weights_frozen"] == r.buckets["weight_copies"] == 0
    assert r.peak == sum(r.buckets.values())


def test_mlp_sgd_momentum_state_is_one_buffer():
    r = measure_step(mlp, (torch.randn(4, IN),), optimizer="sgd")
    assert r.phases["optimizer"]["buckets"]["optimizer"] == 4 * N_MLP


@pytest.mark.parametrize("precision, nbytes", [("bf16", 2), ("fp16", 2)])
def test_pure_low_precision_halves_model_state(precision, nbytes):
    r = measure_step(mlp, (torch.randn(2, IN),), precision=precision)
    end = r.phases["optimizer"]["buckets"]
    assert end["weights_trainable"] == nbytes * N_MLP
    assert end["gradients"] == nbytes * N_MLP
    assert end["optimizer"] == 2 * nbytes * N_MLP + 4 * 4   # step counters stay float32


def test_mlp_activations_exactly_linear_in_batch_size():
    acts = {}
    for B in (1, 2, 4):
        r = measure_step(mlp, (torch.randn(B, IN),))
        acts[B] = r.phases["forward"]["buckets"]["activations"]
    # ReLU saves its (B, HID) fp32 output, the second Linear saves the same storage: counted once
    assert acts[1] == 4 * HID
    assert acts[2] == 2 * acts[1] and acts[4] == 4 * acts[1]


def test_frozen_parameters_and_lora_buckets():
    from minigpt.lora import apply_lora

    def lora_tiny():
        set_seed(0)
        return apply_lora(zoo.build("tiny"), r=4, alpha=8, targets=("q_proj", "v_proj"))
    model = lora_tiny()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    r = measure_step(lora_tiny, zoo.make_batch("tiny", 2, 16))
    end = r.phases["optimizer"]["buckets"]
    assert end["weights_trainable"] == 4 * n_train
    assert end["weights_frozen"] == 4 * (n_all - n_train)
    assert end["gradients"] == 4 * n_train
    assert end["optimizer"] == 8 * n_train + 4 * n_tensors
    assert r.n_trainable == n_train and 0 < n_train < n_all


def test_peak_agrees_with_torch_memtracker_on_full_finetuning():
    from torch.distributed._tools.mem_tracker import MemTracker

    batch = zoo.make_batch("tiny", 2, 32)
    ours = measure_step(zoo.factory("tiny"), batch)
    s = Session(zoo.factory("tiny"), batch)
    s.step()                                   # the same warm-up step
    s.opt.zero_grad(set_to_none=True)
    mt = MemTracker()
    mt.track_external(s.model, s.opt, *s.batch)
    with mt:
        s.step()
    theirs = mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert ours.peak == theirs


@pytest.mark.parametrize("precision, semantics", [("fp32", "cpu"), ("amp-bf16", "cuda")])
def test_real_cpu_and_fake_agree_to_the_byte_on_minigpt_tiny(precision, semantics):
    batch = zoo.make_batch("tiny", 2, 32)
    f = zoo.factory("tiny", dropout=0.1)
    real = measure_step(f, batch, precision=precision, mode="cpu", semantics=semantics)
    fake = measure_step(f, batch, precision=precision, mode="fake", semantics=semantics)
    assert real.peak == fake.peak and real.buckets == fake.buckets and real.phases == fake.phases


def test_real_cpu_and_fake_agree_to_the_byte_on_minigpt_small():
    batch = zoo.make_batch("small", 1, 32)
    real = measure_step(zoo.factory("small"), batch, mode="cpu")
    fake = measure_step(zoo.factory("small"), batch, mode="fake")
    assert real.peak == fake.peak and real.phases == fake.phases


ROBERTA_SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                     vocab_size=1000)


@pytest.mark.parametrize("semantics", ["cpu", "cuda"])
def test_real_cpu_and_fake_agree_to_the_byte_on_reduced_roberta(semantics):
    batch = zoo.make_batch("roberta-base", 2, 32, pad=8, **ROBERTA_SMALL)
    f = zoo.factory("roberta-base", **ROBERTA_SMALL)
    real = measure_step(f, batch, precision="amp-bf16", mode="cpu", semantics=semantics)
    fake = measure_step(f, batch, precision="amp-bf16", mode="fake", semantics=semantics)
    assert real.peak == fake.peak and real.phases == fake.phases


def test_report_table_and_dict():
    r = measure_step(mlp, (torch.randn(2, IN),))
    d = r.to_dict()
    assert all(isinstance(v, int) for v in d["buckets"].values()) and d["peak"] == r.peak
    text = str(r)                                   # a 60 KB peak is shown in KiB
    assert "units: KiB (1 KiB = 2**10 bytes)" in text and "tracked on CPU" in text
    assert "units: MiB (1 MiB = 2**20 bytes)" in r.table("MiB")
    assert f"{r.peak:,} bytes" in text


def test_bad_arguments_fail_with_one_clear_sentence():
    with pytest.raises(ValueError, match="precision"):
        measure_step(mlp, (torch.randn(2, IN),), precision="fp8")
    with pytest.raises(ValueError, match="optimizer"):
        measure_step(mlp, (torch.randn(2, IN),), optimizer="lion")
    with pytest.raises(ValueError, match="meta"):
        measure_step(lambda: zoo.build("tiny", device="meta"), zoo.make_batch("tiny", 1, 8))
    with pytest.raises(ValueError, match="known names"):
        zoo.build("gpt-5")


def test_gradient_checkpointing_keeps_only_block_inputs_and_agrees_with_fake():
    batch = zoo.make_batch("tiny", 2, 32)
    f = zoo.factory("tiny", n_layer=4)
    plain = measure_step(f, batch)
    ckpt = measure_step(f, batch, checkpointing=True)
    fake = measure_step(f, batch, checkpointing=True, mode="fake")
    assert ckpt.peak == fake.peak and ckpt.phases == fake.phases
    a_plain = plain.phases["forward"]["buckets"]["activations"]
    a_ckpt = ckpt.phases["forward"]["buckets"]["activations"]
    assert a_ckpt < a_plain / 2
    # model state is the same with and without checkpointing
    for k in ("weights_trainable", "gradients", "optimizer"):
        assert ckpt.phases["optimizer"]["buckets"][k] == plain.phases["optimizer"]["buckets"][k]
