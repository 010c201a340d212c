"""Number formats and words of the generated figures, the same in English and Spanish.

A decimal point, and digits grouped in threes with a narrow no-break space (U+202F), as SI and the
RAE recommend, so the twins of a theory file compare mechanically.
"""
from __future__ import annotations

from typing import Optional

from minigpt.memory.buckets import BUCKETS, GB, GiB, MiB

THIN = "\u202f"  # narrow no-break space: groups digits in threes in both languages


def num(n: int) -> str:
    """An exact integer, grouped in threes: 6 738 415 616 (narrow no-break spaces)."""
    s = f"{int(n):,}"
    return s.replace(",", THIN)


def fixed(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def scaled(x: float, per: float, unit: str, digits: int) -> str:
    """``x / per`` with ``digits`` decimals and its unit after a narrow space: scaled(3 * 2**30, GiB, "GiB", 2)."""
    return f"{x / per:.{digits}f}{THIN}{unit}"


def gib(b: float, digits: int = 2) -> str:
    """Bytes in GiB (2**30 bytes)."""
    return scaled(b, GiB, "GiB", digits)


def gb(b: float, digits: int = 1) -> str:
    """Bytes in GB (10**9 bytes)."""
    return scaled(b, GB, "GB", digits)


def mib(b: float, digits: int = 1) -> str:
    """Bytes in MiB (2**20 bytes)."""
    return scaled(b, MiB, "MiB", digits)


def mb(b: float, digits: int = 1) -> str:
    """Bytes in MB (10**6 bytes)."""
    return scaled(b, 1e6, "MB", digits)


def millions(n: float, digits: int = 2) -> str:
    return scaled(n, 1e6, "M", digits)


def billions(n: float, digits: int = 2) -> str:
    return scaled(n, 1e9, "B", digits)


def auto(b: float) -> str:
    """GiB from 1 GiB up, else MiB; an empty bucket is 0, a few KiB are "< 0.1 MiB"."""
    if b == 0:
        return "0"
    if abs(b) < 0.05 * MiB:
        return f"<{THIN}0.1{THIN}MiB"
    return gib(b) if abs(b) >= GiB else mib(b)


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def times(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}×"


def table(header: list[str], rows: list[list[str]], align: Optional[str] = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one letter per column (l or r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tr(lang: str, en: str, es: str) -> str:
    """The same label in the reader's language."""
    return es if lang == "es" else en


# What the buckets hold, in both languages (the tables of theory 03).
BUCKET_TEXT = {
    "weights_trainable": ("parameters the optimizer updates", "parámetros que actualiza el optimizador"),
    "weights_frozen": ("parameters that stay fixed: a LoRA/QLoRA base, NF4 codes and scales",
                       "parámetros fijos: la base de LoRA/QLoRA, códigos y escalas NF4"),
    "weight_copies": ("casts of weights made during the step: autocast fp16/bf16 copies, dequantised NF4",
                      "conversiones de pesos hechas durante el paso: copias fp16/bf16 de autocast, NF4 decodificado"),
    "gradients": ("`.grad` of the trainable parameters", "`.grad` de los parámetros entrenables"),
    "optimizer": ("optimizer state: AdamW's two moments (and step counters)",
                  "estado del optimizador: los dos momentos de AdamW (y contadores de pasos)"),
    "activations": ("tensors autograd saved in forward for backward",
                    "tensores que autograd guarda en el forward para el backward"),
    "temporaries": ("everything else alive at that moment: inputs, outputs, workspaces",
                    "todo lo demás vivo en ese momento: entradas, salidas, espacios de trabajo"),
}


METHOD_TEXT = {"full": ("full", "completo"), "lora": ("LoRA", "LoRA"), "qlora": ("QLoRA", "QLoRA")}


BUCKET_SHORT = {"weights_trainable": ("trainable", "entrenables"), "weights_frozen": ("frozen", "congelados"),
                "weight_copies": ("copies", "copias"), "gradients": ("grads", "gradientes"),
                "optimizer": ("optimizer", "optimizador"), "activations": ("activations", "activaciones"),
                "temporaries": ("temporaries", "temporales")}


def _how(kind: str, lang: str) -> str:
    return {"trace": tr(lang, "traced (fake tensors, simulated CUDA)", "trazado (tensores falsos, CUDA simulada)"),
            "est": tr(lang, "estimated", "estimado")}[kind]


def _buckets_row(d: dict, lang: str) -> list[str]:
    return [auto(d["buckets"][k]) for k in BUCKETS]
