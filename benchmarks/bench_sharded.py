"""Per-rank memory of a sharded fine-tune, measured on CPU ranks against the estimator
(``make benchmark-sharded``; about a minute on 2 cores).

The shipped pretrained MiniGPT ``small`` (Shakespeare) is fine-tuned for 5 AdamW steps on review text,
4 sequences of 64 characters per rank, with torch.distributed's gloo backend, in each mode of
minigpt.memory.distributed (ddp, zero1, fsdp2) on 1 and 2 ranks. Every rank runs the course's tensor
tracker on steps 3 to 5 and reports the lowest of their peaks (all three are kept: gloo's background
threads sometimes release a collective's buffer late, and that step peaks higher). Beside each rank: the estimator's prediction for the same spec
(``estimate(..., gpus=G, zero=Z, sharding=..., rank_index=r)``) and the error.

Writes benchmarks/results/sharded_cpu.json (the command, machine, versions and date with the rows);
theory/03's measured table is generated from that file (course/docs/theory03.py).

    python benchmarks/bench_sharded.py [--out benchmarks/results/sharded_cpu.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from minigpt.memory.buckets import fmt_error
from minigpt.memory.distributed import MODES, estimate_rank, rank_model_state, run_sharded

MODEL, BATCH, SEQ, STEPS = "pretrained", 4, 64, 3
OUT = Path(__file__).resolve().parent / "results" / "sharded_cpu.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rows(worlds=(1, 2)) -> list[dict]:
    out = []
    for mode in MODES:
        for world in worlds:
            for r in run_sharded(MODEL, mode, world=world, batch=BATCH, seq=SEQ, steps=STEPS):
                est = estimate_rank(mode, MODEL, world, r.rank, BATCH, SEQ)
                out.append(dict(mode=mode, world=world, rank=r.rank,
                                measured=dict(model_state=r.model_state, peak=r.peak, peak_phase=r.peak_phase,
                                              peak_buckets=r.peak_buckets, peaks=r.peaks, losses=r.losses),
                                estimated=dict(model_state=rank_model_state(est),
                                               peak=est.peak, peak_phase=est.peak_phase,
                                               communication=est.communication)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    data = dict(command="python benchmarks/bench_sharded.py", model="small (pretrained checkpoint)",
                batch=BATCH, seq=SEQ, steps=STEPS, optimizer="AdamW (foreach=False), fp32", backend="gloo (CPU)",
                machine=f"{cpu_name()}, {os.cpu_count()} logical CPUs", torch=torch.__version__,
                python=platform.python_version(), date=dt.date.today().isoformat(), rows=rows())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{'mode':<6}{'ranks':>6}{'rank':>5}{'states measured':>17}{'estimated':>12}"
          f"{'peak measured':>15}{'estimated':>12}{'error':>8}")
    for row in data["rows"]:
        m, e = row["measured"], row["estimated"]
        ms, es = sum(m["model_state"].values()), sum(e["model_state"].values())
        print(f"{row['mode']:<6}{row['world']:>6}{row['rank']:>5}{ms:>17,}{es:>12,}{m['peak']:>15,}"
              f"{e['peak']:>12,}{fmt_error(e['peak'], m['peak']):>8}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
