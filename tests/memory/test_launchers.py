"""``estimate ... --emit accelerate|deepspeed``: loadable by accelerate's own loader, valid DeepSpeed JSON."""
import json

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from minigpt.memory.cli import main


def _emit(capsys, *args: str) -> str:
    assert main(["estimate", "--model", "tiny", "--seq", "32", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("zero,dist", [(0, "MULTI_GPU"), (1, "DEEPSPEED"), (2, "DEEPSPEED"), (3, "FSDP")])
def test_accelerate_loads(tmp_path, capsys, zero, dist):
    f = tmp_path / "cfg.yaml"
    f.write_text(_emit(capsys, "--gpus", "4", "--zero", str(zero), "--precision", "amp-bf16", "--emit", "accelerate"))
    cfg = load_config_from_file(str(f))
    assert (cfg.num_processes, cfg.distributed_type, cfg.mixed_precision) == (4, dist, "bf16")
    if zero == 3:
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_reshard_after_forward"]
    if zero in (1, 2):
        assert cfg.deepspeed_config["zero_stage"] == zero


def test_deepspeed_json(capsys):
    ds = json.loads(_emit(capsys, "--gpus", "4", "--zero", "3", "--batch", "2", "--emit", "deepspeed"))
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["train_batch_size"] == 8
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "none"}
    assert ds["zero_optimization"]["offload_param"] == {"device": "none"}
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
