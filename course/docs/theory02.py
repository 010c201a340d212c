"""The figures and the table of theory/02-lora.md: LoRA's parameter counts."""
from __future__ import annotations

from functools import lru_cache

from minigpt.model import preset_config

from .facts import MODELS, n_head_roberta, n_lora, n_params
from .fmt import millions, num, pct, table, tr


@lru_cache(maxsize=None)
def figures() -> dict[str, str]:
    """The inline figures first used by theory file 02."""
    f: dict[str, str] = {}
    cfg7 = preset_config("llama-7b")
    # LoRA counts
    for m in ("minigpt-85m", "roberta-base", "llama-7b", "llama-13b"):
        for t in ("qv", "all"):
            for r in (8, 16):
                n = n_lora(m, t, r)
                f[f"n.lora.{m}.{t}{r}"] = num(n)
                f[f"pct.lora.{m}.{t}{r}"] = pct(n / n_params(m), 3)
    f["n.lora.l7b.qv8"], f["pct.lora.l7b.qv8"] = f["n.lora.llama-7b.qv8"], f["pct.lora.llama-7b.qv8"]
    f["n.lora.l7b.all16"] = f["n.lora.llama-7b.all16"]
    f["lora.l7b.qv8.m"] = millions(n_lora("llama-7b", "qv", 8))
    f["lora.l7b.all8.m"] = millions(n_lora("llama-7b", "all", 8))
    f["lora.rob.qv8"] = num(n_lora("roberta-base", "qv", 8))
    f["roberta.head"] = num(n_head_roberta())
    d = cfg7.n_embd
    f["lora.q7b.full"] = num(d * d)
    from minigpt.lora import lora_parameter_count
    q8 = lora_parameter_count([(d, d)], 8)            # one (in, out) shape, closed form
    f["lora.q7b.r8"] = num(q8)
    f["lora.q7b.ratio"] = pct(q8 / (d * d))
    f.update(minilm_figures())
    return f


def minilm_runs() -> dict:
    """The committed results of `make benchmark-minilm` (benchmarks/bench_minilm.py)."""
    from minigpt.paths import committed_results
    return committed_results("minilm.json")


def minilm_figures() -> dict[str, str]:
    d = minilm_runs()
    m, st = d["methods"], d["settings"]
    n = m["full"]["params"]
    f = {"minilm.train": num(st["train_reviews"]), "minilm.test": num(d["baseline"]["test_reviews"]),
         "minilm.lora.share": pct(m["lora"]["trainable_params"] / n),
         "minilm.lora.gap": f"{100 * (m['full']['accuracy'] - m['lora']['accuracy']):.1f}",
         "minilm.qlora.gap": f"{100 * (m['lora']['accuracy'] - m['qlora']['accuracy']):.1f}",
         "minilm.majority": pct(d["baseline"]["majority"], 1),
         "minilm.machine": f"{d['machine']['cpu']}, {d['machine']['cores']} cores, torch "
                           f"{d['versions']['torch']}, {d['date_utc'][:10]}"}
    return f


def t_minilm(lang: str) -> str:
    from .fmt import mib
    d = minilm_runs()
    m, n = d["methods"], d["methods"]["full"]["params"]
    names = {"full": ("full fine-tuning", "ajuste completo"), "lora": ("LoRA (`minigpt.lora`)", "LoRA (`minigpt.lora`)"),
             "peft-lora": ("LoRA (`peft`)", "LoRA (`peft`)"), "qlora": ("QLoRA (`minigpt.nf4` base)", "QLoRA (base `minigpt.nf4`)"),
             "qlora-bnb": ("QLoRA (`bitsandbytes` base)", "QLoRA (base `bitsandbytes`)")}
    rows = [[tr(lang, "majority class", "clase mayoritaria"), pct(d["baseline"]["majority"], 1), "—", "—"],
            [tr(lang, "untrained classifier", "clasificador sin entrenar"), pct(d["baseline"]["untrained"], 1), "—", "—"]]
    for k, v in m.items():
        rows.append([tr(lang, *names[k]), pct(v["accuracy"], 1), f"{num(v['trainable_params'])} ({pct(v['trainable_params'] / n)})",
                     mib(v["memory"]["peak"], 1)])
    head = [tr(lang, "method", "método"), tr(lang, "test accuracy", "exactitud en test"),
            tr(lang, "trainable parameters", "parámetros entrenables"),
            tr(lang, "peak of one step (tracked)", "pico de un paso (rastreado)")]
    return table(head, rows, "lrrr")


def t_nlora(lang: str) -> str:
    rows = []
    for m in ("minigpt-85m", "roberta-base", "llama-7b"):
        N = n_params(m)
        cells = [f"{num(n_lora(m, t, r))} ({pct(n_lora(m, t, r) / N, 3)})" for t in ("qv", "all") for r in (8, 16)]
        rows.append([MODELS[m], num(N)] + cells)
    head = [tr(lang, "model", "modelo"), "$N$", "q,v $r=8$", "q,v $r=16$", "all-linear $r=8$", "all-linear $r=16$"]
    return table(head, rows)


TABLES = {"table.nlora": t_nlora, "table.minilm": t_minilm}
