"""The small helpers lab 02 reads its figures through: an optimizer's state bytes, a safetensors file's
header and data, the committed MiniLM benchmark, and timing a step (on CPU here; the lab's GPU cell
runs the same function on CUDA)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from minigpt.classify import optimizer_state_bytes
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
