"""The small helpers lab 02 reads its figures through: an optimizer's state bytes, a safetensors file's
header and data, the committed MiniLM benchmark, timing a step (on CPU here; the lab's GPU cell
runs the same function on CUDA), and the classifier's training loop under bf16 autocast."""
import json

import pytest
import torch
from safetensors.torch import save_file

from minigpt.classify import accuracy, optimizer_state_bytes, train_classifier
from minigpt.finetune import BENCHMARK, METHODS, committed_benchmark, safetensors_sizes, time_step


def test_optimizer_state_bytes_counts_adamws_moments_and_step_counters():
    layer = torch.nn.Linear(3, 2)                        # 6 + 2 parameters in 2 tensors
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    assert optimizer_state_bytes(opt) == 0               # nothing before the first step
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == 2 * 4 * (6 + 2) + 4 * 2


def test_safetensors_sizes_split_the_file_into_header_and_tensor_data(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.float16)}, path)
    header, data = safetensors_sizes(path)
    assert data == 3 * 5 * 4 + 7 * 2 and header + data == path.stat().st_size
    assert json.loads(path.read_bytes()[8:header])["b"]["dtype"] == "F16"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_sizes(bad)


def test_committed_benchmark_is_readable_and_a_missing_file_says_what_to_run(tmp_path):
    bench = committed_benchmark()
    assert BENCHMARK.is_file() and set(bench["methods"]) <= set(METHODS)
    for key in ("command", "date_utc", "machine", "versions", "baseline", "settings"):
        assert key in bench
    with pytest.raises(FileNotFoundError, match="make benchmark-minilm"):
        committed_benchmark(tmp_path / "none.json")


def test_time_step_on_cpu_returns_a_time_and_no_cuda_peak():
    batch = {"input_ids": torch.tensor([[101, 2307, 102, 0], [101, 2919, 2143, 102]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), "labels": torch.tensor([1, 0])}
    seconds, peak = time_step("lora", batch, device="cpu", steps=2)
    assert seconds > 0 and peak is None
    with pytest.raises(ValueError, match="steps must be at least 1"):
        time_step("lora", batch, device="cpu", steps=0)


class _Toy(torch.nn.Module):
    """A two-layer classifier with the keyword interface of MeanPoolClassifier (x in input_ids)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, input_ids, labels=None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput
        logits = self.net(input_ids)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _toy_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()                   # a separable task: the sign of the first feature
    return [{"input_ids": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, 64, 16)]


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_training_under_bf16_autocast_learns_like_fp32(precision):
    # The forum grid's first run wrapped one torch.autocast around the whole loop: autocast caches
    # the bf16 copy of every weight until its context exits, so every forward ran on the first
    # step's weights and the loss stayed flat. train_classifier enters autocast per forward.
    torch.manual_seed(0)
    model, batches = _Toy(), _toy_batches()
    before = accuracy(model, batches, precision=precision)
    res = train_classifier(model, batches, lr=3e-2, epochs=15, warmup=0.0, progress=False, precision=precision)
    assert res.steps == 60
    assert sum(res.losses[-4:]) / 4 < 0.5 * sum(res.losses[:4]) / 4      # the loss falls by more than half
    assert accuracy(model, batches, precision=precision) >= max(0.9, before + 0.2)


def test_one_autocast_context_around_a_loop_trains_on_stale_weights():
    # The pitfall itself, so that the comment in train_classifier stays true of this torch.
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(4, 2), torch.randn(8, 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    w0, losses = lin.weight.detach().clone(), []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            loss = lin(x).float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert not torch.equal(lin.weight, w0)              # the fp32 weights moved ...
    assert losses[0] == losses[1] == losses[2]          # ... the cached bf16 copy the forward used did not
    with torch.autocast("cpu", dtype=torch.bfloat16):   # a fresh context casts the moved weights
        assert lin(x).float().pow(2).mean().item() < losses[0]
