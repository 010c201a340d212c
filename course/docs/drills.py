"""The arithmetic of the drill solutions (solutions/0N-*-ref.md); names start with the file number."""
from __future__ import annotations

from minigpt.model import preset_config

from .facts import (ADAM_MOMENTS, BACKWARD_OVER_FORWARD, BF16, BIG, CKPT_T0, DQ_BLOCK, FP32, GPUS, NF4_BLOCK,
                    _linears, alignment_bytes, linear_weight_count, n_lora, n_params, nf4_bits, regimes)
from .fmt import fixed, gib, num, pct, times


def drill_figures() -> dict[str, str]:
    """The arithmetic of solutions/0N-*-ref.md (names start with the file number)."""
    f: dict[str, str] = {}
    R = regimes()
    amp = R["amp"]
    N7, N13, N85 = n_params("llama-7b"), n_params("llama-13b"), n_params("minigpt-85m")
    c13, c7, c85 = preset_config("llama-13b"), preset_config("llama-7b"), preset_config("minigpt-85m")
    # 01.1
    f["d01.n13"] = num(N13)
    f["d01.infer13"] = f"{BF16} × {num(N13)} = {num(BF16 * N13)} B = {gib(BF16 * N13)}"
    f["d01.full13"] = f"{amp.persistent} × {num(N13)} = {num(amp.persistent * N13)} B = {gib(amp.persistent * N13)}"
    f["d01.ratio13"] = f"{amp.persistent} / {BF16} = {times(amp.persistent / BF16, 0)}"
    # 01.2
    n = n_lora("minigpt-85m", "qv", 8)
    f["d01.mini.L"], f["d01.mini.d"] = num(c85.n_layer), num(c85.n_embd)
    assert c85.n_layer * 2 * 8 * (2 * c85.n_embd) == n, "the worked formula must equal lora_parameter_count"
    f["d01.mini.nlora"] = (f"{c85.n_layer} × 2 × 8 × ({c85.n_embd} + {c85.n_embd}) = {num(n)}")
    f["d01.mini.frac"] = f"{num(n)} / {num(N85)} = {pct(n / N85, 3)}"
    # 01.3
    f["d01.factor"] = f"{amp.peak} / {BF16} = {times(amp.peak / BF16, 0)}"
    f["d01.amp.peak"] = str(amp.peak)
    # 02.1: LLaMA-13B all-linear r=16, by hand
    d, h, L = c13.n_embd, c13.hidden, c13.n_layer
    per_layer = 4 * (d + d) + 2 * (d + h) + (h + d)
    f["d02.13.shapes"] = f"$d$ = {num(d)}, $f$ = {num(h)}, $L$ = {num(L)}"
    f["d02.13.perlayer"] = f"4 × ({num(d)} + {num(d)}) + 3 × ({num(d)} + {num(h)}) = {num(per_layer)}"
    f["d02.13.total"] = f"16 × {num(L)} × {num(per_layer)} = {num(16 * L * per_layer)}"
    assert 4 * (d + d) + 3 * (d + h) == per_layer
    f["d02.13.check"] = num(n_lora("llama-13b", "all", 16))
    f["d02.13.ok"] = "True" if 16 * L * per_layer == n_lora("llama-13b", "all", 16) else "False"
    # 02.2: gate_proj of LLaMA-7B
    d7, h7 = c7.n_embd, c7.hidden
    f["d02.gate.shape"] = f"{num(d7)} → {num(h7)}"
    f["d02.gate.full"] = f"{num(d7)} × {num(h7)} = {num(d7 * h7)}"
    from minigpt.lora import lora_parameter_count
    gate = lora_parameter_count([(d7, h7)], 8)
    f["d02.gate.lora"] = f"8 × ({num(d7)} + {num(h7)}) = {num(gate)}"
    f["d02.gate.frac"] = pct(gate / (d7 * h7), 3)
    # 02.4: r(d + d) = d*d -> r = d/2
    f["d02.square.r"] = f"$r = d/2$ = {num(d7 // 2)}"
    # 03.1: LLaMA-13B, LoRA r=16 all-linear, three regimes
    nl = n_lora("llama-13b", "all", 16)
    lin13 = linear_weight_count("llama-13b")
    from minigpt.nf4 import nf4_nbytes
    nf4_13 = sum(nf4_nbytes(i * o) for n, i, o in _linears("llama-13b") if n != "lm_head")
    full = amp.persistent * N13
    lora = BF16 * N13 + amp.persistent * nl
    qlora = nf4_13 + BF16 * (N13 - lin13) + amp.persistent * nl
    f["d03.1.nlora"] = num(nl)
    f["d03.1.full"] = f"{amp.persistent} × {num(N13)} B = {gib(full)}"
    f["d03.1.lora"] = f"{BF16} × {num(N13)} + {amp.persistent} × {num(nl)} B = {gib(lora)}"
    f["d03.1.lin"] = num(lin13)
    f["d03.1.nf4"] = f"{num(nf4_13)} B = {gib(nf4_13)}"
    f["d03.1.rest"] = f"{BF16} × ({num(N13)} − {num(lin13)}) B = {gib(BF16 * (N13 - lin13))}"
    f["d03.1.qlora"] = gib(qlora)
    fits = {k: v < GPUS["24"] for k, v in (("full", full), ("lora", lora), ("qlora", qlora))}
    f["d03.1.fits"] = ", ".join(f"{k}: {'✓' if v else '✗'}" for k, v in fits.items())
    # 03.2: double quantisation
    bits, dq = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    f["d03.2.before"] = f"{FP32 * 8} / {NF4_BLOCK} = {fixed(FP32 * 8 / NF4_BLOCK, 3)}"
    f["d03.2.after"] = (f"8 / {NF4_BLOCK} + {FP32 * 8} / ({NF4_BLOCK} × {DQ_BLOCK}) = "
                        f"{fixed(8 / NF4_BLOCK + FP32 * 8 / (NF4_BLOCK * DQ_BLOCK), 3)}")
    f["d03.2.saving"] = fixed(FP32 * 8 / NF4_BLOCK - 8 / NF4_BLOCK - FP32 * 8 / (NF4_BLOCK * DQ_BLOCK), 3)
    f["d03.2.code"] = f"{fixed(bits, 3)} → {fixed(dq, 3)}"
    # 03.3: bf16 moments under AMP
    bf16_moments = amp.weights + amp.grads + ADAM_MOMENTS * BF16
    f["d03.3.bytes"] = f"{amp.weights} + {amp.grads} + {ADAM_MOMENTS} × {BF16} = {bf16_moments}"
    f["d03.3.l7b"] = f"{gib(amp.persistent * N7)} → {gib(bf16_moments * N7)}"
    # 03.4: checkpointing time
    f["d03.4.t0"] = f"{CKPT_T0:.1f} s"
    f["d03.4.t1"] = f"{CKPT_T0:.1f} × (1 + 1/{1 + BACKWARD_OVER_FORWARD}) = {CKPT_T0 * (1 + 1 / (1 + BACKWARD_OVER_FORWARD)):.2f} s"
    # 04.1: DPO full LLaMA-13B
    f["d04.1"] = (f"{amp.persistent} × {num(N13)} + {BF16} × {num(N13)} = {num((amp.persistent + BF16) * N13)} B"
                  f" = {gib((amp.persistent + BF16) * N13)}")
    # 04.2: dominant component of LoRA PPO
    a = alignment_bytes()
    frozen = 2 * BF16 * N7
    f["d04.2.frozen"] = gib(frozen)
    f["d04.2.frac"] = pct(frozen / a["ppo.lora"], 1)
    return f
