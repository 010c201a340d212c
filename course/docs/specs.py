"""Every trace the theory files use, in one place, so `make docs` and the tests agree on the count."""
from __future__ import annotations

from course.puzzle import BATCH as ROBERTA_B, LORA_SPEC as ROBERTA_LORA, SCALE as ROBERTA_SCALE
from course.puzzle import T_SHORT as ROBERTA_SHORT

from ..traces import ALL_LINEAR, TraceSpec, store

MINI = dict(model="minigpt-85m", batch=8, seq=512, precision="amp-bf16")


LLAMA = dict(model="llama-7b", batch=1, seq=512, precision="amp-bf16")


ADAPT = dict(r=8, targets=ALL_LINEAR)      # LoRA/QLoRA of the footprint table: r = 8, all-linear


def roberta(precision: str, method: str, scale: int = 1, batch: int = ROBERTA_B, attention: str = "sdpa") -> dict:
    """One run of the learner's grid (course.puzzle.spec), from the trace cache."""
    from course.puzzle import spec
    return store().get(spec(precision, method, scale, batch=batch, attention=attention))


def all_trace_specs() -> list[TraceSpec]:
    specs = [TraceSpec(**base, method=m, **(ADAPT if m != "full" else {}))
             for base in (MINI, LLAMA) for m in ("full", "lora", "qlora")]
    specs.append(TraceSpec(**MINI, method="lora"))          # q,v adapters: the activations paragraph
    specs += [TraceSpec(**MINI, semantics="cpu", checkpointing=c) for c in (False, True)]
    for precision in ("fp32", "amp-fp16"):
        for method in ("full", "lora"):
            for scale in (1, ROBERTA_SCALE):
                kw = dict(model="roberta-base", batch=ROBERTA_B, seq=ROBERTA_SHORT * scale, precision=precision)
                if method == "lora":
                    kw.update(ROBERTA_LORA)
                specs.append(TraceSpec(**kw))
    same_tokens = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    for attention in ("sdpa", "eager"):
        specs.append(TraceSpec(model="roberta-base", batch=same_tokens, seq=ROBERTA_SHORT * ROBERTA_SCALE,
                               precision="amp-fp16", attention=attention))
        if attention == "eager":
            specs.append(TraceSpec(model="roberta-base", batch=ROBERTA_B, seq=ROBERTA_SHORT,
                                   precision="amp-fp16", attention=attention))
    from course.puzzle import mechanism_specs
    specs += list(mechanism_specs().values())               # lab 05's mechanisms (file 03, Q4)
    return specs


def act(t: dict) -> int:
    """Activation bytes at the end of the forward pass of a trace."""
    return t["phases"]["forward"]["buckets"]["activations"]
