"""Fake-tensor steps (a 7B model on a laptop) and the CUDA-semantics rules, each tested."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from minigpt.memory import cuda_rules, measure_step, zoo
from minigpt.memory.tracker import TensorTracker




from minigpt.paths import ROOT  # noqa: E402

SEVEN_B = r"""
import json, resource, time
t0 = time.perf_counter()
import torch
from minigpt.memory import measure_step, zoo
t_import = time.perf_counter() - t0
batch = zoo.make_batch("llama-7b", 1, 512)
r = measure_step(zoo.factory("llama-7b", device="meta"), batch, precision="amp-bf16", mode="fake",
                 semantics="cuda")
print(json.dumps({"import_s": t_import, "step_s": r.seconds, "peak": r.peak, "n_params": r.n_params,
                  "w": r.buckets["weights_trainable"],
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_llama_7b_fake_step_time_and_ram():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", SEVEN_B], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n_params"] == 6_738_415_616 and res["w"] == 4 * res["n_params"]
    # targets: <= 10 s per tracked step, <= 1.5 GiB peak RSS. The machine is shared by several
    # jobs; when it is loaded (1-minute load average above its 2 cores) the time gets 2x slack.
    slack = 2.0 if os.getloadavg()[0] > 2.0 else 1.0
    assert res["step_s"] <= 10.0 * slack, res
    assert res["rss"] <= 1.5 * 2 ** 30, res


def test_roberta_base_true_shapes_fake_step():
    batch = zoo.make_batch("roberta-base", 2, 128)
    r = measure_step(zoo.factory("roberta-base", device="meta"), batch, mode="fake")
    assert r.n_params == 124_647_170       # RobertaForSequenceClassification(roberta-base), 2 labels
    assert r.phases["optimizer"]["buckets"]["weights_trainable"] == 4 * r.n_params


# ------------------------------------------------------------------------- CUDA rules, one by one
def _saved_bytes(fn, semantics, *inputs, precision="fp32"):
    """Activations booked after fn(*inputs) under the tracker (inputs registered as inputs)."""
    tr = TensorTracker(semantics=semantics)
    tr.register(list(inputs), "temporaries", data=True)
    ctx = cuda_rules.simulate(precision) if semantics == "cuda" else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with ctx, tr:
        out = fn(*inputs)
        acts = tr.live["activations"]
    return acts, out


def test_rule_dropout_mask_is_one_byte_under_cuda_semantics():
    x = torch.randn(1000, requires_grad=True)
    f = lambda t: F.dropout(t * 2, 0.5, True)   # noqa: E731  (t * 2: a non-leaf input, as in a model)
    cpu, _ = _saved_bytes(f, "cpu", x)
    cuda, out = _saved_bytes(f, "cuda", x)
    assert cpu == 4 * 1000             # CPU: fp32 noise tensor saved
    assert cuda == 1 * 1000            # CUDA: bool mask
    out.sum().backward()               # and it still trains
    assert x.grad is not None


def test_rule_autocast_fp32_list_differs_between_cpu_and_cuda():
    assert {"softmax", "log_softmax", "layer_norm", "rms_norm", "exp", "pow", "sum"} <= set(cuda_rules.AUTOCAST_RULES)
    assert "nll_loss" not in cuda_rules.AUTOCAST_RULES      # CPU autocast runs it in fp32 too
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ torch.randn(8, 8)                          # bf16 under both
        assert h.softmax(-1).dtype == torch.bfloat16       # CPU list: softmax not in fp32
        with cuda_rules.simulate("amp-bf16"):
            assert h.softmax(-1).dtype == torch.float32
            assert F.layer_norm(h, (8,)).dtype == torch.float32
            assert F.rms_norm(h, (8,)).dtype == torch.float32
            assert (h @ h.T).dtype == torch.bfloat16       # matmul stays lower precision


def test_rule_foreach_adamw_temporary_is_all_second_moments():
    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    n = 32 * 64 + 64 + 64 * 10 + 10
    x = torch.randn(2, 32)
    cpu = measure_step(mlp, (x,), semantics="cpu").phases["optimizer"]["buckets"]
    cuda = measure_step(mlp, (x,), semantics="cuda").phases["optimizer"]["buckets"]
    inputs = x.numel() * 4
    assert cuda["temporaries"] - inputs == 4 * n                  # torch._foreach_sqrt(exp_avg_sqs)
    assert cpu["temporaries"] - inputs == 2 * 4 * 32 * 64         # for-loop: sqrt and div of the largest


def test_rule_adamw_step_counters_on_host_under_cuda_semantics():
    lin = lambda: torch.nn.Linear(16, 16)  # noqa: E731
    x = (torch.randn(2, 16),)
    n = 16 * 16 + 16
    assert measure_step(lin, x, semantics="cpu").phases["optimizer"]["buckets"]["optimizer"] == 8 * n + 2 * 4
    assert measure_step(lin, x, semantics="cuda").phases["optimizer"]["buckets"]["optimizer"] == 8 * n


@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "efficient"), (torch.bfloat16, "flash")])
def test_rule_sdpa_saves_q_k_v_out_logsumexp_not_scores(dtype, kernel):
    B, H, T, hd = 2, 4, 40, 16
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hd, dtype=dtype, requires_grad=True) for _ in range(3))
    f = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True, dropout_p=0.1)  # noqa: E731
    cpu, _ = _saved_bytes(f, "cpu", q, k, v)
    cuda, out = _saved_bytes(f, "cuda", q, k, v)
    e = dtype.itemsize
    assert cpu >= B * H * T * T * 4                      # CPU math path with dropout: T x T saved
    T_lse = -(-T // 32) * 32 if kernel == "efficient" else T
    assert cuda_rules.sdpa_kernel(q, None) == kernel
    assert cuda == B * H * T * hd * e + B * H * T_lse * 4  # out + logsumexp (q, k, v are inputs)
    # values and gradients without dropout match torch's own attention
    with cuda_rules.simulate():
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_rule_sdpa_grouped_query_attention_saves_unrepeated_kv():
    B, H, Hkv, T, hd = 1, 8, 2, 32, 16
    torch.manual_seed(0)
    q = torch.randn(B, H, T, hd, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, Hkv, T, hd, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    f = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True)  # noqa: E731
    cuda, y = _saved_bytes(f, "cuda", q, k, v)
    assert cuda == B * H * T * hd * 2 + B * H * T * 4          # out (bf16) + logsumexp; k, v are inputs
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


# ------------------------------------------------------------ the rules with checkpointing / autocast
@pytest.mark.parametrize("mode", ["cpu", "fake"])
@pytest.mark.parametrize("precision", ["fp32", "amp-bf16", "bf16"])
def test_checkpointing_under_cuda_semantics_recomputes_with_the_rules(mode, precision):
    """torch.utils.checkpoint recomputes each block during backward with an empty torch-function
    mode stack; the rules must apply to the recomputation too, or the recomputed attention/dropout
    saves CPU tensors and checkpoint raises CheckpointError (different metadata)."""
    batch = zoo.make_batch("tiny", 4, 64)
    make = zoo.factory("tiny", dropout=0.1)   # dropout: rule 1 must hold in the recomputation too
    ck = measure_step(make, batch, precision=precision, checkpointing=True, mode=mode, semantics="cuda")
    plain = measure_step(make, batch, precision=precision, checkpointing=False, mode=mode, semantics="cuda")
    assert ck.peak < plain.peak
    assert ck.buckets["activations"] < plain.buckets["activations"]
    assert ck.label.startswith("simulated CUDA")


def test_cuda_semantics_restores_checkpoint_after_the_context():
    import torch.utils.checkpoint as ckpt
    before = ckpt._run_fn_with_dynamo_disabled
    with cuda_rules.simulate("amp-bf16"):
        assert ckpt._run_fn_with_dynamo_disabled is not before
    assert ckpt._run_fn_with_dynamo_disabled is before


def test_rule_sdpa_applies_cuda_autocast_before_choosing_the_kernel():
    """CUDA autocast casts scaled_dot_product_attention's floating inputs to its dtype
    (lower_precision_fp) before the kernel is chosen: fp32 q, k, v under bf16 autocast run flash in
    bf16 (out bf16, logsumexp (B, H, T) unpadded), not the fp32 memory-efficient kernel."""
    B, H, T, hd = 2, 4, 40, 16
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
    f = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cuda, out = _saved_bytes(f, "cuda", q, k, v, precision="amp-bf16")
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # CPU autocast: bf16 too
    assert out.dtype == ref.dtype == torch.bfloat16
    # saved: the bf16 copies of q, k, v (made by the autocast cast), out (bf16), logsumexp (fp32)
    assert cuda == 3 * B * H * T * hd * 2 + B * H * T * hd * 2 + B * H * T * 4
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32


def test_llama_is_built_for_training_without_a_kv_cache():
    assert zoo.hf_config("llama-7b").use_cache is False
    assert zoo.hf_config("llama-7b", use_cache=True).use_cache is True


@pytest.mark.parametrize("checkpointing", [False, True])
def test_llama_fake_step_equals_the_cpu_step(checkpointing):
    """Without a KV cache transformers reads the position ids to detect packed sequences; on fake
    tensors it cannot, and would build a (B, 1, T, T) mask a real run never builds."""
    kw = dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=128,
              vocab_size=256)
    batch = zoo.make_batch("llama-7b", 2, 32, vocab_size=256)
    cpu = measure_step(zoo.factory("llama-7b", **kw), batch, mode="cpu", checkpointing=checkpointing)
    fake = measure_step(zoo.factory("llama-7b", **kw), batch, mode="fake", checkpointing=checkpointing)
    assert fake.peak == cpu.peak
    assert fake.buckets == cpu.buckets
