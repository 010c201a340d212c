"""What a person reads after grading: grade.md (the instructor's report, reference values
included), feedback.md (the learner's, in the learner's language, without reference values or
reference answers), learners/gradebook.csv (a row per learner) and the summary table.

The report's schema (grade.json), as course/grading.py and course/marks.py fill it:

* ``flags``: one line each, shown first in grade.md: files changed, a killed worker, a stale
  cache entry, and (issue 20, parts 1 and 3) a replaced ``course.checks`` function, forged or
  extra check records, a check that passed in the notebook but fails the grader's probe, an
  answer that *is* a package object, only calls one, or is the solution's code defined outside
  the notebook's cells.
* per lab, ``probe``: ``{"seed", "answered", "error"}``: the seed the grader drew the inputs from
  (so an instructor can replay them) and whether the kernel answered.
* per check: ``state`` (one of MARKS; it is "passed" only when the in-notebook check passed *and*
  the grader agrees), ``decided`` ("grader": its probe decided, "notebook": no probe, or no
  reference, so the in-notebook check did), ``grader`` (the grader's verdict in one line),
  ``notes`` (e.g. a subclass of a package class: left to the instructor) and ``counted`` (False
  for a check that is not one of the lab's, or whose records were forged: shown, never counted).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

MARKS = {"passed": "✔ passed", "wrong": "✘ wrong", "not attempted": "○ not attempted", "did not run": "— did not run"}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def _fmt_values(got: Any, values: dict[str, Any] | None) -> str:
    parts = [] if got is None else [_fmt(got)]
    parts += [f"{k}={_fmt(v)}" for k, v in (values or {}).items() if k != "error"]
    return "; ".join(parts) or "—"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_STATUS_WORDS = {"completed": "ran to the end", "kernel_died": "KERNEL DIED", "worker_died": "GRADER KILLED",
                 "notebook_timeout": "TIME LIMIT", "killed": "KILLED (time limit)",
                 "failed_to_start": "DID NOT START", "unreadable": "UNREADABLE FILE",
                 "not_started": "not started"}


def _files_line(report: dict[str, Any]) -> str:
    """Whether grading left the repository (and the learner's folder) as it found it."""
    if "repository_unchanged" not in report:     # a grade.json from before the whole-tree digest
        return f"Learner's files unchanged by grading: {'yes' if report['learner_files_unchanged'] else 'NO'}."
    if report["repository_unchanged"]:
        return "Files unchanged by grading (the whole repository tree and the learner's folder): yes."
    return (f"Files unchanged by grading (the whole repository tree and the learner's folder): **NO** — "
            f"{len(report['changed_files'])} change(s), listed under Flags.")


def render_markdown(report: dict[str, Any]) -> str:
    name = report["learner"]
    out = [f"# Grade — {name}", ""]
    prof = report["profile"]
    if "problem" in prof:
        out.append(f"Profile: not read ({prof['problem']})")
    else:
        gpu = f", {prof['gpu_memory_gib']:g} GiB GPU" if prof.get("gpu_memory_gib") else ""
        out.append(f"Profile: language {prof['language']}, hardware {prof['hardware']}{gpu}, phase {prof['phase']}.")
    s = report["settings"]
    out += [f"Graded {report['graded_at']} in {report['runtime_s']:.1f} s; kernel `{s['kernel']}`, "
            f"time limits {s['cell_timeout_s']:g} s per cell and {s['notebook_timeout_s']:g} s per notebook.",
            f"Isolation of each notebook run: a fresh kernel in a subprocess, working in a temporary copy "
            f"of learners/{name}/; {report['isolation']['how']}.",
            _files_line(report), ""]
    if report.get("flags"):
        out += ["## Flags — read these before trusting the marks", ""]
        out += [f"- **{_cell(f)}**" for f in report["flags"]] + [""]
    if report["nothing_to_grade"]:
        out += [f"**Nothing to grade:** there are no labs in labs/ and no notebooks in learners/{name}/labs/ "
                f"yet. Run `make start LEARNER={name}` once the labs exist.", ""]
        return "\n".join(out)
    out += [f"**Checks passed: {report['passed']} of {report['total']}** ({_state_counts(report)}). "
            "Written answers are not auto-graded: they are listed under each lab beside the reference answer.", "",
            "| Lab | Checks passed | Run | Runtime | Hardware path |", "|---|---|---|---|---|"]
    for lab in report["labs"]:
        run = _STATUS_WORDS.get(lab["status"], lab["status"])
        if lab["errors"]:
            run += f", {len(lab['errors'])} cell error{'s' if len(lab['errors']) > 1 else ''}"
        run += f"; {_state_counts(lab)}" if lab["total"] else ""
        out.append(f"| {lab['lab']} | {lab['passed']}/{lab['total']} | {run} "
                   f"| {lab['runtime_s']:.1f} s | {_cell(lab['hardware'] or '—')} |")
    if report["ignored_notebooks"]:
        out += ["", f"Not graded (not named like a lab, or a second copy): {', '.join(report['ignored_notebooks'])}."]
    out += ["", "What is compared: **yours** is what the check recorded in your notebook's run; "
            "**expected** is what that check compared it with in the same run (the package's reference "
            "implementation on the same inputs, or a constant in the check cell); **solution run** is the "
            "same check's record when the solution notebook ran in this grading (cached by content hash). "
            "**Grader** is what decides the mark: after the notebook ran, the grader evaluated the learner's "
            "exercise objects in the same kernel on inputs drawn from a seed the notebook never saw, and "
            "compared them with the solution's code run in the grader's own process; a check counts as "
            "passed only when the notebook's check and the grader agree. An answer that is a package object, "
            "or a function whose only work is one call to one, is flagged and not counted; subclasses and "
            "other uses of the package are left to your judgement (named in the Grader column).", ""]
    for lab in report["labs"]:
        words = _STATUS_WORDS.get(lab["status"], lab["status"])
        out += [f"## Lab {lab['lab']} — {lab['notebook'] or lab['lab_notebook'] or ''}", "",
                f"Run: {words}" + ("" if lab["message"] == words else f" — {lab['message']}") + "."]
        ref = lab["reference"]
        if ref is None:
            out.append("Solution run: none (no solution notebook, or reference runs switched off).")
        elif ref["status"] != "completed":
            out.append(f"Solution run: **{ref['status']}** — {ref['message']}; the reference column is empty "
                       f"and the list of checks may be incomplete.")
        else:
            out.append(f"Solution run: {ref['runtime_s']:.1f} s, {ref['hardware']}.")
        out += _probe_lines(lab)
        if lab["checks"]:
            out += ["", "| Check | Result | Message | Yours | Expected | Solution run | Grader |",
                    "|---|---|---|---|---|---|---|"]
            for c in lab["checks"]:
                mark = MARKS[c["state"]] + (" (asked for the formula)" if c["name"] in lab.get("hints_asked", []) else "")
                mark += "" if c.get("counted", True) else " (not counted)"
                r = c["reference"]
                ref_txt = "—" if r is None else (("" if r["passed"] else "(failed in the solution!) ")
                                                 + _fmt_values(r["got"], r["values"]))
                out.append(f"| {c['name']} | {mark} | {_cell(c['message'])} | {_cell(_fmt_values(c['got'], c['values']))} "
                           f"| {_cell(_fmt(c['expected']))} | {_cell(ref_txt)} | {_cell(_grader_txt(c))} |")
        elif lab["status"] != "not_started":
            out += ["", "No checks ran."]
        if lab["errors"]:
            out += ["", "Cells that raised an error:"]
            for e in lab["errors"]:
                kind = " (exercise cell)" if e["exercise"] else ""
                note = f" — {e['note']}" if e["note"] else ""
                out.append(f"- cell {e['cell']}{kind} `{_cell(e['first_line'])}`: {e['ename']}: {_cell(e['evalue'])}{note}")
        if lab["fallbacks"]:
            out += ["", f"Fell back to the reference implementation for: {', '.join(lab['fallbacks'])}."]
        cells = lab.get("cells") or {}
        if cells.get("changed"):
            out += ["", "Cells of the lab the learner changed (outside exercises and answers): "
                    + "; ".join(f"cell {c['cell']} `{_cell(c['first_line'])}`" for c in cells["changed"]) + "."]
        if cells.get("removed"):
            out += ["", f"Code cells of the lab the learner deleted: {cells['removed']}."]
        for a in lab["answers"]:
            out += ["", f"### Written answer `{a['id']}` (not auto-graded)", "", "Learner:", ""]
            out += _quote(a["answer"] if a["answer"] else f"*({a['note']})*")
            out += ["", "Reference:", ""]
            out += _quote(a["reference"] or "*(no reference answer in the solution)*")
        out.append("")
    return "\n".join(out)


def _grader_txt(c: dict[str, Any]) -> str:
    if "decided" not in c:                   # a grade.json from before the grader's probes
        return "—"
    said = ("" if c["decided"] == "grader" else "decided in the notebook: ") + (c.get("grader") or "")
    return "; ".join([said, *c.get("notes", [])])


def _probe_lines(lab: dict[str, Any]) -> list[str]:
    probe = lab.get("probe")
    if not probe:
        return [] if not lab["checks"] or "decided" not in lab["checks"][0] else [
            "Grader's probe: none for this lab (no solution notebook, or no probes in course/probe_table.py): "
            "every check is decided in the notebook."]
    if probe.get("answered"):
        line = f"Grader's probe: answered by the kernel (inputs from seed {probe['seed']})."
    else:
        line = f"Grader's probe: **no answer** ({probe.get('error') or 'the notebook did not run'})."
    by_notebook = [c["name"] for c in lab["checks"] if c.get("decided") == "notebook" and c.get("counted", True)]
    if by_notebook:
        line += f" Decided in the notebook (no probe or no reference): {', '.join(by_notebook)}."
    return [line]


def _quote(text: str) -> list[str]:
    return ["> " + line if line.strip() else ">" for line in text.strip().splitlines()]


def summary_table(reports: list[dict[str, Any]]) -> str:
    rows = [("Learner", "Labs", "Checks passed", "Problems", "Time")]
    for r in reports:
        problems = [f"{l['lab']}: {_STATUS_WORDS.get(l['status'], l['status'])}" for l in r["labs"]
                    if l["status"] != "completed"]
        said = "nothing to grade" if r["nothing_to_grade"] else (", ".join(problems) or "—")
        if r.get("flags"):     # grade.md lists them; the table only says that there are some
            said += f" ({len(r['flags'])} flag{'s' if len(r['flags']) > 1 else ''}, see grade.md)"
        rows.append((r["learner"], str(len(r["labs"])), f"{r['passed']}/{r['total']}", said,
                     f"{r['runtime_s']:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _state_counts(report: dict[str, Any], words: dict[str, str] | None = None) -> str:
    states = report.get("states") or {}
    words = words or {st: st for st in MARKS}
    return ", ".join(f"{words[st]} {states.get(st, 0)}" for st in MARKS if st != "passed")


FEEDBACK = {
    "en": {"title": "Feedback", "intro": "What your notebooks' checks found when your instructor graded them.",
           "total": "Checks passed: {p} of {t}", "lab": "Lab", "check": "Exercise check", "result": "Result",
           "said": "What your notebook said", "stub": "not attempted yet: its exercise cells are still the stub",
           "norun": "did not run: the notebook stopped before this check", "answers": "Written answers",
           "written": "written; your instructor reads it", "missing": "not written yet",
           "states": MARKS,
           "run": "Your notebook: {words}", "more": "In your notebook, `checks.hint(\"<check>\")` shows the "
           "formula-level hint of any check."},
    "es": {"title": "Comentarios", "intro": "Lo que encontraron las comprobaciones de tus notebooks al corregirlos.",
           "total": "Comprobaciones superadas: {p} de {t}", "lab": "Lab", "check": "Comprobación",
           "result": "Resultado", "said": "Lo que dijo tu notebook",
           "stub": "aún sin intentar: sus celdas de ejercicio siguen siendo la plantilla",
           "norun": "no se ejecutó: el notebook se detuvo antes de esta comprobación",
           "answers": "Respuestas escritas", "written": "escrita; la lee tu instructor",
           "missing": "aún sin escribir",
           "states": {"passed": "✔ superada", "wrong": "✘ incorrecta", "not attempted": "○ sin intentar",
                      "did not run": "— no se ejecutó"},
           "run": "Tu notebook: {words}", "more": "En tu notebook, `checks.hint(\"<comprobación>\")` muestra la "
           "pista con la fórmula de cualquier comprobación."},
}


def render_feedback(report: dict[str, Any]) -> str:
    """feedback.md: the learner's own results, in the learner's language; no reference value, no
    reference answer, no solution run (those stay in grade.md for the instructor)."""
    lang = report.get("profile", {}).get("language")
    w = FEEDBACK["es" if lang == "es" else "en"]
    out = [f"# {w['title']} — {report['learner']}", "", w["intro"], ""]
    if report["nothing_to_grade"]:
        return "\n".join(out + ["—", ""])
    out += [f"**{w['total'].format(p=report['passed'], t=report['total'])}** "
            f"({_state_counts(report, w['states'])}).", "", w["more"], ""]
    for lab in report["labs"]:
        out += [f"## {w['lab']} {lab['lab']}", "",
                w["run"].format(words=_STATUS_WORDS.get(lab["status"], lab["status"])) + ".", ""]
        if lab["checks"]:
            out += [f"| {w['check']} | {w['result']} | {w['said']} |", "|---|---|---|"]
            for c in lab["checks"]:
                said = c["message"] if c.get("ran") else w["stub"] if c["state"] == "not attempted" else w["norun"]
                out.append(f"| {c['name']} | {w['states'][c['state']]} | {_cell(said)} |")
        if lab["answers"]:
            out += ["", f"{w['answers']}:"] + [f"- `{a['id']}`: {w['written'] if a['answer'] else w['missing']}"
                                              for a in lab["answers"]]
        out.append("")
    return "\n".join(out)


def gradebook_csv(reports: list[dict[str, Any]]) -> str:
    """One row per learner, one column per lab check (its state), and the totals per state."""
    columns: list[str] = []
    for r in reports:
        for lab in r["labs"]:
            for c in lab["checks"]:
                col = f"{lab['lab']} {c['name']}"
                if col not in columns:
                    columns.append(col)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["learner", "passed", "total", *[st for st in MARKS if st != "passed"], *columns])
    for r in reports:
        states = {f"{lab['lab']} {c['name']}": c["state"] for lab in r["labs"] for c in lab["checks"]}
        counts = r.get("states", {})
        writer.writerow([r["learner"], r["passed"], r["total"], *[counts.get(st, 0) for st in MARKS if st != "passed"],
                         *[states.get(col, "") for col in columns]])
    return buf.getvalue()
