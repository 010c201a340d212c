"""The course's prediction of each public real-GPU measurement (docs/gpu-runs/public_measurements.json).

    python -m minigpt.memory.public_table          # recompute everything (fake traces: about a minute)
    python -m minigpt.memory.public_table --check  # recompute the closed-form rows, compare with the JSON

writes docs/gpu-runs/public_predictions.json and docs/PUBLIC_PREDICTIONS.md. For each row the course can
model, the prediction is of the *same kind* of number the source reports: ``allocated`` -> the closed-form
estimate plus the cuBLAS workspaces (device_view), ``reserved`` -> the allocator replay of the fake-tensor
trace, ``nvml`` -> that replay plus the cited CUDA context (a range). Every setup below is the source's own
(method, rank, targets, precision, batch per device, sequence, checkpointing, card); where the course has
to choose (the longest sequence of a padded batch, the attention of an older transformers), ``basis``
says so. Nothing here is fitted to the public numbers: a large error is a finding.
Units: GB = 10**9, GiB = 2**30, MiB = 2**20 bytes.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from ..paths import ROOT
from . import device_view as dv
from .estimate import RunSpec, estimate
from .gpus import gpu

SOURCE_JSON = ROOT / "docs" / "gpu-runs" / "public_measurements.json"
OUT_JSON = ROOT / "docs" / "gpu-runs" / "public_predictions.json"
OUT_MD = ROOT / "docs" / "PUBLIC_PREDICTIONS.md"
UNITS = {"GB": 10 ** 9, "GiB": 2 ** 30, "MB": 10 ** 6, "MiB": 2 ** 20}

# shapes of the models that are not zoo names, as overrides of zoo's llama-7b (their config.json fields)
MISTRAL_7B = dict(intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=32768)
LLAMA3_8B = dict(vocab_size=128256, intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=8192)
LLAMA31_8B = {**LLAMA3_8B, "max_position_embeddings": 131072}
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048)

_LIT = ("LitGPT pads each micro-batch to its longest sample, at most max_seq_length 512: the peak step is "
        "taken at seq 512; bf16-true = pure bf16 weights, adapters and AdamW state")
_LIT_LOSS = ("LitGPT computes the loss in chunks (chunked_cross_entropy); the course's HF LLaMA keeps the whole "
             "logits. litgpt/finetune/lora.py @01fe959c never resets the peak: its figure is the maximum over the "
             "whole run (checkpoint load, validation, every step), the course's is one training step")
_TT = ("torchtune recipes/configs/llama3_1/8B_{}_single_device.yaml @0031bfb0 (read): dtype bf16, "
       "enable_activation_checkpointing True, batch_size 2, AdamW fused=True; packed seq 2048")
_TT_NOT = ("torch.compile (the README's setting), fused AdamW's single-kernel step, and torchtune's chunked loss "
           "(CEWithChunkedOutputLoss; the course's HF LLaMA keeps the whole logits)")

# id -> the setup, as estimate() arguments, plus what the course decided and what it does not model
SETUPS: dict[int, dict] = {
    1: dict(args=dict(model="llama-7b", method="lora", rank=32, alpha=16, targets="q,v", precision="bf16",
                      batch=2, seq=512), gpu="a10g", basis=_LIT, unmodelled=_LIT_LOSS),
    2: dict(args=dict(model="llama-7b", method="qlora", rank=32, alpha=16, targets="q,v", precision="bf16",
                      optimizer="paged-adamw", batch=2, seq=512), gpu="a10g",
            basis=_LIT + "; bnb.nf4 base (the course's NF4 = bitsandbytes' format), PagedAdamW",
            unmodelled=_LIT_LOSS + "; paged state counted as 0 GPU bytes"),
    3: dict(args=dict(model="llama-7b", method="lora", rank=32, alpha=16, targets="q,v", precision="bf16",
                      batch=2, seq=512, **MISTRAL_7B), gpu="a10g",
            basis=_LIT + "; Mistral-7B-v0.1 = LLaMA shapes with 14336 MLP, 8 kv heads (its config.json)",
            unmodelled=_LIT_LOSS + "; sliding window (4096) has no effect at 512"),
    5: dict(args=dict(model="llama-7b", method="lora", rank=32, alpha=16, targets="q,v", precision="bf16",
                      batch=1, seq=512, **LLAMA3_8B), gpu="a10g",
            basis=_LIT + "; Meta-Llama-3-8B = LLaMA shapes with 128256 vocab, 14336 MLP, 8 kv heads",
            unmodelled=_LIT_LOSS),
    6: dict(args=dict(model="llama-7b", method="full", precision="bf16", batch=4, seq=512, **TINYLLAMA),
            gpu="a10g", basis=_LIT + "; TinyLlama-1.1B: 22 layers, 2048 wide, 4 kv heads (its config.json)",
            unmodelled=_LIT_LOSS),
    14: dict(args=dict(model="bert-large", method="full", precision="fp32", attention="eager", batch=4, seq=512),
             gpu="v100", loading="eager", trace=True,
             basis=("the page's setup (Trainer defaults: fp32, AdamW, dropout 0.1, 2 labels); eager attention: the "
                    "run is of the CUDA 11.2 / driver 460 era, before BERT got SDPA in transformers (v4.41); "
                    "CUDA 11.2 < 11.7: eager module loading, so the eager-loading contexts of sm_70"),
             unmodelled="Trainer's own tensors (loss accumulator, ...) and the allocator state of earlier steps"),
    16: dict(args=dict(model="llama-7b", method="lora", rank=8, alpha=16, targets="q,v", precision="bf16",
                       batch=2, seq=2048, checkpointing=True, **LLAMA31_8B), gpu=None, trace=True,
             basis=_TT.format("lora") + "; RTX 4090 is not in gpus.py: SDPA flash (sdpa_backend's choice on "
                                        "sm_89 for bf16, head_dim 128)", unmodelled=_TT_NOT),
    17: dict(args=dict(model="llama-7b", method="qlora", rank=8, alpha=16, targets="all-linear",
                       precision="bf16", batch=2, seq=2048, checkpointing=True, **LLAMA31_8B), gpu=None,
             basis=_TT.format("qlora") + "; targets q, k, v, output_proj and the MLP = all-linear but the head",
             unmodelled=_TT_NOT + "; torchao NF4 (same 4-bit + scale bytes assumed)",
             lower_bound="the fake-tensor trace cannot run QLoRA with pure bf16 weights (compare.measure): "
                         "the allocated estimate is a lower bound of the reserved figure"),
    19: dict(args=dict(model="llama-7b", method="lora", rank=8, alpha=16, targets="q,v", precision="bf16",
                       batch=2, seq=2048, checkpointing=True, **LLAMA31_8B), gpu=None, trace=True,
             basis=_TT.format("lora") + "; RTX A6000 is not in gpus.py: SDPA flash (sdpa_backend's choice on "
                                        "sm_86 for bf16, head_dim 128)", unmodelled=_TT_NOT),
}

_PEFT = ("the README states no batch size, sequence length, precision, optimizer or LoRA rank, and the counter "
         "is inferred")
SKIPPED: dict[int, str] = {
    4: "mistral-7b/qlora.yaml was not read: LoRA rank, targets and batch are unknown",
    7: "phi-2 (parallel attention/MLP block, partial rotary, biases) is not a zoo family, and the number of "
       "FSDP devices is not known (config: 2, machine: 4)",
    8: "gemma-2b (GeGLU, head_dim 256, multi-query, a tied 256k-vocabulary head that LoRA targets) is not a "
       "zoo family; a LLaMA-override stand-in would not be the model",
    9: _PEFT + "; T0_3B is a T5 encoder-decoder, not a zoo family",
    10: _PEFT + "; T0_3B is a T5 encoder-decoder, not a zoo family",
    11: _PEFT + "; DeepSpeed ZeRO-3 CPU offload; T5 is not a zoo family",
    12: _PEFT + "; BLOOM (ALiBi, fused qkv) is not a zoo family",
    13: _PEFT + "; mt0-xxl is a T5 encoder-decoder, not a zoo family",
    15: "8B_full_single_device.yaml @0031bfb0: PagedAdamW8bit with optimizer_in_bwd=True (each parameter's step "
        "runs in backward and frees its gradient): the estimator models the step after backward",
    18: "8B_full_single_device.yaml @0031bfb0: PagedAdamW8bit with optimizer_in_bwd=True (each parameter's step "
        "runs in backward and frees its gradient): the estimator models the step after backward",
}


def predict(row: dict, setup: dict, trace: bool = True) -> dict:
    """The prediction of one row: its kind's number (bytes, a range for nvml), its error in percent."""
    card = gpu(setup["gpu"]) if setup.get("gpu") else None
    run = RunSpec.from_kwargs(**setup["args"], gpu=card)   # the setup's fields; the rest are config overrides
    est = estimate(run)
    kind = row["kind"]
    needs_trace = kind in ("reserved", "nvml") and "lower_bound" not in setup
    events = None
    if needs_trace:
        if not trace:
            return {"id": row["id"], "traced": True, "recomputed": False}
        _, events = dv.trace(card, run)
    view = dv.view_for_estimate(est, card, events, loading=setup.get("loading", "lazy"))
    number = {"allocated": view.allocated, "reserved": view.reserved, "nvml": view.smi}[kind]
    if "lower_bound" in setup:
        number = view.allocated
    value = row["value"] * UNITS[row["unit"]]
    out = {"id": row["id"], "source": row["source"], "model": row["model"], "method": row["method"],
           "gpu": row["gpu"], "kind": kind, "published": row["value"], "unit": row["unit"],
           "published_bytes": round(value), "predicted_low": number.low, "predicted_high": number.high,
           "predicted_kind": "allocated (lower bound)" if "lower_bound" in setup else kind,
           "predicted_source": number.source, "how": number.how,
           "error_percent_low": round((number.low - value) / value * 100, 2),
           "error_percent_high": round((number.high - value) / value * 100, 2),
           "estimate_peak": est.peak, "setup": {**setup["args"], "gpu": setup.get("gpu"),
                                                "context_loading": setup.get("loading", "lazy")},
           "traced": needs_trace, "basis": setup["basis"], "not_modelled": setup["unmodelled"]}
    if "lower_bound" in setup:
        out["lower_bound"] = setup["lower_bound"]
    if "incomplete" in row:
        out["source_incomplete"] = row["incomplete"]
    return out


def table(trace: bool = True) -> dict:
    rows = json.loads(SOURCE_JSON.read_text())["rows"]
    preds, skipped = [], []
    for row in rows:
        if row["id"] in SETUPS:
            preds.append(predict(row, SETUPS[row["id"]], trace))
        else:
            skipped.append({"id": row["id"], "source": row["source"], "model": row["model"],
                            "method": row["method"], "reason": SKIPPED[row["id"]]})
    return {"about": ("The course's prediction of each public real-GPU measurement it can model, of the same "
                      "kind of number (python -m minigpt.memory.public_table). Predictions, not measurements."),
            "units": "bytes; GB = 10**9, GiB = 2**30, MiB = 2**20; error = (predicted - published) / published",
            "predictions": preds, "skipped": skipped}


def _pct(lo: float, hi: float) -> str:
    return f"{lo:+.1f}%" if lo == hi else f"{lo:+.1f}% to {hi:+.1f}%"


def markdown(t: dict) -> str:
    G = 2 ** 30
    lines = ["# The course's predictions of public real-GPU measurements", "",
             "Generated by `python -m minigpt.memory.public_table` from `docs/gpu-runs/public_measurements.json`"
             " (what others measured, docs/PUBLIC_MEASUREMENTS.md) into `docs/gpu-runs/public_predictions.json`. "
             "Each prediction is of the same kind of number as the source's: *allocated* "
             "(`max_memory_allocated`: the closed-form estimate + 2 cuBLAS workspaces), *reserved* "
             "(`max_memory_reserved`: the allocator model replaying a fake-tensor trace of the step) or "
             "*nvml* (nvidia-smi: that replay + the cited CUDA context, a range). Nothing is fitted to these "
             "rows: the errors are findings. Units: GiB = 2^30 bytes; the published value is converted "
             "exactly from its unit (GB = 10^9, GiB = 2^30, MiB = 2^20).", "",
             "| id | source | model | method | card | kind | published | = GiB | predicted GiB | source of "
             "prediction | error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in t["predictions"]:
        lo, hi = p["predicted_low"] / G, p["predicted_high"] / G
        pred = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        lines.append(f"| {p['id']} | {p['source'].split()[0]} | {p['model']} | {p['method']} | {p['gpu']} | "
                     f"{p['kind']} | {p['published']} {p['unit']} | {p['published_bytes'] / G:.2f} | {pred} | "
                     f"{p['predicted_kind']}, {p['predicted_source']} | "
                     f"{_pct(p['error_percent_low'], p['error_percent_high'])} |")
    lines += ["", "## Setups and what is not modelled", ""]
    for p in t["predictions"]:
        lines.append(f"- **{p['id']}** ({p['model']}, {p['method']}): {p['basis']}. Not modelled: "
                     f"{p['not_modelled']}." + (f" {p['lower_bound'][0].upper()}{p['lower_bound'][1:]}."
                                                if "lower_bound" in p else ""))
    lines += ["", "## Rows skipped", "", "| id | source | model | method | why |", "|---|---|---|---|---|"]
    for s in t["skipped"]:
        lines.append(f"| {s['id']} | {s['source'].split()[0]} | {s['model']} | {s['method']} | {s['reason']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigpt.memory.public_table", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="recompute the closed-form rows and compare with the JSON")
    a = p.parse_args(argv)
    if a.check:
        old = {r["id"]: r for r in json.loads(OUT_JSON.read_text())["predictions"]}
        new = [r for r in table(trace=False)["predictions"] if r.get("recomputed", True)]
        bad = [r["id"] for r in new if r != old.get(r["id"])]
        print("closed-form rows match the JSON" if not bad else f"rows differ from the JSON: {bad}")
        return 1 if bad else 0
    t = table()
    OUT_JSON.write_text(json.dumps(t, indent=1) + "\n")
    OUT_MD.write_text(markdown(t))
    print(markdown(t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
