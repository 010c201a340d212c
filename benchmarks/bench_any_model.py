"""The closed form against a fake-tensor trace at full size, for the configs/ families it describes.

    Mistral-7B-v0.1 (configs/mistral-7b.json), QLoRA r=16 on all linear layers, AMP bf16, batch 2 x 2048
    Mistral-7B-v0.1, full fine-tuning, AMP bf16, batch 1 x 512
    Qwen2.5-7B-Instruct (configs/qwen2.5-7b-instruct.json), QLoRA r=16 all-linear, AMP bf16, batch 1 x 1024

Each line prints the estimated and the traced peak (bytes; both under simulated CUDA semantics, nothing
runs on a GPU), the error, whether the four model-state buckets agree to the byte, and the seconds. The
tests (tests/memory/test_any_model.py) check the same at reduced depth; this is the full-size check
(about 20-40 s on 2 cores, under 0.5 GiB of RAM: fake tensors hold no data).

    python benchmarks/bench_any_model.py
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt.memory.compare import compare  # noqa: E402
from minigpt.memory.estimate.traced import measured_model_state  # noqa: E402
from minigpt.paths import ROOT  # noqa: E402

CASES = (
    ("mistral-7b", dict(method="qlora", rank=16, targets="all-linear", precision="amp-bf16", batch=2, seq=2048)),
    ("mistral-7b", dict(method="full", precision="amp-bf16", batch=1, seq=512)),
    ("qwen2.5-7b-instruct", dict(method="qlora", rank=16, targets="all-linear", precision="amp-bf16", batch=1,
                                 seq=1024)),
)


def main() -> int:
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    worst = 0.0
    for name, kw in CASES:
        t0 = time.perf_counter()
        est, rep = compare(model=str(ROOT / "configs" / f"{name}.json"), semantics="cuda", **kw)
        err = (est.peak - rep.peak) / rep.peak * 100
        worst = max(worst, abs(err))
        exact = est.model_state == measured_model_state(rep)
        print(f"{name:<20} {kw['method']:<6} B={kw['batch']} S={kw['seq']:<5} estimate {est.peak:>15,} B  "
              f"trace {rep.peak:>15,} B  error {err:+.4f}%  states exact: {exact}  "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if not exact:
            return 1
    print(f"worst peak error {worst:.4f}% (target: 2%)")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
