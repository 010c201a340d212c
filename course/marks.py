"""How a lab's marks are decided from the grader's probe (course/probes.py) and what is flagged.

``plan`` draws the seed and builds the probe cell before a learner's notebook runs; ``decide``
reads the kernel's answer beside the references this process computes from the solution, and
returns the grader's verdict per check, the flags (tampering, package objects, the solution's
code) and the notes; ``combine`` turns the notebook's state of one check and the grader's verdict
into the state that counts: a check passes only when both say so.
"""
from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checks as _checks  # noqa: F401  (loaded here: the grader's copy to compare the kernel's with)
from . import probe_kernel as pk
from . import probes as pr
from .notebooks import CHECK_CALL_RE, cell_source


@dataclass
class Plan:
    probes: dict[str, pr.Probe]
    decided_in_notebook: dict[str, str]
    seed: int = field(default_factory=pr.new_seed)
    token: str = field(default_factory=lambda: f"minigpt-probe-{secrets.token_hex(12)}:")

    @property
    def cell(self) -> tuple[str, str]:
        return pr.probe_cell(self.probes, self.seed, self.token), self.token


def plan(solution: Path | None) -> Plan | None:
    probes, by_notebook = pr.probes_for(solution)
    return Plan(probes, by_notebook) if probes or by_notebook else None


def _defined_in_text(nb: dict[str, Any] | None, name: str, fp: str | None) -> bool:
    """Whether a code cell of the notebook's file defines ``name`` with exactly this compiled code."""
    return fp is not None and any(
        pr.source_fingerprint(cell_source(c), name) == fp
        for c in (nb or {}).get("cells", []) if c.get("cell_type") == "code")


def _tamper_flags(lab: str, answer: dict[str, Any]) -> list[str]:
    mine = answer.get("check_functions")
    mine = mine if isinstance(mine, dict) else {}
    ours = pk.check_functions()
    replaced = sorted(k for k in mine if k in ours and mine[k] != ours[k])
    seen = {k.rsplit(".", 1)[0] for k in mine}      # the modules the kernel had imported
    missing = sorted(k for k in ours if k.rsplit(".", 1)[0] in seen and k not in mine)
    flags = []
    if replaced or missing:
        flags.append(f"lab {lab}: the notebook replaced {', '.join(replaced + missing)} in its kernel (the code "
                     f"there is not the package's); the marks come from the grader's probe")
    if answer.get("checks_name_is_module") is False:
        flags.append(f"lab {lab}: the notebook's `checks` is not the course.checks module")
    return flags


def _record_flags(lab: str, records: list[dict[str, Any]], learner_nb: dict[str, Any] | None,
                  cells_run: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
    """Records no check cell of the notebook made (forged): names it does not contain, or more
    records of a check than times its cells ran. Returns the flags and the names no cell checks."""
    cells = (learner_nb or {}).get("cells", [])
    in_text = {n for c in cells if c.get("cell_type") == "code" for n in CHECK_CALL_RE.findall(cell_source(c))}
    ran: Counter[str] = Counter()
    for entry in cells_run:
        idx = entry.get("index", -1)
        if 0 <= idx < len(cells):
            ran.update(set(CHECK_CALL_RE.findall(cell_source(cells[idx]))))
    made = Counter(r.get("name") for r in records if r.get("kind") == "check")
    flags, forged = [], set()
    unknown = sorted(str(n) for n in made if n not in in_text)
    if unknown:
        forged |= set(unknown)
        flags.append(f"lab {lab}: the checks file has records for {', '.join(unknown)}, which no cell of the "
                     f"notebook checks (forged records; not counted)")
    extra = sorted(f"{n} ({made[n]} records, its cells ran {ran[n]} time(s))" for n in made
                   if n in in_text and made[n] > ran[n])
    if extra:     # still the lab's checks: counted, and decided by the grader's probe
        flags.append(f"lab {lab}: more check records than check cells ran: {'; '.join(extra)} "
                     f"(records written around the checks)")
    return flags, forged


def _object_flags(lab: str, check: str, names: tuple[str, ...], answer_facts: dict[str, Any],
                  solution_prints: dict[str, str | None], learner_nb: dict[str, Any] | None
                  ) -> tuple[list[str], list[str], str | None]:
    """(flags, notes, why the answer does not count) from the facts of the learner's objects."""
    flags, notes, void = [], [], None
    for name in names:
        f = answer_facts.get(name) if isinstance(answer_facts, dict) else None
        f = f if isinstance(f, dict) else {}
        fp, where = f.get("fingerprint"), str(f.get("file") or "?")[:100]   # the kernel's words: kept short
        if f.get("is_package_object"):
            void = f"`{name}` is the package's own {str(f['is_package_object'][0])[:100]}, not the learner's code"
        elif f.get("wraps"):
            void = f"`{name}` only calls the package's {str(f['wraps'])[:100]}"
        elif fp is not None and fp == solution_prints.get(name) and not _defined_in_text(learner_nb, name, fp):
            void = f"`{name}` is the solution's code, verbatim, defined outside the notebook's cells ({where})"
        elif fp is not None and fp == solution_prints.get(name):
            notes.append(f"`{name}` compiles to exactly the solution's code")
        for base in list(f.get("package_bases") or [])[:3]:
            notes.append(f"`{name}` subclasses the package's {str(base)[:100]} (left to the instructor's judgement)")
        if void:
            flags.append(f"lab {lab} {check}: {void}; not counted")
            break
    return flags, notes, void


def decide(p: Plan, lab: str, solution_nb: dict[str, Any] | None, learner_nb: dict[str, Any] | None,
           probe: dict[str, Any] | None, records: list[dict[str, Any]], cells_run: list[dict[str, Any]],
           ran: bool) -> dict[str, Any]:
    """The grader's verdicts and the flags of one learner's lab. ``ran``: the notebook ran (a lab
    not started, or a file that cannot be read, has no kernel to ask)."""
    out: dict[str, Any] = {"verdicts": {}, "flags": [], "notes": {}, "forged": set(),
                           "probe": {"seed": p.seed, "answered": False, "error": None}}
    for check, why in p.decided_in_notebook.items():
        out["verdicts"][check] = {"decided": "notebook", "passed": False, "why": why}
    if not ran or not p.probes:
        return out
    answer = (probe or {}).get("answer")
    answer = answer if isinstance(answer, dict) else None
    out["probe"].update(answered=answer is not None,
                        error=None if answer is not None else (probe or {}).get("error", "no answer"))
    if answer is None and probe is not None:
        out["flags"].append(f"lab {lab}: the grader's probe got no answer from the kernel "
                            f"({out['probe']['error']}); the checks it decides do not count")
    refs, prints = pr.references(solution_nb, p.probes, p.seed) if solution_nb else ({}, {})
    inputs = pr.inputs_of(p.probes, p.seed)
    mine = (answer or {}).get("probes")
    mine = mine if isinstance(mine, dict) else {}
    for check, probe_spec in p.probes.items():
        try:
            v = pr.verdict(probe_spec, mine.get(check) if answer is not None else None, refs.get(check),
                           inputs[check])
        except (TypeError, AttributeError, KeyError, RecursionError):   # an answer of the wrong shape
            v = {"decided": "grader", "passed": False, "why": "the kernel's answer to the probe is malformed"}
        entry = mine.get(check)
        facts = (entry.get("facts") if isinstance(entry, dict) else None) or {}
        flags, notes, void = _object_flags(lab, check, probe_spec.obj, facts, prints, learner_nb)
        if void and v["decided"] == "grader":
            v = {"decided": "grader", "passed": False, "why": void, "flagged": True}   # flagged just below
        if probe_spec.note:
            notes.insert(0, probe_spec.note)
        out["verdicts"][check], out["notes"][check] = v, notes
        out["flags"] += flags
    if answer is not None:
        out["flags"] += _tamper_flags(lab, answer)
    flags, out["forged"] = _record_flags(lab, records, learner_nb, cells_run)
    out["flags"] += flags
    return out


def combine(lab: str, check: str, state: str, verdict: dict[str, Any] | None) -> tuple[str, str | None]:
    """The state that counts, and a flag when the notebook said passed and the grader did not."""
    if verdict is None or verdict["decided"] != "grader" or state != "passed" or verdict["passed"]:
        return state, None
    if verdict.get("flagged"):          # decide() has already flagged why it does not count
        return "wrong", None
    return "wrong", (f"lab {lab} {check}: passed in the notebook, but the grader's probe fails "
                     f"({verdict['why']})")
