"""From-scratch code against the libraries, on the same inputs, in one run (``make benchmark``).

    NF4 quantise   a 4096 x 4096 float32 weight     minigpt.nf4   vs bitsandbytes (CPU)
    NF4 dequantise the same weight                  minigpt.nf4   vs bitsandbytes (CPU)
    LoRA fwd+bwd   768 -> 768 layer, r=8,           minigpt.lora  vs peft
                   a batch of 8 x 512 tokens

Each line prints the median wall time of both over several repeats (the two are run
alternately, so both see the same machine load) and ``speed = library time / our time``:
1.00x means as fast as the library, 0.50x half as fast. The results are also checked to be
equal, so we never time a wrong answer. A breakdown shows where our dequantisation spends
its time. Targets: dequantise >= 0.5x bitsandbytes, LoRA >= 1.0x peft.

    python benchmarks/bench_from_scratch.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # peft imports transformers: never touch the network
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn as nn

from minigpt.lora import LoRALinear
from minigpt.nf4 import _BYTE_TO_PAIR, _BYTE_TO_PAIR_WORDS, _scale_blocks_, dequantize_nf4, quantize_nf4
from minigpt.repro import set_seed


def race(ours: Callable, theirs: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of ours() and theirs(), run alternately after one warm-up each.

    The order flips every repeat (ours first, then theirs first): whichever runs second
    reuses memory the first just freed, which can shift its time by a few percent.
    """
    ours(), theirs()
    t_ours, t_theirs = [], []
    for i in range(repeats):
        pair = [(ours, t_ours), (theirs, t_theirs)]
        for fn, times in (pair if i % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs)


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
          f"speed {t_theirs / t_ours:5.2f}x")


def bench_nf4(repeats: int) -> None:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a note about an optional CPU kernel
    import bitsandbytes.functional as bnbF

    w = torch.randn(4096, 4096) * 0.02
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    q = quantize_nf4(w)
    assert torch.equal(q.packed, packed.view(-1)) and torch.equal(q.absmax, state.absmax)
    assert torch.equal(dequantize_nf4(q), bnbF.dequantize_4bit(packed, state))

    t = race(lambda: quantize_nf4(w), lambda: bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4"), repeats)
    report("NF4 quantise   4096x4096 fp32", *t, "bitsandbytes")
    t = race(lambda: dequantize_nf4(q), lambda: bnbF.dequantize_4bit(packed, state), repeats)
    report("NF4 dequantise 4096x4096 -> fp32", *t, "bitsandbytes")

    # where our dequantisation spends its time: the three steps of dequantize_nf4
    words = torch.tensor(_BYTE_TO_PAIR_WORDS)
    idx = q.packed.int()
    levels = words.index_select(0, idx).view(torch.float32)
    steps = {
        "uint8 codes -> int32 indices": lambda: q.packed.int(),
        "gather: byte -> pair of levels": lambda: words.index_select(0, idx),
        "  (the same from a (256, 2) table)": lambda: _BYTE_TO_PAIR.index_select(0, idx),
        "scale by block absmax (in place)": lambda: _scale_blocks_(levels, q.absmax, 64),
        "allocate + fill a 64 MiB tensor": lambda: torch.empty(4096 * 4096).fill_(1.0),
    }
    for what, fn in steps.items():
        print(f"    {what:<36} {1e3 * median_time(fn, repeats):7.1f} ms")


def bench_lora(repeats: int) -> None:
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
    t = race(step(ours), step(theirs), repeats)
    report(f"LoRA fwd+bwd {d}x{d} r={r}, 8x512 tok", *t, "peft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median)")
    args = parser.parse_args()
    set_seed(0)   # also fixes 2 threads, as in the tests and the labs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} "
          f"runs; speed = library time / our time (> 1: ours is faster)")
    bench_nf4(args.repeats)
    bench_lora(args.repeats)


if __name__ == "__main__":
    main()
