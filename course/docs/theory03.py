"""The figures and tables of theory/03-memory-footprint.md: NF4, traced steps, attention, checkpointing,
the learner's runs, and the corrections to the client's draft."""
from __future__ import annotations

from functools import lru_cache

from minigpt.memory.buckets import BUCKETS

from .facts import (ADAM_MOMENTS, BACKWARD_OVER_FORWARD, BF16, BIG, DRAFT, FP16, FP32, MODELS, NF4_BLOCK,
                    ZERO_GPUS, _linears, _roberta_dropout, all_linear_weights, linear_weight_count, n_lora,
                    n_params, nf4_bits, regimes)
from .fmt import (BUCKET_SHORT, BUCKET_TEXT, METHOD_TEXT, _buckets_row, _how, auto, fixed, gb, gib, mb, mib,
                  num, pct, table, times, tr)
from .specs import ADAPT, LLAMA, MINI, ROBERTA_B, ROBERTA_LORA, ROBERTA_SCALE, ROBERTA_SHORT, act, roberta
from ..traces import _final_grads, trace


@lru_cache(maxsize=None)
def figures() -> dict[str, str]:
    """The inline figures first used by theory file 03."""
    f: dict[str, str] = {}
    amp = regimes()["amp"]
    N7 = n_params("llama-7b")
    # NF4
    bits, dq_bits = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    f["nf4.bits"] = fixed(bits, 3)
    f["nf4.formula"] = f"$4 + \\frac{{{8 * FP32}}}{{{NF4_BLOCK}}}$"
    f["nf4.bytes"] = fixed(bits / 8, 4)
    fp16_scale_bytes = 0.5 + FP16 / NF4_BLOCK
    f["nf4.bytes.fp16scales"] = fixed(fp16_scale_bytes, 5)
    f["nf4.dq.bits"] = fixed(dq_bits, 3)
    f["nf4.dq.saving.bits"] = fixed(bits - dq_bits, 3)
    f["nf4.dq.saving.bytes"] = fixed((bits - dq_bits) / 8, 4)
    lin7 = linear_weight_count("llama-7b")
    f["nf4.dq.saving.l7b"] = mib(lin7 * (bits - dq_bits) / 8, 0)
    # traces: LLaMA-7B and MiniGPT-85M
    l_full, l_lora = trace(**LLAMA), trace(**LLAMA, method="lora", **ADAPT)
    m_full, m_lora, m_qlora = trace(**MINI), trace(**MINI, method="lora", **ADAPT), trace(**MINI, method="qlora", **ADAPT)
    f["trace.l7b.full.peak"] = gib(l_full["peak"])
    f["trace.l7b.full.perparam"] = fixed(l_full["peak"] / N7, 1)
    f["trace.l7b.lora.peak"] = gib(l_lora["peak"])
    f["trace.l7b.lora.copies"] = gib(l_lora["buckets"]["weight_copies"])
    f["trace.l7b.qlora.peak"] = gib(trace(**LLAMA, method="qlora", **ADAPT)["peak"])
    f["trace.mini.full.act"] = gib(act(m_full))
    f["trace.mini.lora.act"] = gib(act(m_lora))
    f["trace.mini.lora.act.ratio"] = pct(act(m_lora) / act(m_full), 0)
    m_qv = trace(**MINI, method="lora")
    f["trace.mini.loraqv.act"] = gib(act(m_qv))
    f["trace.mini.loraqv.act.ratio"] = pct(act(m_qv) / act(m_full), 0)
    f["trace.mini.lora.vs.full"] = pct(m_lora["peak"] / m_full["peak"], 0)
    f["trace.mini.qlora.vs.lora"] = pct(m_qlora["peak"] / m_lora["peak"], 0)
    f["mini.shape"] = f"$B$ = {MINI['batch']}, $T$ = {MINI['seq']}"
    f["llama.shape"] = f"$B$ = {LLAMA['batch']}, $T$ = {LLAMA['seq']}"
    # attention: same tokens, two shapes
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    e_short = roberta("amp-fp16", "full", 1, attention="eager")
    e_long = roberta("amp-fp16", "full", ROBERTA_SCALE, batch=long_b, attention="eager")
    f["attn.eager.extra"] = auto(e_long["peak"] - e_short["peak"])
    f["attn.short"] = f"{ROBERTA_B} × {ROBERTA_SHORT}"
    f["attn.long"] = f"{long_b} × {ROBERTA_SHORT * ROBERTA_SCALE}"
    # checkpointing: traced with CPU kernel semantics (the CUDA simulation cannot recompute blocks yet)
    c0, c1 = trace(**MINI, semantics="cpu"), trace(**MINI, semantics="cpu", checkpointing=True)
    f["ckpt.act"], f["ckpt.act.on"] = gib(act(c0)), gib(act(c1))
    f["ckpt.factor"] = times(act(c0) / act(c1))
    f["ckpt.peak"], f["ckpt.peak.on"] = gib(c0["peak"]), gib(c1["peak"])
    f["ckpt.compute"] = pct(1 / (1 + BACKWARD_OVER_FORWARD), 0)
    # learner
    f["learner.B"], f["learner.T"] = str(ROBERTA_B), str(ROBERTA_SHORT)
    f["learner.T8"], f["learner.scale"] = str(ROBERTA_SHORT * ROBERTA_SCALE), str(ROBERTA_SCALE)
    f["learner.lora.dropout"] = str(ROBERTA_LORA["dropout"])
    f["learner.model.dropout"] = str(_roberta_dropout())
    g = {(p, m, s): roberta(p, m, s) for p in ("fp32", "amp-fp16") for m in ("full", "lora")
         for s in (1, ROBERTA_SCALE)}
    full32s, full32l = g["fp32", "full", 1], g["fp32", "full", ROBERTA_SCALE]
    f["learner.grads"] = auto(_final_grads(full32s))
    f["learner.act.fp32.full.short"] = gib(act(full32s))
    f["learner.act.fp32.full.long"] = gib(act(full32l))
    f["learner.act.growth"] = fixed(act(full32l) / act(full32s), 1)
    f["learner.amp.saving.short"] = pct(1 - g["amp-fp16", "full", 1]["peak"] / full32s["peak"], 0)
    f["learner.amp.saving.long"] = pct(1 - g["amp-fp16", "full", ROBERTA_SCALE]["peak"] / full32l["peak"], 0)
    f["learner.peak.amp.lora.long"] = gib(g["amp-fp16", "lora", ROBERTA_SCALE]["peak"])
    f["learner.peak.amp.full.long"] = gib(g["amp-fp16", "full", ROBERTA_SCALE]["peak"])
    sf, sl = g["amp-fp16", "full", ROBERTA_SCALE]["start"], g["amp-fp16", "lora", ROBERTA_SCALE]["start"]
    states = lambda s: sum(s.get(k, 0) for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))  # noqa: E731
    f["learner.states.saved"] = gib(states(sf) - states(sl))
    # corrections to the draft
    for k, v in DRAFT.items():
        f[f"draft.{k}"] = v
    f["fix.full7b"] = f"{gb(16 * 7e9)} = {gib(16 * 7e9)}"
    f["fix.full7b.true"] = f"{amp.persistent}N = {gb(amp.persistent * N7)} = {gib(amp.persistent * N7)}"
    f["fix.lora_base"] = f"{gb(BF16 * N7)} = {gib(BF16 * N7)}"
    f["fix.lora_base.amp"] = gib(FP32 * N7 + BF16 * all_linear_weights("llama-7b"))
    f["fix.lora_base.draft"] = f"2 × 7e9 B = {gb(2 * 7e9)} = {gib(2 * 7e9)}"
    f["fix.lora_adapters.draft"] = f"16 × 19e6 B = {mb(16 * 19e6)} = {mib(16 * 19e6)}"
    f["fix.qlora_base.draft"] = f"0.56 × 7e9 B = {gb(0.56 * 7e9, 2)} = {gib(0.56 * 7e9)}"
    f["fix.lora_adapters"] = mib(amp.persistent * n_lora("llama-7b", "all", 8))
    f["fix.lora_adapters.qv"] = mib(amp.persistent * n_lora("llama-7b", "qv", 8))
    f["fix.nf4"] = f"0.5 + {FP32}/{NF4_BLOCK} = {fixed(bits / 8, 4)}"
    f["fix.nf4.ratio"] = times(BF16 / (bits / 8), 2)
    from minigpt.nf4 import nf4_nbytes
    shapes = [(n, i, o) for n, i, o in _linears("llama-7b")]
    nf4_total = sum(nf4_nbytes(i * o) for n, i, o in shapes if n != "lm_head")
    rest = N7 - lin7
    f["fix.qlora_base"] = gib(nf4_total + BF16 * rest)
    qlora_states = nf4_total + BF16 * rest + amp.persistent * n_lora("llama-7b", "all", 8)
    f["fix.ratio"] = times(amp.persistent * N7 / qlora_states, 0)
    f["fix.qlora_states"] = gib(qlora_states)
    f["fix.mini.states"] = ", ".join(
        auto(states(t["start"])) for t in (m_full, m_lora, m_qlora))
    f.update(sharded_figures())
    f.update(polling_figures())
    f.update(grid_figures())
    return f


def t_buckets(lang: str) -> str:
    rows = [[f"`{k}`", tr(lang, *BUCKET_TEXT[k])] for k in BUCKETS]
    return table([tr(lang, "bucket", "cubeta"), tr(lang, "what it holds", "qué contiene")], rows, "ll")


def t_regimes(lang: str) -> str:
    names = {"fp32": ("fp32", "fp32"), "amp": ("AMP (`torch.autocast`)", "AMP (`torch.autocast`)"),
             "fp16-master": ("fp16 + fp32 master (ZeRO, draft)", "fp16 + maestra fp32 (ZeRO, borrador)"),
             "bf16": ("pure bf16", "bf16 puro")}
    rows = []
    for k, r in regimes().items():
        w = " + ".join(str(b) for _, b in r.parts) if r.parts else str(r.weights)
        rows.append([tr(lang, *names[k]), w, str(r.grads), f"{ADAM_MOMENTS} × {r.optimizer // ADAM_MOMENTS}",
                     f"**{r.persistent}**", str(r.low_copy), f"**{r.peak}**"])
    head = [tr(lang, "regime", "régimen"), tr(lang, "weights", "pesos"), tr(lang, "gradients", "gradientes"),
            tr(lang, "AdamW moments", "momentos AdamW"), tr(lang, "persistent", "persistente"),
            tr(lang, "16-bit copies in the step", "copias de 16 bits en el paso"), tr(lang, "peak", "pico")]
    return tr(lang, "Bytes per trainable parameter (the 16-bit copies: per weight of a linear layer).\n\n",
              "Bytes por parámetro entrenable (las copias de 16 bits: por peso de una capa lineal).\n\n") + table(head, rows)


def t_frozen(lang: str) -> str:
    bits, dq = nf4_bits(BIG), nf4_bits(BIG, double_quant=True)
    lin = linear_weight_count("llama-7b")
    rows = [["fp32", str(FP32), fixed(8 * FP32, 3), gib(FP32 * lin)],
            ["bf16 / fp16", str(BF16), fixed(8 * BF16, 3), gib(BF16 * lin)],
            [tr(lang, "fp32 under AMP (+ 16-bit copies in the step)", "fp32 con AMP (+ copias de 16 bits en el paso)"),
             f"{FP32} + {BF16}", fixed(8 * (FP32 + BF16), 3), gib((FP32 + BF16) * lin)],
            [tr(lang, "NF4, fp32 absmax per 64 (`bitsandbytes`)", "NF4, absmax fp32 cada 64 (`bitsandbytes`)"),
             fixed(bits / 8, 4), fixed(bits, 3), gib(bits / 8 * lin)],
            [tr(lang, "NF4 + double quantisation", "NF4 + doble cuantización"), fixed(dq / 8, 4), fixed(dq, 3),
             gib(dq / 8 * lin)]]
    head = [tr(lang, "frozen weights stored as", "pesos congelados guardados como"),
            tr(lang, "bytes/weight", "bytes/peso"), tr(lang, "bits/weight", "bits/peso"),
            tr(lang, f"LLaMA-7B linear layers ({num(lin)} weights)",
               f"capas lineales de LLaMA-7B ({num(lin)} pesos)")]
    return table(head, rows)


def t_attention(lang: str) -> str:
    long_b = ROBERTA_B * ROBERTA_SHORT // (ROBERTA_SHORT * ROBERTA_SCALE)
    rows = []
    for attention in ("sdpa", "eager"):
        s = roberta("amp-fp16", "full", 1, attention=attention)
        l = roberta("amp-fp16", "full", ROBERTA_SCALE, batch=long_b, attention=attention)  # noqa: E741
        name = tr(lang, "fused (SDPA)", "fusionada (SDPA)") if attention == "sdpa" else tr(lang, "eager", "explícita (eager)")
        for shape, t in ((f"{ROBERTA_B} × {ROBERTA_SHORT}", s), (f"{long_b} × {ROBERTA_SHORT * ROBERTA_SCALE}", l)):
            rows.append([name, shape, gib(t["phases"]["forward"]["buckets"]["activations"]), gib(t["peak"])])
    head = [tr(lang, "attention", "atención"), "$B \\times T$", tr(lang, "activations (end of forward)",
            "activaciones (fin del forward)"), tr(lang, "peak", "pico")]
    return table(head, rows)


def t_zero(lang: str) -> str:
    N, G = n_params("llama-7b"), ZERO_GPUS
    w, g, k = FP16, FP16, FP32 + ADAM_MOMENTS * FP32      # ZeRO's 2 + 2 + K, K = 12
    stages = [(0, w + g + k), (1, w + g + k / G), (2, w + (g + k) / G), (3, (w + g + k) / G)]
    names = {0: tr(lang, "no sharding (DDP)", "sin partición (DDP)"),
             1: tr(lang, "ZeRO-1: optimizer state", "ZeRO-1: estado del optimizador"),
             2: tr(lang, "ZeRO-2: + gradients", "ZeRO-2: + gradientes"),
             3: tr(lang, "ZeRO-3 / FSDP `FULL_SHARD`: + weights", "ZeRO-3 / FSDP `FULL_SHARD`: + pesos")}
    rows = [[names[s], fixed(b, 2), gib(b * N)] for s, b in stages]
    head = [tr(lang, "stage", "etapa"), tr(lang, "bytes/parameter per GPU", "bytes/parámetro por GPU"),
            tr(lang, "LLaMA-7B per GPU", "LLaMA-7B por GPU")]
    return table(head, rows)


def _footprint_rows(lang: str) -> list[list[str]]:
    rows = []
    for model, base in (("minigpt-85m", MINI), ("llama-7b", LLAMA)):
        for method in ("full", "lora", "qlora"):
            d, how = trace(**base, method=method, **(ADAPT if method != "full" else {})), "trace"
            rows.append([MODELS[model], tr(lang, *METHOD_TEXT[method])] + _buckets_row(d, lang)
                        + [f"**{auto(d['peak'])}**", _how(how, lang)])
    return rows


def t_footprint(lang: str) -> str:
    head = ([tr(lang, "model", "modelo"), tr(lang, "method", "método")]
            + [tr(lang, *BUCKET_SHORT[k]) for k in BUCKETS] + [tr(lang, "peak", "pico"), tr(lang, "how", "cómo")])
    return table(head, _footprint_rows(lang), "ll" + "r" * (len(BUCKETS) + 1) + "l")


def t_learner(lang: str) -> str:
    rows = []
    for p in ("fp32", "amp-fp16"):
        for s in (1, ROBERTA_SCALE):
            full, lora = roberta(p, "full", s), roberta(p, "lora", s)
            for name, t in (("full", full), ("lora", lora)):
                b = t["phases"]["forward"]["buckets"]
                rows.append([tr(lang, "fp16 (AMP)", "fp16 (AMP)") if p == "amp-fp16" else "fp32",
                             str(ROBERTA_SHORT * s), tr(lang, *{"full": ("full", "completo"), "lora": ("LoRA", "LoRA")}[name]),
                             auto(sum(t["start"][k] for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))),
                             auto(b["activations"]), auto(b["weight_copies"]), f"**{gib(t['peak'])}**"])
    head = [tr(lang, "precision", "precisión"), "$T$", tr(lang, "method", "método"),
            tr(lang, "model states", "estados del modelo"), tr(lang, "activations (end of forward)", "activaciones (fin del forward)"),
            tr(lang, "weight copies", "copias de pesos"), tr(lang, "peak", "pico")]
    return table(head, rows, "lrlrrrr")


def sharded_runs() -> dict:
    """The committed measurement of `make benchmark-sharded` (benchmarks/bench_sharded.py)."""
    from minigpt.paths import committed_results
    return committed_results("sharded_cpu.json")


def sharded_figures() -> dict[str, str]:
    """The figures of the section on measured sharded ranks (theory 03, 'What one rank really holds')."""
    from minigpt.memory.estimate.sharding import fsdp2_rows
    from minigpt.model import preset_config
    data, f = sharded_runs(), {}
    rows = {(r["mode"], r["world"], r["rank"]): r for r in data["rows"]}
    vocab = preset_config("small").vocab_size
    f["shard.vocab"] = str(vocab)
    f["shard.rows.stored"], f["shard.rows.real1"] = (str(x) for x in fsdp2_rows(vocab, 2, 1))
    opt = [rows["zero1", 2, r]["measured"]["model_state"]["optimizer"] for r in (0, 1)]
    f["shard.zero1.diff"] = num(abs(opt[0] - opt[1]))
    f["shard.ddp.bucket"] = mib(rows["ddp", 1, 0]["measured"]["model_state"]["gradients"], 2)
    f["shard.ddp.peak"] = mib(rows["ddp", 1, 0]["measured"]["peak"], 2)
    fs1, fs2 = rows["fsdp2", 1, 0]["measured"]["peak"], rows["fsdp2", 2, 0]["measured"]["peak"]
    f["shard.fsdp2.peak1"], f["shard.fsdp2.peak2"] = mib(fs1, 2), mib(fs2, 2)
    f["shard.fsdp2.ratio"] = pct(fs2 / fs1, 0)
    f["shard.machine"] = f"{data['machine']}, torch {data['torch']}, {data['date']}"
    f["shard.spec"] = f"$B$ = {data['batch']}, $T$ = {data['seq']}"
    errs = [abs(r["estimated"]["peak"] - r["measured"]["peak"]) / r["measured"]["peak"] for r in data["rows"]]
    f["shard.maxerr"] = pct(max(errs), 1)
    import torch.distributed as dist
    from torch.nn.parallel import distributed as ddp
    f["ddp.bucket_cap"] = mib(ddp._DEFAULT_BUCKET_CAP_MB * 2 ** 20, 0)   # torch's own defaults
    f["ddp.first_bucket"] = mib(dist._DEFAULT_FIRST_BUCKET_BYTES, 0)
    return f


def t_sharded(lang: str) -> str:
    from minigpt.memory.buckets import fmt_error
    mode = {"ddp": ("DDP", "DDP"), "zero1": ("DDP + ZeroRedundancyOptimizer (ZeRO-1)", "DDP + ZeroRedundancyOptimizer (ZeRO-1)"),
            "fsdp2": ("FSDP2 `fully_shard` (ZeRO-3)", "FSDP2 `fully_shard` (ZeRO-3)")}
    out = []
    for r in sharded_runs()["rows"]:
        m, e = r["measured"], r["estimated"]
        out.append([tr(lang, *mode[r["mode"]]), str(r["world"]), str(r["rank"]),
                    mib(sum(m["model_state"].values()), 2), mib(sum(e["model_state"].values()), 2),
                    mib(m["peak"], 2), mib(e["peak"], 2), fmt_error(e["peak"], m["peak"])])
    head = [tr(lang, "mode", "modo"), tr(lang, "ranks", "rangos"), tr(lang, "rank", "rango"),
            tr(lang, "model states, measured", "estados del modelo, medidos"), tr(lang, "estimated", "estimados"),
            tr(lang, "peak, measured", "pico, medido"), tr(lang, "estimated", "estimado"), tr(lang, "error", "error")]
    return table(head, out, "lrrrrrrr")


@lru_cache(maxsize=None)
def polling_runs() -> dict:
    """Question 3: the learner's fp16 (AMP) full and LoRA runs at the long length, course.puzzle's
    consecutive dynamic-padding batches, replayed through the allocator model, and polled."""
    from course import puzzle
    from minigpt.memory.polling import poll, summary
    out = {}
    for m in ("full", "lora"):
        tl = puzzle.polling_run("amp-fp16", m)
        out[m] = (tl, summary(tl, poll(tl, puzzle.POLL_EVERY)))
    return out


def polling_figures() -> dict[str, str]:
    """The figures of Q3 (the learner's nvidia-smi loop, replayed) and of the public predictions table."""
    import json
    from course import puzzle
    from minigpt.memory.allocator import replay
    from minigpt.paths import ROOT
    f: dict[str, str] = {}
    runs = polling_runs()
    f["q3.steps"] = str(puzzle.POLL_STEPS)
    Ts = puzzle.polling_lengths()
    assert Ts.index(max(Ts)) > 0 and Ts[:Ts.index(max(Ts)) + 1] == sorted(Ts[:Ts.index(max(Ts)) + 1]), \
        "the lengths rise up to the longest batch (the text says so)"
    f["q3.lengths"] = ", ".join(str(t) for t in puzzle.polling_lengths())
    f["q3.every"] = num(puzzle.POLL_EVERY)
    tl_full = runs["full"][0]
    f["q3.card"] = tl_full.card.name
    f["q3.ctx"] = f"{tl_full.context[0] / 2 ** 20:.0f}–{mib(tl_full.context[1], 0)}"   # MiB, a range
    for m, (tl, s) in runs.items():
        # the sentences around these figures: each is checked here
        assert s["reserved_never_drops"] and s["last_above_every_peak"], m
        f[f"q3.{m}.peak"] = gib(s["max_step_peak"])
        f[f"q3.{m}.reserved1"] = gib(s["step_reserved"][0])
        f[f"q3.{m}.reserved"] = gib(s["max_reserved"])
        f[f"q3.{m}.last"] = f"{s['last_polled'][0] / 2 ** 30:.2f}–{gib(s['last_polled'][1])}"   # GiB, a range
        f[f"q3.{m}.over"] = pct(s["last_polled"][0] / s["max_step_peak"] - 1, 0)
        exp = replay(tl.events, "expandable_segments:True").reserved_peak
        assert exp <= 1.02 * s["max_step_peak"], "expandable segments reserve about the step peak"
        f[f"q3.{m}.expandable"] = gib(exp)
    full, lora = runs["full"][1], runs["lora"][1]
    assert lora["max_reserved"] < full["max_reserved"], "LoRA reserves less than full fine-tuning"
    assert lora["last_polled"][0] > full["max_step_peak"], "LoRA's reading is above full's allocated peak"
    gain = lambda r: r["max_reserved"] - r["max_step_peak"]   # noqa: E731 - bytes cached beyond the step's need
    assert gain(full) > gain(lora), "full fine-tuning caches more beyond its step peak than LoRA"
    assert all(r["step_reserved"][-1] == r["step_reserved"][-2] == r["max_reserved"] for r in (full, lora)), \
        "the last step (a shorter batch) reserves nothing new"
    rows = json.loads((ROOT / "docs" / "gpu-runs" / "public_predictions.json").read_text(encoding="utf-8"))["predictions"]
    f["q3.public.n"] = str(len(rows))
    nvml = [r for r in rows if r["kind"] == "nvml"]
    f["q3.public.nvml.n"] = str(len(nvml))
    assert all(r["error_percent_high"] < 0 for r in nvml), "the nvidia-smi rows are predicted below the reading"
    f["q3.public.nvml.err"] = (f"{-max(r['error_percent_high'] for r in nvml):.1f}–"
                               f"{-min(r['error_percent_low'] for r in nvml):.1f}%")   # below the reading by
    return f


def t_q3(lang: str) -> str:
    """Q3: the learner's polling loop replayed, fp16 (AMP) full and LoRA at the long length."""
    runs = {m: s for m, (_, s) in polling_runs().items()}
    ex = polling_figures()
    rows = [
        (("largest step peak: `max_memory_allocated()` after `reset_peak_memory_stats()`, per step",
          "mayor pico de un paso: `max_memory_allocated()` tras `reset_peak_memory_stats()`, por paso"),
         lambda m: gib(runs[m]["max_step_peak"])),
        (("reserved after step 1", "reservada tras el paso 1"), lambda m: gib(runs[m]["step_reserved"][0])),
        (("`max_memory_reserved()` over the run", "`max_memory_reserved()` en toda la ejecución"),
         lambda m: gib(runs[m]["max_reserved"])),
        (("last nvidia-smi reading (modelled: reserved + context)", "última lectura de nvidia-smi (modelada: reservada + contexto)"),
         lambda m: f"**{ex[f'q3.{m}.last']}**"),
        (("last reading above the largest step peak", "última lectura por encima del mayor pico de un paso"),
         lambda m: ex[f"q3.{m}.over"]),
        (("`max_memory_reserved()` with `expandable_segments:True`", "`max_memory_reserved()` con `expandable_segments:True`"),
         lambda m: ex[f"q3.{m}.expandable"]),
    ]
    head = [tr(lang, "replayed, fp16 (AMP), long inputs", "reproducido, fp16 (AMP), entradas largas"),
            tr(lang, "full", "completo"), "LoRA"]
    return table(head, [[tr(lang, *name), get("full"), get("lora")] for name, get in rows], "lrr")


def grid_runs() -> dict:
    """The committed measurement of `make benchmark-grid` (benchmarks/bench_forum_grid.py)."""
    from .. import puzzle
    return puzzle.measured_grid()


def grid_bug_run() -> dict:
    """The first run of `make benchmark-grid`, whose bf16 runs trained on stale autocast copies."""
    from minigpt.paths import committed_results
    return committed_results("forum_grid_one_autocast_context.json")


GRID_ORDER = [(p, s, m) for p in ("fp32", "amp-bf16") for s in (1, 8) for m in ("full", "lora")]


def _cell(d: dict, precision: str, method: str, scale: int) -> dict:
    from .. import puzzle
    return puzzle.measured_cell(d, precision, method, scale)


def _states(m: dict) -> int:
    return sum(m[k] for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))


def grid_figures() -> dict[str, str]:
    """The figures of the measured MiniLM grid (theory 03, 'The learner's questions')."""
    d, f = grid_runs(), {}
    st, mach = d["settings"], d["machine"]
    f["grid.machine"] = (f"{mach['cpu']}, {mach['cores']} cores, torch {d['versions']['torch']}, "
                         f"{d['date_utc'][:10]}")
    f["grid.train"], f["grid.test"], f["grid.batch"] = num(st["train_reviews"]), num(st["test_reviews"]), str(st["batch_size"])
    f["grid.steps"] = str(_cell(d, "fp32", "full", 1)["steps"])
    f["grid.train_batch"] = str(st["train_batch_size"])
    f["grid.T1"] = str(d["inputs"]["x1"]["memory_batch_tokens"])
    f["grid.T8"] = str(d["inputs"]["x8"]["memory_batch_tokens"])
    f["grid.cut"] = num(sum(d["inputs"]["x8"][s]["rows_cut"] for s in ("train", "test")))
    f["grid.maxpos"] = str(st["max_positions"])
    f["grid.majority"] = pct(d["baseline"]["majority"], 1)
    accs = {p: [c["accuracy"] for c in d["cells"].values() if c["precision"] == p] for p in ("fp32", "amp-bf16")}
    # the prose says every run learned: make the generator fail if that changes
    assert all(min(a) > d["baseline"]["majority"] + 0.1 for a in accs.values()), accs
    for p, key in (("fp32", "fp32"), ("amp-bf16", "bf16")):
        f[f"grid.acc.{key}.min"], f[f"grid.acc.{key}.max"] = pct(min(accs[p]), 1), pct(max(accs[p]), 1)
    # the first run of the grid, kept as the record of its training-loop bug (one autocast context)
    bug = grid_bug_run()
    bug_bf16 = [c for c in bug["cells"].values() if c["precision"] == "amp-bf16"]
    assert max(c["accuracy"] for c in bug_bf16) < bug["baseline"]["majority"], bug_bf16
    f["grid.bug.date"] = bug["date_utc"][:10]
    f["grid.bug.loss.moved"] = f"{max(abs(c['first_loss'] - c['last_loss_mean5']) for c in bug_bf16):.3f}"
    f["grid.bug.acc.max"] = pct(max(c["accuracy"] for c in bug_bf16), 1)
    errs = [abs(c["memory"]["estimate_error"]) for c in d["cells"].values()]
    f["grid.maxerr"] = pct(max(errs), 1)
    ratios = {(p, s): _cell(d, p, "lora", s)["memory"]["peak"] / _cell(d, p, "full", s)["memory"]["peak"]
              for p, s, m in GRID_ORDER if m == "full"}
    for (p, s), r in ratios.items():
        f[f"grid.ratio.{p}.x{s}"] = pct(r, 0)
    for p, s, m in GRID_ORDER:
        f[f"grid.peak.{p}.{m}.x{s}"] = auto(_cell(d, p, m, s)["memory"]["peak"])
    a1, a8 = (_cell(d, "fp32", "lora", s)["memory"]["activations"] for s in (1, 8))
    f["grid.act.growth"] = times(a8 / a1, 1)
    f["grid.T.growth"] = times(d["inputs"]["x8"]["memory_batch_tokens"] / d["inputs"]["x1"]["memory_batch_tokens"], 1)
    for s in (1, 8):
        f[f"grid.bf16.saving.full.x{s}"] = pct(1 - _cell(d, "amp-bf16", "full", s)["memory"]["peak"]
                                               / _cell(d, "fp32", "full", s)["memory"]["peak"], 0)
    f["grid.copies.lora.x1"] = auto(_cell(d, "amp-bf16", "lora", 1)["memory"]["weight_copies"])
    f.update(minilm_memory_figures())
    return f


def minilm_memory_figures() -> dict[str, str]:
    """What LoRA and QLoRA save in the committed MiniLM runs (theory 02's table, quoted in theory 03)."""
    from .theory02 import minilm_runs
    d = minilm_runs()
    peak = {k: v["memory"]["peak"] for k, v in d["methods"].items()}
    mb = d["settings"]["memory_batch"]
    return {"minilm.shape": f"$B$ = {mb['batch_size']}, $T$ = {mb['tokens']}",
            "minilm.lora.vs.full": pct(peak["lora"] / peak["full"], 0),
            "minilm.qlora.vs.lora": pct(peak["qlora"] / peak["lora"], 0)}


def t_grid(lang: str) -> str:
    """The measured MiniLM grid beside course/puzzle.py's RoBERTa-base traces of the learner's runs."""
    from minigpt.memory.buckets import fmt_error
    d = grid_runs()
    prec = {"fp32": ("fp32", "fp32"), "amp-bf16": ("bf16 autocast", "autocast bf16")}
    rows = []
    for p, s, meth in GRID_ORDER:
        c = _cell(d, p, meth, s)
        m, rb = c["memory"], c["roberta_base"]
        rows.append([tr(lang, *prec[p]), f"{s}×, $T$ = {c['tokens']}", tr(lang, *METHOD_TEXT[meth]),
                     auto(_states(m)), auto(m["activations"]), auto(m["weight_copies"]), f"**{auto(m['peak'])}**",
                     f"{auto(m['estimated_peak'])} ({fmt_error(m['estimated_peak'], m['peak'])})",
                     pct(c["accuracy"], 1), fixed(c["seconds_per_step"], 2), gib(rb["peak"])])
    head = [tr(lang, "precision", "precisión"), tr(lang, "inputs", "entradas"), tr(lang, "method", "método"),
            tr(lang, "model states", "estados del modelo"), tr(lang, "activations", "activaciones"),
            tr(lang, "weight copies", "copias de pesos"), tr(lang, "peak (tracked)", "pico (rastreado)"),
            tr(lang, "estimated (error)", "estimado (error)"), tr(lang, "test accuracy", "exactitud en test"),
            tr(lang, "s/step", "s/paso"),
            tr(lang, "RoBERTa-base, learner's run (traced)", "RoBERTa-base, ejecución del estudiante (trazada)")]
    return table(head, rows, "lll" + "r" * 8)


TABLES = {"table.q3": t_q3, "table.grid": t_grid, "table.sharded": t_sharded, "table.buckets": t_buckets, "table.regimes": t_regimes, "table.frozen": t_frozen,
          "table.attention": t_attention, "table.zero": t_zero, "table.footprint": t_footprint,
          "table.learner": t_learner}
