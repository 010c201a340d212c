"""The figures and the table of theory/04-alignment-survey.md: model states of SFT, DPO and PPO."""
from __future__ import annotations

from .facts import BF16, alignment_bytes, n_lora, n_params, regimes
from .fmt import gib, table, tr


def figures() -> dict[str, str]:
    """The inline figures of theory file 04 (estimated from the counts: no trace)."""
    return {f"align.{k}.gib": gib(v) for k, v in alignment_bytes().items()}


def t_alignment(lang: str) -> str:
    N = n_params("llama-7b")
    nl = n_lora("llama-7b", "all", 16)
    amp = regimes()["amp"]
    T, F = amp.persistent * N, BF16 * N            # a trained copy, a frozen bf16 copy
    A = amp.persistent * nl                        # one adapter with its grads and moments
    rows_spec = [  # (method, setup, trained copies, frozen copies, adapters, bytes)
        ("SFT", tr(lang, "full", "completo"), 1, 0, 0),
        ("SFT", "LoRA", 0, 1, 1),
        ("DPO", tr(lang, "full", "completo"), 1, 1, 0),
        ("DPO", tr(lang, "LoRA (reference = adapters off)", "LoRA (referencia = adaptadores desactivados)"), 0, 1, 1),
        ("RLHF (PPO)", tr(lang, "full", "completo"), 2, 2, 0),
        ("RLHF (PPO)", tr(lang, "LoRA (policy: adapter on the SFT base; value: adapter on the reward base)",
                          "LoRA (política: adaptador sobre la base SFT; valor: adaptador sobre la base de recompensa)"),
         0, 2, 2),
        # the other end: reward and value models negligible next to the policy (InstructGPT: 6B vs 175B)
        ("RLHF (PPO)", tr(lang, "full; reward and value models negligible", "completo; modelos de recompensa y valor despreciables"),
         1, 1, 0),
    ]
    rows = [[m, s, str(t), str(fz), str(a), gib(t * T + fz * F + a * A)] for m, s, t, fz, a in rows_spec]
    head = [tr(lang, "method", "método"), tr(lang, "setup", "montaje"), tr(lang, "trained copies", "copias entrenadas"),
            tr(lang, "frozen bf16 copies", "copias bf16 congeladas"), tr(lang, "adapters", "adaptadores"),
            tr(lang, "model states (estimated)", "estados del modelo (estimado)")]
    return table(head, rows, "llrrrr")


TABLES = {"table.alignment": t_alignment}
