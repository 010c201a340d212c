"""The forum's grid on a model that was trained: MiniLM, full vs LoRA x fp32 vs bf16 autocast x inputs 1x / 8x.

A learner fine-tuned RoBERTa-base on SST-2 with fp16 or fp32, full fine-tuning or LoRA, and inputs of
normal length or every input repeated 8 times, at one batch size (theory 03, lab 05). Here the same
grid runs for real on the CPU with the course's MiniLM classifier on Rotten Tomatoes (SST-2's source):

    precision  fp32, or amp-bf16 (torch.autocast on the CPU: fp32 weights, bf16 matmuls; a GPU
               would use fp16, which CPU autocast does not speed up)
    method     full, or lora (minigpt.lora, r=8 on query and value, head trained: finetune.LORA)
    scale      1 (the review as it is) or 8 (the review written 8 times, joined by spaces, cut at
               MiniLM's 512 positions; the JSON says how many rows the cap shortened)

Per setting: the tracked memory of one training step by bucket (minigpt.memory.measure_step, the
live-tensor tracker) on the first batch of training reviews, the estimator's prediction for the same
step and its error, and a real training run (one epoch over a subset of the training reviews, AdamW,
the learning rates of minigpt.finetune) scored on a fixed subset of the test split, with the time per
step. Beside each cell: the RoBERTa-base trace of course/puzzle.py for the learner's own setting
(fp16 AMP for amp-bf16; simulated CUDA on fake tensors, an estimate-like trace, not a measurement).
Results go to benchmarks/results/forum_grid.json and .csv, with the command, machine, versions, date.

    python benchmarks/bench_forum_grid.py [--train 32] [--test 64] [--batch 16] [--train-batch 4]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # nothing is downloaded, ever
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_minilm import timed_run  # noqa: E402

from course import puzzle  # noqa: E402
from minigpt.classify import accuracy, train_classifier  # noqa: E402
from minigpt.classify_memory import (GRID_METHODS, GRID_PRECISIONS, GRID_SCALES, MAX_POSITIONS,  # noqa: E402
                                     bucket_row, grid_estimate, grid_memory, scaled_reviews)
from minigpt.data import majority_baseline, rotten_tomatoes  # noqa: E402
from minigpt.encoder import load_tokenizer  # noqa: E402
from minigpt.finetune import LEARNING_RATES, LORA, build_classifier  # noqa: E402
from minigpt.hf_data import review_loader  # noqa: E402
from minigpt.lora import trainable_parameters  # noqa: E402
from minigpt.memory import BUCKETS, fmt_bytes  # noqa: E402
from minigpt.repro import set_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def key(precision: str, method: str, scale: int) -> str:
    return f"{precision}/{method}/x{scale}"


def roberta_cell(precision: str, method: str, scale: int) -> dict:
    """course/puzzle.py's trace of the learner's RoBERTa-base run in the same cell of the grid."""
    p = puzzle.MINILM_PRECISION[precision]        # the learner's precision on a GPU for ours on the CPU
    t = puzzle.trace(puzzle.spec(p, method, scale))
    return {"precision": p, "batch": puzzle.BATCH, "tokens": puzzle.seq_len(scale), "peak": int(t["peak"]),
            "peak_phase": t["peak_phase"], "model_states": int(puzzle.model_states(t)),
            "forward_activations": int(puzzle.forward_activations(t)),
            "label": "traced on fake tensors with simulated CUDA semantics (course/puzzle.py), not measured"}


def run(args: argparse.Namespace, out: dict) -> dict:
    set_seed(args.seed, threads=args.threads)
    tok = load_tokenizer()
    test_reviews = rotten_tomatoes("test")[:args.test]
    out |= {"settings": {"train_reviews": args.train, "test_reviews": args.test, "epochs": 1,
                         "batch_size": args.batch, "train_batch_size": args.train_batch, "seed": args.seed, "max_positions": MAX_POSITIONS,
                         "train_subset": f"the first {args.train} reviews of the train split",
                         "test_subset": f"the first {args.test} reviews of the test split",
                         "memory_batch": f"the first {args.batch} training reviews, padded to their longest row",
                         "sizes_why": "chosen so that the script runs in about 25 min on 2 shared cores (CPU pressure ~99% from other jobs): at 8x every "
                                      "step costs about ten times a 1x step",
                         "lora": {"r": LORA.r, "alpha": LORA.alpha, "dropout": LORA.dropout,
                                  "targets": list(LORA.targets)},
                         "learning_rates": args.lrs,
                         "repeat": "review written `scale` times, joined by single spaces (minigpt.classify_memory.repeat_text)",
                         "precisions": {"fp32": "no autocast", "amp-bf16": "torch.autocast('cpu', torch.bfloat16), fp32 weights"}},
           "baseline": {"majority": majority_baseline(test_reviews)}, "inputs": {}, "cells": {}}
    for scale in args.scales:
        train_ds, train_info = scaled_reviews("train", args.train, scale, tok)
        test_ds, test_info = scaled_reviews("test", args.test, scale, tok)
        mem_batch = next(iter(review_loader(train_ds, tok, batch_size=args.batch)))
        seq = int(mem_batch["input_ids"].shape[1])
        lens = [len(x) for x in train_ds["input_ids"]]
        out["inputs"][f"x{scale}"] = {"memory_batch_tokens": seq, "train": train_info, "test": test_info,
                                      "train_mean_tokens": sum(lens) / len(lens)}
        for precision in args.precisions:
            for method in args.methods:
                k = key(precision, method, scale)
                report = grid_memory(method, mem_batch, precision, args.seed)
                est = grid_estimate(method, args.batch, seq, precision)
                cell = {"precision": precision, "method": method, "scale": scale, "tokens": seq,
                        "memory": bucket_row(report, est), "peak_phase": report.peak_phase,
                        "memory_label": report.label,
                        "estimate_buckets": {b: int(v) for b, v in est.to_dict().items() if b in BUCKETS},
                        "roberta_base": roberta_cell(precision, method, scale)}
                set_seed(args.seed)
                model = build_classifier(method, args.seed)
                cell["trainable_params"], cell["params"] = trainable_parameters(model)
                batches = review_loader(train_ds, tok, batch_size=args.train_batch, shuffle=True, seed=args.seed)
                # autocast per forward inside train_classifier: one context around the whole loop
                # would cache the first step's bf16 weights for every later forward (the first run
                # of this grid did, and its bf16 runs did not learn)
                res = train_classifier(model, batches, lr=args.lrs[method], epochs=1, desc=k,
                                       progress=False, precision=precision)
                t0 = time.perf_counter()
                acc = accuracy(model, review_loader(test_ds, tok, batch_size=64), precision=precision)
                cell |= {"accuracy": acc, "train_seconds": res.seconds, "steps": res.steps,
                         "seconds_per_step": res.seconds / res.steps, "eval_seconds": time.perf_counter() - t0,
                         "first_loss": res.losses[0], "last_loss_mean5": sum(res.losses[-5:]) / len(res.losses[-5:])}
                out["cells"][k] = cell
                write(out, args.out)
                m = cell["memory"]
                print(f"{k:<20} T={seq:<4} peak {fmt_bytes(m['peak'])} (estimate {fmt_bytes(m['estimated_peak'])}, "
                      f"{100 * m['estimate_error']:+.1f}%)  acc {acc:.3f}  {cell['seconds_per_step']:.2f} s/step  "
                      f"RoBERTa-base {fmt_bytes(cell['roberta_base']['peak'])}", flush=True)
                del model
    return out


def refresh_estimates(results: dict) -> dict:
    """Today's estimator beside the stored measurements (nothing is trained or measured again)."""
    batch = results["settings"]["batch_size"]
    for cell in results["cells"].values():
        est = grid_estimate(cell["method"], batch, cell["tokens"], cell["precision"])
        peak, measured = int(est.to_dict()["peak"]), cell["memory"]["peak"]
        cell["memory"].update(estimated_peak=peak, estimate_error=(peak - measured) / measured)
        cell["estimate_buckets"] = {b: int(v) for b, v in est.to_dict().items() if b in BUCKETS}
    results["estimates_refreshed"] = {
        "command": "python benchmarks/bench_forum_grid.py --refresh-estimates",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return results


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    cols = ["precision", "method", "scale", "tokens", *BUCKETS, "peak", "estimated_peak", "estimate_error",
            "accuracy", "trainable_params", "seconds_per_step", "roberta_base_peak"]
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for c in results["cells"].values():
            flat = {**c, **c["memory"], "roberta_base_peak": c["roberta_base"]["peak"]}
            w.writerow([round(v, 4) if isinstance(v, float) else v for v in (flat.get(k) for k in cols)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=320, help="training reviews (the first n of the train split)")
    p.add_argument("--test", type=int, default=256, help="test reviews scored (the first n of the test split)")
    p.add_argument("--batch", type=int, default=16, help="rows of the tracked step (the same in every setting)")
    p.add_argument("--train-batch", type=int, default=16,
                   help="rows per training step (small: the 8x inputs make every step ~10x slower on a CPU)")
    p.add_argument("--lr", nargs="+", default=["full=3e-4", "lora=5e-3"], metavar="METHOD=LR",
                   help="learning rates (minigpt.finetune's are for ~100+ steps; this budget has a few dozen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scales", type=int, nargs="+", default=list(GRID_SCALES))
    p.add_argument("--precisions", nargs="+", default=list(GRID_PRECISIONS), choices=GRID_PRECISIONS)
    p.add_argument("--methods", nargs="+", default=list(GRID_METHODS), choices=GRID_METHODS)
    p.add_argument("--out", type=Path, default=RESULTS / "forum_grid", help="results stem (.json and .csv)")
    p.add_argument("--refresh-estimates", action="store_true",
                   help="recompute only the estimator's columns of the stored results with today's estimator and exit")
    args = p.parse_args()
    if args.refresh_estimates:
        write(refresh_estimates(json.loads(args.out.with_suffix(".json").read_text())), args.out)
        return
    for name in ("train", "test", "batch", "train_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    try:
        args.lrs = {**{m: LEARNING_RATES[m] for m in GRID_METHODS}, **{k: float(v) for k, v in (x.split("=") for x in args.lr)}}
    except ValueError:
        raise SystemExit(f"--lr takes METHOD=RATE pairs such as full=3e-4 lora=5e-3, got {args.lr}.") from None
    if set(args.lrs) - set(GRID_METHODS):
        raise SystemExit(f"--lr: methods are {', '.join(GRID_METHODS)}, got {args.lr}.")
    if any(s < 1 for s in args.scales):
        raise SystemExit(f"--scales must be positive integers, got {args.scales}.")
    results = timed_run(run, args)
    write(results, args.out)
    print(f"-> {args.out.with_suffix('.json')} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
