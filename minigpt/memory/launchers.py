"""The ecosystem's launch configs for an estimator spec: ``estimate ... --emit accelerate|deepspeed``.

A learner told "ZeRO-3 on 4 GPUs fits" gets the file that launches exactly that spec:
``accelerate launch --config_file cfg.yaml train.py`` or ``deepspeed --num_gpus 4 train.py
--deepspeed ds.json``. Stages 1-2 map to DeepSpeed in both outputs (accelerate has no ZeRO-1/2 of
its own); stage 3 maps to FSDP2 (``fully_shard``) in accelerate, ZeRO-3 in DeepSpeed. The estimator
models no offload, so both files say "no offload" explicitly rather than leaving a default to guess.
"""
from __future__ import annotations

import json
from typing import Any

from ..precision import PRECISIONS

EMITS = ("accelerate", "deepspeed")


def _mixed(precision: str) -> str:
    """accelerate's mixed_precision name: the 16-bit compute dtype, or "no" for fp32."""
    p = PRECISIONS[precision]
    return {"float16": "fp16", "bfloat16": "bf16"}.get(str(p.compute).replace("torch.", ""), "no")


def deepspeed_config(*, gpus: int, zero: int, batch: int, precision: str = "fp32") -> dict[str, Any]:
    """DeepSpeed's JSON config: ZeRO stage, micro-batch per GPU (the estimator's batch), no offload."""
    mixed = _mixed(precision)
    return {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": batch * gpus,   # DeepSpeed checks micro * accumulation * world == this
        "zero_optimization": {"stage": zero,
                              "offload_optimizer": {"device": "none"},
                              "offload_param": {"device": "none"}},
        "bf16": {"enabled": mixed == "bf16"},
        "fp16": {"enabled": mixed == "fp16"},
    }


def accelerate_config(*, gpus: int, zero: int, batch: int, precision: str = "fp32") -> dict[str, Any]:
    """accelerate's config (the dict its YAML holds): FSDP2 for ZeRO-3, DeepSpeed for 1-2, DDP for 0."""
    cfg: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "machine_rank": 0, "num_machines": 1,
                           "num_processes": gpus, "mixed_precision": _mixed(precision),
                           "main_training_function": "main", "use_cpu": False}
    if zero >= 3:
        cfg.update(distributed_type="FSDP", fsdp_config={
            "fsdp_version": 2, "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_offload_params": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT"})
    elif zero >= 1:
        cfg.update(distributed_type="DEEPSPEED", deepspeed_config={
            "zero_stage": zero, "offload_optimizer_device": "none", "offload_param_device": "none",
            "gradient_accumulation_steps": 1})
    else:
        cfg["distributed_type"] = "MULTI_GPU" if gpus > 1 else "NO"
    return cfg


def emit(kind: str, *, gpus: int, zero: int, batch: int, precision: str = "fp32") -> str:
    """The text of the launcher config: accelerate's YAML or DeepSpeed's JSON."""
    if kind == "deepspeed":
        return json.dumps(deepspeed_config(gpus=gpus, zero=zero, batch=batch, precision=precision), indent=2)
    if kind == "accelerate":
        import yaml   # accelerate's own dependency; its loader reads this file with yaml.safe_load
        return yaml.safe_dump(accelerate_config(gpus=gpus, zero=zero, batch=batch, precision=precision),
                              sort_keys=False)
    raise ValueError(f"unknown emit {kind!r}; use one of: {', '.join(EMITS)}")
