"""The figures of theory/01-why-fine-tuning-costs-memory.md: model sizes, bytes per parameter, GPUs."""
from __future__ import annotations

from functools import lru_cache

from minigpt.model import preset_config

from .facts import (ADAM_MOMENTS, BF16, FP16, FP32, GPUS, MODELS, ZERO_GPUS, all_linear_weights, n_params,
                    regimes)
from .fmt import gb, gib, num, times


@lru_cache(maxsize=None)
def figures() -> dict[str, str]:
    """The inline figures first used by theory file 01 (later files quote some of them too)."""
    f: dict[str, str] = {}
    R = regimes()
    amp, f16m, b16 = R["amp"], R["fp16-master"], R["bf16"]
    N7 = n_params("llama-7b")
    cfg7, cfg85 = preset_config("llama-7b"), preset_config("minigpt-85m")
    # sizes and counts
    for m in MODELS:
        f[f"n.{m}"] = num(n_params(m))
    f["llama-7b.d"] = num(cfg7.n_embd)
    f["minigpt.L"], f["minigpt.d"] = num(cfg85.n_layer), num(cfg85.n_embd)
    from minigpt.nf4 import NF4_CODE
    f["nf4.levels"] = str(NF4_CODE.numel())
    f["bytes.bf16"], f["bytes.fp16"], f["bytes.fp32"] = str(BF16), str(FP16), str(FP32)
    f["amp.persistent"], f["amp.peak"] = str(amp.persistent), str(amp.peak)
    f["formula.fp16master"] = (f"$({FP16} + {FP32}) + {FP16} + {ADAM_MOMENTS} \\times {FP32} = "
                               f"{f16m.persistent}$")
    f["formula.bf16"] = f"${BF16} + {BF16} + {ADAM_MOMENTS} \\times {BF16} = {b16.persistent}$"
    f["llama-7b.infer.gib"] = gib(BF16 * N7)
    f["llama-7b.amp.persistent.gib"] = gib(amp.persistent * N7)
    f["llama-7b.amp.persistent"] = f"{gb(amp.persistent * N7)} = {gib(amp.persistent * N7)}"
    peak7 = amp.persistent * N7 + amp.low_copy * all_linear_weights("llama-7b")   # copies: linear weights only
    f["llama-7b.amp.peak"] = f"{gb(peak7)} = {gib(peak7)}"
    f["llama-7b.amp.vs.infer"] = times(amp.persistent / BF16, 0)
    f["gpu.a100"] = gib(GPUS["a100"], 0)
    f["gpu.24"] = gib(GPUS["24"], 0)
    f["zero.G"] = str(ZERO_GPUS)
    return f
