"""Bucket tables (simulated CUDA, fake tensors) for MiniGPT-85M and LLaMA-7B: full, LoRA, QLoRA.

    .venv/bin/python scripts/memory_tables.py            # batch 1, sequence 512, AMP bf16
    .venv/bin/python scripts/memory_tables.py --json out.json
    .venv/bin/python scripts/memory_tables.py --exactness  # MLP bytes and real-vs-fake agreement
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from minigpt.memory import measure_step  # noqa: E402
from minigpt.memory.compare import measure  # noqa: E402
from minigpt.memory.estimate import RunSpec  # noqa: E402


def run_spec(name: str, kind: str, batch: int, seq: int, precision: str) -> RunSpec:
    """The run of one table: LoRA r=8, alpha=16 on every linear layer but the head (QLoRA: an NF4 base),
    simulated CUDA."""
    return RunSpec(model=name, method=kind, rank=8, alpha=16, targets="all-linear", precision=precision,
                   batch=batch, seq=seq, semantics="cuda")


def exactness() -> None:
    """The tracker's exact bytes on an MLP, and real-CPU vs fake agreement on MiniGPT and RoBERTa."""
    import torch.nn as nn

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    n = 32 * 64 + 64 + 64 * 10 + 10
    print(f"MLP 32-64-10, N = {n} parameters in 4 tensors, fp32, AdamW (bytes)")
    print(f"{'B':>3} {'weights':>9} {'4N':>9} {'grads':>9} {'adamw':>9} {'8N+16':>9} {'activ.':>8} {'256*B':>8}")
    for B in (1, 2, 4):
        r = measure_step(mlp, (torch.randn(B, 32),))
        o, f = r.phases["optimizer"]["buckets"], r.phases["forward"]["buckets"]
        print(f"{B:>3} {o['weights_trainable']:>9} {4 * n:>9} {o['gradients']:>9} {o['optimizer']:>9} "
              f"{8 * n + 16:>9} {f['activations']:>8} {256 * B:>8}")
    cases = [("minigpt tiny", "tiny", {}, 2, 64), ("minigpt small", "small", {}, 1, 128),
             ("roberta-base", "roberta-base", {}, 1, 128)]
    print("\nreal CPU vs fake tensors, same step (peak bytes; phases compared bucket by bucket)")
    for label, name, ov, B, S in cases:
        for prec, sem in (("fp32", "cpu"), ("amp-bf16", "cuda")):
            run = RunSpec(model=name, batch=B, seq=S, precision=prec, semantics=sem, overrides=ov)
            real, fake = measure(run, mode="cpu"), measure(run, mode="fake")
            same = real.peak == fake.peak and real.phases == fake.phases
            print(f"{label:14s} B={B} S={S} {prec:8s} semantics={sem:4s} real={real.peak:>13,} "
                  f"fake={fake.peak:>13,} {'identical' if same else 'DIFFERENT'}")
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--precision", default="amp-bf16")
    ap.add_argument("--models", default="minigpt-85m,llama-7b")
    ap.add_argument("--json", default=None)
    ap.add_argument("--exactness", action="store_true", help="MLP bytes and real-vs-fake agreement")
    a = ap.parse_args()
    if a.exactness:
        exactness()
        return
    out = {}
    for name in a.models.split(","):
        for kind in ("full", "lora", "qlora"):
            run = run_spec(name, kind, a.batch, a.seq, a.precision)
            r = measure(run, mode="fake")
            print(f"\n=== {run.describe()} ===")
            print(r.table())
            out[f"{name}/{kind}"] = {**r.to_dict(), "spec": run.to_dict()}
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
