"""The results of lab 05 (solutions/05-the-fp16-lora-puzzle.ipynb) that theory file 03 cites: the
puzzle's figures, next to the other figures, computed from course.puzzle's specs and the trace cache."""
from __future__ import annotations

from functools import lru_cache

from .fmt import auto, fixed, gib, pct, table, tr
from .specs import ROBERTA_B, ROBERTA_LORA, ROBERTA_SCALE, ROBERTA_SHORT, roberta
from ..traces import store


def _mechanisms() -> dict[str, dict]:
    from course.puzzle import mechanism_specs
    return {name: store().get(s) for name, s in mechanism_specs().items()}


@lru_cache(maxsize=None)
def _lab05_padded() -> float:
    """Mean padded length of batches of the learner's size, in lab 05's byte-level BPE tokens."""
    from course.puzzle import BATCH, padded_lengths, token_lengths
    return padded_lengths(token_lengths("train"), BATCH, cap=None).float().mean().item()


def lab05_figures() -> dict[str, str]:
    """The results of lab 05 (solutions/05-the-fp16-lora-puzzle.ipynb) that file 03 cites."""
    from course.puzzle import all_linear_name, attention_scores_bytes, fp32_adapter_extra_bytes, forward_activations
    from minigpt.memory.zoo import hf_config
    f: dict[str, str] = {}
    mech, S = _mechanisms(), ROBERTA_SCALE
    f["lab05.padded"] = fixed(_lab05_padded(), 1)
    # eager attention: extra activations per extra score element, same tokens (file 03, Q2)
    cfg = hf_config("roberta-base")
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * S)
    e_s = roberta("amp-fp16", "full", 1, attention="eager")
    e_l = roberta("amp-fp16", "full", S, batch=long_b, attention="eager")
    elements = cfg.num_hidden_layers * (attention_scores_bytes(long_b, cfg.num_attention_heads, ROBERTA_SHORT * S, 1)
                                        - attention_scores_bytes(ROBERTA_B, cfg.num_attention_heads, ROBERTA_SHORT, 1))
    f["lab05.eager.perscore"] = fixed((forward_activations(e_l) - forward_activations(e_s)) / elements, 2)
    # fp32 adapters on an fp16 base (Q4): the traced difference, and the formula it equals
    extra = (forward_activations(mech["fp16 base, fp32 adapters"])
             - forward_activations(mech["fp16 base, fp16 adapters"]))
    n_adapted = cfg.num_hidden_layers * len(ROBERTA_LORA["targets"])
    assert extra == fp32_adapter_extra_bytes(ROBERTA_B, ROBERTA_SHORT * S, cfg.hidden_size, ROBERTA_LORA["r"],
                                             n_adapted), "the formula of file 03 must equal the traced difference"
    f["lab05.fp32ad.extra"] = auto(extra)
    f["lab05.fp32ad.formula"] = "$(4 - 2) \\times B\\,T\\,(d + r)$"
    f["lab05.allx.amp.long"] = gib(mech[all_linear_name("amp-fp16", S)]["peak"])
    f["lab05.allx.fp32.long"] = gib(mech[all_linear_name("fp32", S)]["peak"])
    f["lab05.full.fp32.long"] = gib(roberta("fp32", "full", S)["peak"])
    f["lab05.head.peak"] = auto(mech["fp16 head only (no adapters)"]["peak"])
    return f


def t_lab05(lang: str) -> str:
    """Lab 05's mechanisms: LoRA's peak against full fine-tuning's in the same precision."""
    from course.puzzle import all_linear_name
    mech, S = _mechanisms(), ROBERTA_SCALE
    amp_full, fp32_full = roberta("amp-fp16", "full", S)["peak"], roberta("fp32", "full", S)["peak"]
    fp16_full = mech["pure fp16 full"]["peak"]
    rows_spec = [
        (("fp16 (AMP), LoRA q,v (the learner's)", "fp16 (AMP), LoRA q,v (la del estudiante)"),
         roberta("amp-fp16", "lora", S)["peak"], amp_full),
        (("fp16 (AMP), LoRA q,v, LoRA dropout 0", "fp16 (AMP), LoRA q,v, dropout de LoRA 0"),
         mech["fp16 LoRA, LoRA dropout 0"]["peak"], amp_full),
        (("fp16 (AMP), classifier head only (no adapters)", "fp16 (AMP), solo la cabeza (sin adaptadores)"),
         mech["fp16 head only (no adapters)"]["peak"], amp_full),
        (("fp16 (AMP), LoRA all-linear", "fp16 (AMP), LoRA en todas las lineales"),
         mech[all_linear_name("amp-fp16", S)]["peak"], amp_full),
        (("fp32, LoRA all-linear", "fp32, LoRA en todas las lineales"), mech[all_linear_name("fp32", S)]["peak"], fp32_full),
        (("fp16 base, fp32 adapters (peft's default)", "base fp16, adaptadores fp32 (por defecto en peft)"),
         mech["fp16 base, fp32 adapters"]["peak"], fp16_full),
        (("fp16 base, fp16 adapters", "base fp16, adaptadores fp16"), mech["fp16 base, fp16 adapters"]["peak"], fp16_full),
    ]
    rows = [[tr(lang, *name), gib(lora), gib(full), pct(lora / full, 0)] for name, lora, full in rows_spec]
    T = ROBERTA_SHORT * S
    head = [tr(lang, f"setup ($T$ = {T})", f"montaje ($T$ = {T})"), tr(lang, "peak", "pico"),
            tr(lang, "full fine-tuning, same precision", "ajuste completo, misma precisión"),
            tr(lang, "LoRA / full", "LoRA / completo")]
    return table(head, rows)


TABLES = {"table.lab05": t_lab05}


def figures() -> dict[str, str]:
    return lab05_figures()
