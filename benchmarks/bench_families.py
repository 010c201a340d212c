"""Every configs/*.json at one common setting: the closed form against a fake-tensor trace, per family.

Setting: LoRA r=16 on the estimator's default targets (q,v; "all-linear" where a family has no
separate q and v layers, said in the row), AMP bf16, AdamW, batch 1 x seq 512, simulated CUDA semantics.
Encoders (BERT, RoBERTa, DistilBERT) are sequence classifiers with 2 labels, T5 its encoder under one
Linear classifier (minigpt.memory.hf_models); their heads are trained in full. For a family the closed
form does not describe, the estimator itself falls back to the fake trace: the row says so and why,
and its estimate is that trace (no error to report).

Each row: logical parameters (total, trainable), the four model-state buckets, activations at the peak,
the estimated and the traced peak (bytes) and the error. Writes benchmarks/results/families.json and
families.md (the table generated from the JSON).

    python benchmarks/bench_families.py          (make benchmark-families, ~1.5 min on 2 cores)
    python benchmarks/bench_families.py --show   (rewrite families.md from the stored JSON)
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt.memory.buckets import MODEL_STATE_BUCKETS  # noqa: E402
from minigpt.memory.compare import compare  # noqa: E402
from minigpt.memory.estimate import EstimateError, RunSpec, estimate, resolve_run_model  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "families.json"
SETTING = dict(method="lora", rank=16, precision="amp-bf16", optimizer="adamw", batch=1, seq=512,
               semantics="cuda")
TARGET_ERROR_PCT = 2.0


def _row(path: Path) -> dict:
    model = str(path.relative_to(ROOT))
    t0 = time.perf_counter()
    targets = "q,v"
    try:
        run = RunSpec.from_kwargs(model, targets=targets, **SETTING)
        m = resolve_run_model(run)
        if m.spec is None:
            estimate(run)            # surfaces a targets error before the fallback path runs
    except EstimateError:
        targets = "all-linear"       # no separate q and v layers (fused qkv, GPT-2's c_attn, ...)
        run = RunSpec.from_kwargs(model, targets=targets, **SETTING)
        m = resolve_run_model(run)
    row = {"config": model, "model_type": m.src.config.model_type, "targets": targets}
    if m.spec is None:             # the estimator's own fallback: its estimate is a fake trace
        est = estimate(run)
        row.update(fallback=True, why=m.why, traced_peak=int(est.peak), error_pct=None)
    else:
        est, rep = compare(run)
        row.update(fallback=False, why=None, traced_peak=int(rep.peak),
                   error_pct=(est.peak - rep.peak) / rep.peak * 100)
    row.update(n_params=int(est.n_params), n_trainable=int(est.n_trainable),
               model_state={k: int(est.model_state[k]) for k in MODEL_STATE_BUCKETS},
               activations_at_peak=int(est.buckets["activations"]), estimated_peak=int(est.peak),
               targets_resolved=est.config.get("targets"), seconds=round(time.perf_counter() - t0, 1))
    return row


def markdown(result: dict) -> str:
    """The table of families.json (GiB = 2**30 bytes)."""
    g = 2 ** 30
    s = result["setting"]
    lines = ["# Closed form vs fake-tensor trace per family (generated from families.json by "
             "`python benchmarks/bench_families.py --show`)", "",
             f"LoRA r={s['rank']}, {s['precision']}, {s['optimizer']}, batch {s['batch']} x seq {s['seq']}, "
             f"{s['semantics']} semantics; {result['date']}, {result['machine']['cpu']}. Sizes in GiB "
             f"(2^30 bytes); both peaks are simulated (nothing ran on a GPU).", "",
             "| config | type | LoRA on | params | trainable | weights (train/frozen) | gradients | optimizer "
             "| activations at peak | estimated peak | traced peak | error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ms = r["model_state"]
        err = f"fallback: traced ({r['why']})" if r["fallback"] else f"{r['error_pct']:+.4f}%"
        lines.append(f"| {Path(r['config']).stem} | {r['model_type']} | {r['targets_resolved']} | {r['n_params']:,} | "
                     f"{r['n_trainable']:,} | {ms['weights_trainable'] / g:.3f} / {ms['weights_frozen'] / g:.3f} | "
                     f"{ms['gradients'] / g:.3f} | {ms['optimizer'] / g:.3f} | {r['activations_at_peak'] / g:.3f} | "
                     f"{r['estimated_peak'] / g:.3f} | {r['traced_peak'] / g:.3f} | {err} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if "--show" in argv:
        OUT.with_suffix(".md").write_text(markdown(json.loads(OUT.read_text(encoding="utf-8"))), encoding="utf-8")
        return 0
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    from importlib.metadata import version
    load_before = os.getloadavg()
    rows = []
    for path in sorted((ROOT / "configs").glob("*.json")):
        rows.append(_row(path))
        r = rows[-1]
        verdict = "fallback" if r["fallback"] else f"{r['error_pct']:+.3f}%"
        print(f"{path.stem:<26} {verdict:>10}  {r['seconds']} s", flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    result = {"command": "python benchmarks/bench_families.py",
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average_before": list(load_before),
                          "load_average_after": list(os.getloadavg())},
              "versions": {p: version(p) for p in ("torch", "transformers", "peft")},
              "setting": SETTING, "target_error_pct": TARGET_ERROR_PCT, "rows": rows}
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    OUT.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    worst = max((abs(r["error_pct"]) for r in rows if not r["fallback"]), default=0.0)
    print(f"worst error {worst:.4f}% (target {TARGET_ERROR_PCT}%); wrote {OUT.relative_to(ROOT)} and .md")
    return 0 if worst <= TARGET_ERROR_PCT else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
