"""From-scratch code against the libraries, on the same inputs, in one run (``make benchmark``).

    NF4 quantise   a 4096 x 4096 float32 weight     minigpt.nf4   vs bitsandbytes (CPU)
    NF4 dequantise the same weight                  minigpt.nf4   vs bitsandbytes' native CPU
                                                    kernel, and vs our previous code (kept below)
    QLoRA step     MiniLM, batch of 16 reviews      build_classifier("qlora") vs ("lora")
    LoRA fwd+bwd   768 -> 768 layer, r=8,           minigpt.lora  vs peft
                   a batch of 8 x 512 tokens

Every comparison is a race: the contenders run alternately (the order rotates every repeat), so
they see the same machine load, after a warm-up; each round gives the median of ``--repeats``
runs, and the reported ratio is the median over ``--rounds`` rounds. ``speed = library time /
our time``: 1.00x means as fast as the library, 0.50x half as fast. Results are checked to be
equal first (bit for bit for NF4), so we never time a wrong answer. A breakdown shows where the
dequantisation spends its time, and a floor race what torch's gather costs on its own (no scale). Targets (issue 19): dequantise >= 0.8x bitsandbytes (aim 1.0x),
a QLoRA step <= 1.3x the LoRA step, LoRA >= 1.0x peft. Results go to
benchmarks/results/speed_cpu.json with the command, the machine, its load, the versions and the date.

    python benchmarks/bench_from_scratch.py [--repeats 10] [--rounds 5] [--steps 6]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # peft imports transformers: never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn as nn

from minigpt.lora import LoRALinear
from minigpt.nf4 import (_BYTE_TO_PAIR_WORDS, NF4Linear, NF4Tensor, _decode_levels, _quad_table,
                         _scale_blocks_, _table, dequantize_nf4, quantize_nf4)
from minigpt.repro import set_seed

RESULTS = Path(__file__).resolve().parent / "results" / "speed_cpu.json"
TARGETS = {"dequantize_vs_bitsandbytes": 0.8, "qlora_step_vs_lora": 1.3, "lora_vs_peft": 1.0}


def race_all(fns: list[Callable], repeats: int) -> list[float]:
    """Median seconds of each of fns, run in turn after one warm-up each.

    The order rotates every repeat: whichever runs after another reuses memory that one just
    freed, which can shift its time by a few percent, so each goes first equally often.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        order = list(range(len(fns)))
        order = order[i % len(fns):] + order[:i % len(fns)]
        for k in order:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def race(ours: Callable, theirs: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of ours() and theirs(), run alternately after one warm-up each."""
    t_ours, t_theirs = race_all([ours, theirs], repeats)
    return t_ours, t_theirs


def rounds_of(fns: list[Callable], repeats: int, rounds: int) -> list[list[float]]:
    """``rounds`` races of fns: per round, the median seconds of each."""
    return [race_all(fns, repeats) for _ in range(rounds)]


def median_ratio(per_round: list[list[float]], num: int, den: int) -> float:
    """Median over rounds of time[num] / time[den]."""
    return statistics.median(r[num] / r[den] for r in per_round)


def median_time(fn: Callable, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, t_ours: float, t_theirs: float, library: str) -> None:
    print(f"{name:<34} ours {1e3 * t_ours:8.1f} ms   {library} {1e3 * t_theirs:8.1f} ms   "
          f"speed {t_theirs / t_ours:5.2f}x", flush=True)


def _old_dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """minigpt.nf4.dequantize_nf4 as it was before issue 19 (float32, for the "old vs new" race):
    every byte -> int32 index -> gather of an 8-byte word of two levels -> scale in place."""
    words = _table(_BYTE_TO_PAIR_WORDS, q.packed, torch.int64)                # (256,)
    pairs = words.index_select(0, q.packed.int())          # (n_bytes,) 8-byte words = level pairs
    levels = pairs.view(torch.float32)[:q.numel]           # (2 * n_bytes,) -> (n,) float32
    return _scale_blocks_(levels, q.scales(), q.blocksize).view(q.shape)


def nf4_inputs():
    """(bitsandbytes.functional, the 4096 x 4096 weight, its bitsandbytes packing and state, our NF4Tensor),
    the packings checked to be the same bytes."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a note about an optional CPU kernel
    import bitsandbytes.functional as bnbF
    w = torch.randn(4096, 4096) * 0.02
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    q = quantize_nf4(w)
    assert torch.equal(q.packed, packed.view(-1)) and torch.equal(q.absmax, state.absmax)
    return bnbF, w, packed, state, q


def bench_nf4(repeats: int, rounds: int) -> dict:
    bnbF, w, packed, state, q = nf4_inputs()
    # an even last dimension and blocksize < 2048: bitsandbytes runs its native C++ kernel
    # (cdequantize_blockwise_cpu_nf4_fp32), not its torch.compile'd fallback; we never compile
    assert w.shape[-1] % 2 == 0 and state.blocksize < 2048
    theirs = lambda: bnbF.dequantize_4bit(packed, state)  # noqa: E731
    expected = theirs()
    assert torch.equal(dequantize_nf4(q), expected) and torch.equal(_old_dequantize_nf4(q), expected)

    t = race(lambda: quantize_nf4(w), lambda: bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4"), repeats)
    report("NF4 quantise   4096x4096 fp32", *t, "bitsandbytes")
    # The race at the course's thread count (set_seed: 2), then on one thread: bitsandbytes' kernel
    # is one OpenMP loop, ours three torch ops (index, gather, scale), each a parallel region that
    # waits for both threads: on a machine shared with other jobs that wait is what 2 threads cost.
    races = {}
    threads = torch.get_num_threads()
    for n in dict.fromkeys((threads, 1)):
        torch.set_num_threads(n)
        per_round = rounds_of([lambda: dequantize_nf4(q), lambda: _old_dequantize_nf4(q), theirs], repeats, rounds)
        new, old, bnb = (statistics.median(r[k] for r in per_round) for k in range(3))
        vs_bnb, old_vs_bnb, vs_old = (median_ratio(per_round, a, b) for a, b in ((2, 0), (2, 1), (1, 0)))
        print(f"{f'NF4 dequantise 4096x4096, {n} thr':<34} new {1e3 * new:6.1f} ms   old {1e3 * old:6.1f} ms   "
              f"bitsandbytes {1e3 * bnb:6.1f} ms", flush=True)
        print(f"    speed vs bitsandbytes {vs_bnb:4.2f}x (old code {old_vs_bnb:4.2f}x), new vs old {vs_old:4.2f}x; "
              f"rounds: " + ", ".join(f"{r[2] / r[0]:.2f}x" for r in per_round), flush=True)
        races[f"{n}_threads"] = {"seconds": {"new": new, "old": old, "bitsandbytes": bnb},
                                 "speed_vs_bitsandbytes": vs_bnb, "speed_vs_bitsandbytes_old_code": old_vs_bnb,
                                 "new_vs_old_speedup": vs_old,
                                 "speed_vs_bitsandbytes_per_round": [r[2] / r[0] for r in per_round]}
    torch.set_num_threads(threads)

    # where the time goes: the steps of each path (_decode_levels), beside a bare 64 MiB allocation
    words = torch.tensor(_BYTE_TO_PAIR_WORDS)
    lo, hi = words.view(1, 256, 1).expand(256, 256, 1), words.view(256, 1, 1).expand(256, 256, 1)
    quads = torch.cat([lo, hi], dim=2).view(65536, 2).view(torch.complex128).view(65536)
    idx8, idx16 = q.packed.int(), q.packed.view(torch.uint16).int()
    levels = _decode_levels(q.packed)
    steps = {
        "new: uint16 pairs -> int32 indices": lambda: q.packed.view(torch.uint16).int(),
        "new: gather 4 levels per index": lambda: quads.index_select(0, idx16),
        "new: build the 65,536-row table (once)": lambda: torch.cat([lo, hi], dim=2),
        "old: uint8 codes -> int32 indices": lambda: q.packed.int(),
        "old: gather 2 levels per index": lambda: words.index_select(0, idx8),
        "both: scale by block absmax (in place)": lambda: _scale_blocks_(levels, q.absmax, 64),
        "allocate + fill a 64 MiB tensor": lambda: torch.empty(4096 * 4096).fill_(1.0),
    }
    breakdown = {}
    for what, fn in steps.items():
        breakdown[what] = median_time(fn, repeats)
        print(f"    {what:<40} {1e3 * breakdown[what]:7.1f} ms", flush=True)
    return {"shape": [4096, 4096], "blocksize": 64, "bitsandbytes_path": "native CPU kernel",
            "course_threads": threads, "races": races, "breakdown_seconds": breakdown}


def dequantize_race(repeats: int, rounds: int) -> dict:
    """The dequantisation race alone, at the current thread count: seconds and speed vs bitsandbytes."""
    bnbF, _, packed, state, q = nf4_inputs()
    theirs = lambda: bnbF.dequantize_4bit(packed, state)  # noqa: E731
    assert torch.equal(dequantize_nf4(q), theirs())
    per_round = rounds_of([lambda: dequantize_nf4(q), theirs], repeats, rounds)
    return {"threads": torch.get_num_threads(),
            "seconds": {"ours": statistics.median(r[0] for r in per_round),
                        "bitsandbytes": statistics.median(r[1] for r in per_round)},
            "speed_vs_bitsandbytes": median_ratio(per_round, 1, 0)}


def floor_race(repeats: int, rounds: int) -> dict:
    """Our decode beside the least any decode built on torch's gather can cost, raced with bitsandbytes.

    "gather alone" is our own threaded decode (minigpt/nf4_threads.py: the same index conversion, the
    same slices, the same fresh output) with the scale pass left out, so its values are wrong and
    never used; "fresh fill" allocates the 64 MiB output and fills it, the page faults every contender
    pays. A decode also has to scale, so if the gather alone is near 0.8x of bitsandbytes, no decode
    made of torch ops reaches the target. Reported, not a target.
    """
    from minigpt.nf4_threads import decode_on_threads
    bnbF, _, packed, state, q = nf4_inputs()
    table = _quad_table(_table(_BYTE_TO_PAIR_WORDS, q.packed, torch.int64))   # (65536,) 4 levels a row
    threads = torch.get_num_threads()

    def gather_alone():
        index = q.packed.view(torch.uint16).int()
        return decode_on_threads(table, index, q.scales(), q.blocksize, lambda *_: None, threads)

    fns = {"ours": lambda: dequantize_nf4(q), "gather alone": gather_alone,
           "fresh fill": lambda: torch.empty(q.numel).fill_(1.0),
           "bitsandbytes": lambda: bnbF.dequantize_4bit(packed, state)}
    per_round = rounds_of(list(fns.values()), repeats, rounds)
    res = {"threads": threads,
           "seconds": {k: statistics.median(r[i] for r in per_round) for i, k in enumerate(fns)},
           "speed_vs_bitsandbytes": {k: median_ratio(per_round, 3, i) for i, k in enumerate(fns) if i < 3},
           "speed_vs_bitsandbytes_per_round": {k: [r[3] / r[i] for r in per_round] for i, k in enumerate(fns) if i < 3}}
    print(f"{'  floor: gather alone, no scale':<34} " + "   ".join(
        f"{k} {1e3 * res['seconds'][k]:5.1f} ms" for k in fns) + "   speed vs bitsandbytes: " + ", ".join(
        f"{k} {v:4.2f}x" for k, v in res["speed_vs_bitsandbytes"].items()), flush=True)
    return res


def huge_pages_race(repeats: int, rounds: int) -> dict:
    """The same race in a child process where torch backs every allocation of 2 MiB or more with
    transparent huge pages (THP_MEM_ALLOC_ENABLE=1, torch's own switch), for both contenders: most of a
    fresh 64 MiB output's cost is its 16,384 page faults of 4 KiB, which this takes away from both, so
    what is left compares the decode kernels themselves. Reported, not a target."""
    import subprocess
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"}
    r = subprocess.run([sys.executable, __file__, "--dequantize-race-json", "--repeats", str(repeats),
                        "--rounds", str(rounds)], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    res["transparent_hugepage"] = thp.read_text().strip() if thp.exists() else "not available"
    print(f"{'  same race, huge pages for both':<34} ours {1e3 * res['seconds']['ours']:6.1f} ms   bitsandbytes "
          f"{1e3 * res['seconds']['bitsandbytes']:6.1f} ms   speed {res['speed_vs_bitsandbytes']:4.2f}x "
          f"(THP {res['transparent_hugepage']})", flush=True)
    return res


def bench_qlora_step(steps: int, rounds: int) -> dict:
    """One AdamW step of MiniLM (batch of the first 16 training reviews), QLoRA vs LoRA, raced."""
    from minigpt.encoder import load_tokenizer
    from minigpt.finetune import LEARNING_RATES, build_classifier
    from minigpt.hf_data import review_loader, reviews_dataset, tokenize

    tok = load_tokenizer()
    batch = next(iter(review_loader(tokenize(reviews_dataset("train", n=16), tok), tok, batch_size=16)))
    models = {m: build_classifier(m, seed=0) for m in ("lora", "qlora")}

    def step(method: str) -> Callable:
        model = models[method]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATES[method])

        def run():
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    per_round = rounds_of([step("qlora"), step("lora")], steps, rounds)
    qlora, lora = (statistics.median(r[k] for r in per_round) for k in range(2))
    ratio = median_ratio(per_round, 0, 1)
    # what the NF4 base adds: every NF4Linear decodes its weight in forward and again in backward
    layers = [m for m in models["qlora"].modules() if isinstance(m, NF4Linear)]
    decode = 2 * sum(median_time(layer.dequantize, 5) for layer in layers)
    tokens = int(batch["input_ids"].numel())
    print(f"{'MiniLM step, batch 16 (' + str(tokens) + ' tok)':<34} qlora {qlora:6.2f} s   lora {lora:6.2f} s   "
          f"qlora / lora {ratio:4.2f}x (target <= {TARGETS['qlora_step_vs_lora']}x); rounds: "
          + ", ".join(f"{r[0] / r[1]:.2f}x" for r in per_round), flush=True)
    print(f"    {len(layers)} NF4 layers decoded twice per step: {decode:.3f} s", flush=True)
    return {"batch_size": 16, "tokens": tokens, "seconds_per_step": {"qlora": qlora, "lora": lora},
            "qlora_over_lora": ratio, "qlora_over_lora_per_round": [r[0] / r[1] for r in per_round],
            "nf4_layers": len(layers), "decode_seconds_per_step": decode}


def bench_lora(repeats: int, rounds: int) -> dict:
    from peft import LoraConfig, get_peft_model

    d, r, alpha = 768, 8, 16
    base = nn.Sequential()
    base.add_module("proj", nn.Linear(d, d))
    ours = LoRALinear(base.proj, r=r, alpha=alpha)
    theirs = get_peft_model(nn.Sequential(base.proj), LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"]))
    peft_layer = theirs.base_model.model[0]
    with torch.no_grad():   # the same A and a nonzero B in both
        ours.B.normal_(std=0.02)
        peft_layer.lora_A["default"].weight.copy_(ours.A)
        peft_layer.lora_B["default"].weight.copy_(ours.B)
    x = torch.randn(8, 512, d, requires_grad=True)   # activations of a previous layer

    def step(layer: nn.Module) -> Callable:
        def run():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).square().mean().backward()
        return run

    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    per_round = rounds_of([step(ours), step(theirs)], repeats, rounds)
    t = tuple(statistics.median(x[k] for x in per_round) for k in range(2))
    ratio = median_ratio(per_round, 1, 0)
    print(f"{f'LoRA fwd+bwd {d}x{d} r={r}, 8x512 tok':<34} ours {1e3 * t[0]:8.1f} ms   peft {1e3 * t[1]:8.1f} ms   "
          f"speed {ratio:5.2f}x; rounds: " + ", ".join(f"{x[1] / x[0]:.2f}x" for x in per_round), flush=True)
    return {"seconds": {"ours": t[0], "peft": t[1]}, "speed_vs_peft": ratio,
            "speed_vs_peft_per_round": [x[1] / x[0] for x in per_round]}


def qlora_step_memory() -> dict:
    """The tracker's buckets of one QLoRA step on the same batch (minigpt.classify_memory): the NF4
    base must stay 4-bit between steps, and the decode transients show up in weight_copies."""
    from minigpt.classify_memory import step_memory
    from minigpt.encoder import load_tokenizer
    from minigpt.hf_data import review_loader, reviews_dataset, tokenize

    tok = load_tokenizer()
    batch = next(iter(review_loader(tokenize(reviews_dataset("train", n=16), tok), tok, batch_size=16)))
    rep = step_memory("qlora", batch)
    print(f"    tracked QLoRA step: peak {rep.peak / 2 ** 20:.1f} MiB (1 MiB = 2^20 bytes), weights_frozen "
          f"{rep.buckets['weights_frozen'] / 2 ** 20:.1f} MiB, weight_copies {rep.buckets['weight_copies'] / 2 ** 20:.2f} MiB",
          flush=True)
    return {"peak_bytes": int(rep.peak), "buckets_bytes": {k: int(v) for k, v in rep.buckets.items()}}


def machine() -> dict:
    names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    return {"cpu": names[0] if names else platform.processor() or "unknown", "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for dist in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per round (median)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per comparison (median of the ratios)")
    parser.add_argument("--steps", type=int, default=4, help="timed MiniLM steps per round (median)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    parser.add_argument("--dequantize-race-json", action="store_true",
                        help="only the dequantisation race at the course's threads, as JSON on stdout "
                             "(what the huge-pages run below calls in a child process)")
    args = parser.parse_args()
    for name in ("repeats", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    set_seed(0)   # also fixes 2 threads, as in the tests and the labs
    if args.dequantize_race_json:
        print(json.dumps(dequantize_race(args.repeats, args.rounds)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"median of {args.repeats} runs, median ratio of {args.rounds} rounds; "
          f"speed = library time / our time (> 1: ours is faster)", flush=True)
    out = {"command": "python benchmarks/bench_from_scratch.py " + " ".join(sys.argv[1:]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(), "load_average_at_start": list(os.getloadavg()),
           "settings": {"repeats": args.repeats, "rounds": args.rounds, "steps": args.steps}}
    out["nf4_dequantize"] = bench_nf4(args.repeats, args.rounds)
    out["nf4_dequantize"]["floor"] = floor_race(args.repeats, args.rounds)
    out["nf4_dequantize"]["huge_pages_for_both"] = huge_pages_race(args.repeats, args.rounds)
    out["qlora_step"] = bench_qlora_step(args.steps, args.rounds)
    out["qlora_step"]["memory"] = qlora_step_memory()
    out["lora_layer"] = bench_lora(args.repeats, args.rounds)
    out["load_average_at_end"] = list(os.getloadavg())
    races = out["nf4_dequantize"]["races"]
    got = {"dequantize_vs_bitsandbytes": races[f"{torch.get_num_threads()}_threads"]["speed_vs_bitsandbytes"],
           "dequantize_vs_bitsandbytes_1_thread": races["1_threads"]["speed_vs_bitsandbytes"],
           "qlora_step_vs_lora": out["qlora_step"]["qlora_over_lora"],
           "lora_vs_peft": out["lora_layer"]["speed_vs_peft"]}
    out["ratios"] = got
    out["targets"] = {f"dequantize >= 0.8x bitsandbytes ({torch.get_num_threads()} threads, the course's)":
                      got["dequantize_vs_bitsandbytes"] >= TARGETS["dequantize_vs_bitsandbytes"],
                      "dequantize >= 0.8x bitsandbytes (1 thread)":
                      got["dequantize_vs_bitsandbytes_1_thread"] >= TARGETS["dequantize_vs_bitsandbytes"],
                      "QLoRA step <= 1.3x LoRA step": got["qlora_step_vs_lora"] <= TARGETS["qlora_step_vs_lora"],
                      "LoRA layer >= 1.0x peft": got["lora_vs_peft"] >= TARGETS["lora_vs_peft"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in out["targets"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
