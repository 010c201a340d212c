"""Bucket tables (simulated CUDA, fake tensors) for MiniGPT-85M and LLaMA-7B: full, LoRA, QLoRA.

    .venv/bin/python scripts/memory_tables.py            # batch 1, sequence 512, AMP bf16
    .venv/bin/python scripts/memory_tables.py --json out.json
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from minigpt.lora import apply_lora  # noqa: E402
from minigpt.memory import measure_step, zoo  # noqa: E402
from minigpt.nf4 import quantize_model  # noqa: E402


def recipe(name: str, kind: str):
    def make():
        torch.manual_seed(0)
        m = zoo.build(name, device="meta")
        if kind == "qlora":
            m = quantize_model(m, compute_dtype=torch.bfloat16)
        if kind in ("lora", "qlora"):
            m = apply_lora(m, r=8, alpha=16, targets="all-linear")
        return m
    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--precision", default="amp-bf16")
    ap.add_argument("--models", default="minigpt-85m,llama-7b")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = {}
    for name in a.models.split(","):
        batch = zoo.make_batch(name, a.batch, a.seq)
        for kind in ("full", "lora", "qlora"):
            r = measure_step(recipe(name, kind), batch, precision=a.precision, mode="fake", semantics="cuda")
            print(f"\n=== {name} {kind} (batch {a.batch}, seq {a.seq}, {a.precision}) ===")
            print(r.table())
            out[f"{name}/{kind}"] = r.to_dict()
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
