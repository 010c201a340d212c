"""The theory files: every figure generated and fresh, no hand-typed numbers, English and Spanish twins
in step, glossary terms respected, drill solutions present, and the generators tied to the package."""
from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from course import docs

from minigpt.paths import ROOT  # noqa: E402
THEORY = ROOT / "theory"
EN_FILES = sorted(p.name for p in THEORY.glob("*.md") if p.name != "GLOSSARY.md")
NUMBERED = [n for n in EN_FILES if re.match(r"0\d-", n)]

# Numbers allowed in prose without being generated: each pattern says why. Everything else that
# looks like a number must sit inside a <!-- gen:... --> region.
ALLOWED = [
    (r"\b(?:2|10)\^\{?\d+\}?", "powers of two and ten in the unit definitions (GiB = 2^30 bytes)"),
    (r"\(0\d\)", "file numbers in parentheses"),
    (r"(?:=|\\neq)\s*0\b", "zero as a value in formulas (B = 0)"),
    (r"\b(?:19|20)\d\d\b", "publication years (Hu et al., 2021)"),
    (r"\b(?:Phase|Fase|phase|fase)[ -]\d+\b", "course phase numbers"),
    (r"\b(?:[Ll]abs?|[Ll]aboratorios?|[Ff]iles?|[Tt]extos?|[Ss]tep|[Pp]aso)\s+0?\d(?:\s*(?:,|and|y)\s*0?\d)*\b",
     "lab, file and step numbers of the course"),
    (r"^#+\s+0\d\b", "file number in a title"),
    (r"\b0\d\s+—", "file number before a title (links, tables)"),
    (r"^\s*\d+\.\s", "numbered list items (drills)"),
    (r"^\|\s*\d\s*\|", "step column of the course map"),
    (r"\$?\b[rα]\$?\s*=\s*\$?\d+\b|\\alpha\s*=\s*\d*r?\b|\br\s*=\s*\d+", "LoRA hyper-parameters (r=8, alpha=2r)"),
    (r"\b(?:blocks?|bloques?)\s+(?:of|de)\s+\d+\b", "block sizes of NF4 and double quantisation (hyper-parameters)"),
    (r"\b(?:4|8|16|32)(?:-bit\b|\s+bits?\b)", "bit widths of number formats (4-bit NF4, 8-bit codes, 16-bit copies)"),
    (r"\b(?:stages?|etapas?)\s+\d(?:\s*(?:,|and|y|to|a)\s*\d)*\b", "ZeRO stage numbers"),
    (r"\b1\s+(?:MiB|GiB|GB)\s*=", "unit definitions (1 GiB = 2^30 bytes)"),
    (r"[\^_]\{?\d+\}?", "exponents and subscripts in formulas"),
    (r"\bQ\d\b", "question numbers"),
    (r"^#+\s+(?:Drill solutions|Soluciones)\s+—\s+0\d\b", "file number in a solutions title"),
    (r"\b(?:Problem|Problema|drill|problema)\s+0?\d+(?:\.\d+)?\b", "problem numbers (drill 02.1)"),
    (r"\$0\$", "zero as a value in formulas"),
]
NUMBER = re.compile(r"(?<![\w.\-/\\])\d+(?:[.\u202f]\d+)*(?![\w\-])")
ANY_NUMBER = re.compile(r"\d+(?:[.\u202f]\d+)*")


def read(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def blank(m: re.Match) -> str:
    """Spaces in place of a match, newlines kept, so line numbers stay true."""
    return re.sub(r"[^\n]", " ", m.group())


def strip_generated(text: str) -> str:
    return docs.REGION.sub(blank, text)


def strip_links(text: str) -> str:
    """Remove link targets (file names such as 02-lora.md) and inline code paths."""
    return re.sub(r"\]\([^)]*\)", blank, text)


def loose_numbers(text: str) -> list[tuple[int, str]]:
    """(line number, number) of every number outside generated regions and the allowlist."""
    body = strip_links(strip_generated(text))
    for pattern, _ in ALLOWED:
        body = re.sub(pattern, blank, body, flags=re.M)
    return [(i, m.group()) for i, line in enumerate(body.splitlines(), 1) for m in NUMBER.finditer(line)]


def headings(text: str) -> Counter:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return Counter(len(m.group(1)) for m in re.finditer(r"^(#+)\s", text, re.M))


def tables(text: str) -> list[tuple[int, int]]:
    """(rows, columns) of every Markdown table, in order."""
    shapes, rows = [], []
    for line in text.splitlines() + [""]:
        if line.lstrip("> ").startswith("|"):
            rows.append(line)
        elif rows:
            shapes.append((len(rows), rows[0].count("|") - 1))
            rows = []
    return shapes


def formulas(text: str) -> Counter:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    display = re.findall(r"\$\$(.+?)\$\$", text, re.S)
    rest = re.sub(r"\$\$.+?\$\$", " ", text, flags=re.S)
    inline = re.findall(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", rest)
    return Counter(f.strip() for f in display + inline)


def numbers(text: str) -> Counter:
    return Counter(ANY_NUMBER.findall(text))


# ------------------------------------------------------------------------------- freshness
def test_every_marker_names_a_generator():
    known = set(docs.figures()) | set(docs.TABLES)
    for p in docs.doc_files():
        names = {m.group("name") for m in docs.REGION.finditer(read(p))}
        assert names <= known, f"{p.name}: unknown generated regions {sorted(names - known)}"


def test_generated_figures_are_up_to_date():
    stale = docs.check()
    assert not stale, f"stale generated figures in {stale}: run `make docs`"
    if docs.store().recomputed:
        warnings.warn(f"theory/traces.json was made by other code ({', '.join(docs.store().changed)}): "
                      f"{len(docs.store().recomputed)} traces were recomputed (same figures). "
                      f"Run `make docs` to refresh the cache.")


def test_make_docs_check_exits_zero():
    assert docs.main(["--check"]) == 0


def test_markers_are_balanced_and_not_nested():
    for p in docs.doc_files():
        text = re.sub(r"`[^`\n]*`", " ", read(p))      # markers quoted in code spans do not count
        opens, closes = text.count("<!-- gen:"), text.count("<!-- /gen -->")
        assert opens == closes == len(docs.REGION.findall(text)), f"{p.name}: unbalanced gen markers"


def test_regenerating_twice_changes_nothing():
    p = THEORY / "03-memory-footprint.md"
    once = docs.regenerate_text(read(p), "en")
    assert docs.regenerate_text(once, "en") == once


def test_hand_typed_number_is_flagged():
    text = "Full fine-tuning needs 112 GiB, see <!-- gen:amp.peak -->18<!-- /gen --> and Phase 17 (2021), r=8."
    assert [n for _, n in loose_numbers(text)] == ["112"]


# ------------------------------------------------------------------------- hand-typed numbers
@pytest.mark.parametrize("path", docs.doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_number_is_typed_by_hand(path):
    loose = loose_numbers(read(path))
    assert not loose, (f"{path.name}: numbers neither generated nor allowlisted (line, number): {loose}. "
                       f"Put them in a <!-- gen:... --> region (course/docs.py) or explain them in ALLOWED.")


# ------------------------------------------------------------------------------- the twins
@pytest.mark.parametrize("name", EN_FILES)
def test_spanish_twin_has_the_same_structure(name):
    en, es = read(THEORY / name), read(THEORY / "es" / name)
    assert headings(en) == headings(es), "headings per level differ"
    assert tables(en) == tables(es), "tables differ in number or shape"
    assert formulas(en) == formulas(es), f"formulas differ: {set(formulas(en)) ^ set(formulas(es))}"
    ne, ns = numbers(en), numbers(es)
    assert ne == ns, f"numbers differ: only EN {ne - ns}, only ES {ns - ne}"


@pytest.mark.parametrize("name", NUMBERED)
def test_each_file_opens_with_a_summary_and_ends_with_recap_drills_and_next(name):
    for lang, path in (("en", THEORY / name), ("es", THEORY / "es" / name)):
        text = read(path)
        first = [l for l in text.splitlines() if l.strip()][1]
        assert first.startswith("> 🇪🇸 **Resumen.**"), f"{path}: no Spanish summary block"
        recap, drills, nxt = (("## Recap", "## Drill problems", "Next:") if lang == "en" else
                              ("## Resumen", "## Problemas de práctica", "Siguiente:"))
        assert recap in text and drills in text, f"{path}: recap or drills missing"
        last = [l for l in text.splitlines() if l.strip()][-1]
        assert last.startswith(nxt) or last.startswith(("Back to", "Volver")), f"{path}: no link to the next file"


@pytest.mark.parametrize("name", NUMBERED)
def test_every_drill_has_a_worked_solution(name):
    text = read(THEORY / name)
    drills = text.split("## Drill problems")[1]
    n = len(re.findall(r"^\d+\.\s", drills, re.M))
    sol = ROOT / "solutions" / name.replace(".md", "-ref.md")
    assert sol.exists(), f"missing {sol.relative_to(ROOT)}"
    assert len(re.findall(r"^## Problem \d+", read(sol), re.M)) == n


def test_links_between_theory_files_resolve():
    for p in list(THEORY.glob("*.md")) + list((THEORY / "es").glob("*.md")) + list((ROOT / "solutions").glob("*-ref.md")):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", read(p)):
            assert (p.parent / target).resolve().exists(), f"{p.name} links to missing {target}"


# ------------------------------------------------------------------------------- glossary
def glossary() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in read(THEORY / "GLOSSARY.md").splitlines()[4:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("English", "---"):
            rows.append((cells[0], cells[1], [a.strip() for a in cells[2].split(",") if a.strip()]))
    return rows


def test_glossary_is_read():
    assert len(glossary()) > 20


@pytest.mark.parametrize("name", EN_FILES)
def test_spanish_files_use_the_glossary_terms(name):
    text = re.sub(r"`[^`]*`", " ", strip_generated(read(THEORY / "es" / name))).lower()
    for en, es, avoid in glossary():
        for bad in avoid:
            assert not re.search(rf"\b{re.escape(bad.lower())}\b", text), \
                f"es/{name} says {bad!r}; the glossary's term for {en!r} is {es!r}"


# ------------------------------------------------------------------------ ties to the package
def test_regime_bytes_agree_with_a_traced_step():
    """The bytes-per-parameter table against the tracker: one fake AMP step of the tiny model."""
    from minigpt.memory import measure_step
    from minigpt.model import from_preset
    from minigpt.repro import set_seed
    set_seed(0)
    idx = torch.randint(0, 79, (2, 16))
    rep = measure_step(lambda: from_preset("tiny"), (idx, idx), precision="amp-bf16", mode="fake",
                       semantics="cuda")
    amp, n = docs.regimes()["amp"], rep.n_trainable
    assert rep.start["weights_trainable"] == amp.weights * n
    assert rep.start["gradients"] == amp.grads * n
    assert rep.start["optimizer"] == amp.optimizer * n       # step counters live on the host


def test_nf4_bits_agree_with_the_quantiser():
    from minigpt.nf4 import quantize_nf4
    w = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    assert quantize_nf4(w).bits_per_weight == pytest.approx(docs.nf4_bits(w.numel()))
    assert quantize_nf4(w, double_quant=True).bits_per_weight == pytest.approx(
        docs.nf4_bits(w.numel(), double_quant=True))
    assert docs.nf4_bits(docs.BIG) == 4 + 32 / docs.NF4_BLOCK


def test_lora_counts_agree_with_the_lora_module_table():
    from minigpt.lora import n_lora_table
    names = {"MiniGPT-85M": "minigpt-85m", "RoBERTa-base": "roberta-base", "LLaMA-7B": "llama-7b"}
    for row in n_lora_table():
        m = names[row["model"]]
        assert row["qv"] == docs.n_lora(m, "qv", row["r"])
        assert row["all_linear"] == docs.n_lora(m, "all", row["r"])


def test_lora_count_matches_a_built_model():
    from minigpt.lora import apply_lora, trainable_parameters
    from minigpt.model import from_preset
    m = apply_lora(from_preset("minigpt-85m", device="meta"), 8, 16, targets=("q_proj", "v_proj"))
    assert trainable_parameters(m)[0] == docs.n_lora("minigpt-85m", "qv", 8)


def test_every_trace_used_is_listed_in_all_trace_specs():
    docs.figures()
    assert set(docs.store().used) <= {spec.key() for spec in docs.all_trace_specs()}, \
        "a trace outside all_trace_specs()"


def test_trace_cache_is_used_only_for_the_same_code(tmp_path):
    spec = docs.TraceSpec(model="tiny", batch=1, seq=8)
    fake = {"peak": 1, "buckets": {}}
    path = tmp_path / "traces.json"
    good = docs.TraceStore(path)
    good.used = {spec.key(): fake}
    good.write()
    assert docs.TraceStore(path).get(spec) == fake                  # same code: read back, not re-run
    data = path.read_text().replace(good.hash, "0" * 16)
    path.write_text(data)
    stale = docs.TraceStore(path)
    assert stale.saved == {}                                         # other code: nothing is trusted
    assert stale.get(spec)["peak"] > 1 and stale.recomputed == [spec.key()]


def test_the_claims_written_around_the_numbers_hold():
    """Sentences in file 03 that compare generated figures ("exceeds", "barely smaller", "did not
    reproduce") are only true while the traces say so: check each comparison."""
    act = lambda t: t["phases"]["forward"]["buckets"]["activations"]  # noqa: E731
    full, qv = docs.trace(**docs.MINI), docs.trace(**docs.MINI, method="lora")
    al = docs.trace(**docs.MINI, method="lora", **docs.ADAPT)
    ql = docs.trace(**docs.MINI, method="qlora", **docs.ADAPT)
    assert act(qv) < act(full) < act(al), "LoRA q,v saves activations, all-linear exceeds full"
    assert al["peak"] * 0.9 < ql["peak"] < al["peak"], "QLoRA is barely smaller than LoRA on MiniGPT-85M"
    assert ql["buckets"]["activations"] > al["buckets"]["activations"] and act(ql) > act(al), \
        "QLoRA's activations are larger than LoRA's (fp32 after each NF4 layer)"
    assert full["buckets"]["activations"] > full["peak"] / 2, "MiniGPT-85M: activations dominate the peak"
    l_full = docs.trace(**docs.LLAMA)
    assert l_full["peak_phase"] == "optimizer", "the full LLaMA-7B peak falls in the optimizer step"
    c0 = docs.trace(**docs.MINI, semantics="cpu")
    c1 = docs.trace(**docs.MINI, semantics="cpu", checkpointing=True)
    assert act(c1) < act(c0) and c1["peak"] < c0["peak"]
    # the learner's grid
    S = docs.ROBERTA_SCALE
    for p in ("fp32", "amp-fp16"):
        for s in (1, S):
            assert docs.roberta(p, "lora", s)["peak"] < docs.roberta(p, "full", s)["peak"], (p, s)
    short, long = docs.roberta("fp32", "full", 1), docs.roberta("fp32", "full", S)
    assert docs._final_grads(short) == docs._final_grads(long), "gradients do not depend on the input length"
    save = lambda s: 1 - docs.roberta("amp-fp16", "full", s)["peak"] / docs.roberta("fp32", "full", s)["peak"]  # noqa: E731
    assert save(S) > save(1), "fp16 saves more with long inputs"
    b = docs.ROBERTA_B // S
    sdpa = [act(docs.roberta("amp-fp16", "full", s, batch=bb)) for s, bb in ((1, docs.ROBERTA_B), (S, b))]
    eager = [act(docs.roberta("amp-fp16", "full", s, batch=bb, attention="eager"))
             for s, bb in ((1, docs.ROBERTA_B), (S, b))]
    assert sdpa[0] == sdpa[1], "fused attention: same tokens, same activations"
    assert eager[1] > eager[0], "eager attention: long sequences cost more at equal tokens"


def test_the_claims_of_the_drill_solutions_hold():
    """solutions/03 problem 1: LoRA over a bf16 base "just misses" a 24 GiB GPU, QLoRA fits."""
    n, nl, amp = docs.n_params("llama-13b"), docs.n_lora("llama-13b", "all", 16), docs.regimes()["amp"]
    lora = docs.BF16 * n + amp.persistent * nl
    assert docs.GPUS["24"] < lora < 1.1 * docs.GPUS["24"]
    assert "qlora: ✓" in docs.figures()["d03.1.fits"] and "full: ✗" in docs.figures()["d03.1.fits"]


def test_regime_bytes_agree_with_the_estimator():
    """The bytes-per-parameter table against minigpt.memory.estimate on LLaMA-7B (closed form)."""
    from minigpt.memory import estimate as est_mod
    if not hasattr(est_mod, "estimate"):
        pytest.skip("minigpt.memory.estimate.estimate() is not written yet")
    d = est_mod.estimate("llama-7b", method="full", precision="amp-bf16", batch=1, seq=8).to_dict()
    b = d.get("buckets", d)
    amp, n = docs.regimes()["amp"], docs.n_params("llama-7b")
    assert b["weights_trainable"] == amp.weights * n
    assert b["optimizer"] == amp.optimizer * n


@pytest.mark.parametrize("path", docs.doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_line_starts_with_an_inline_marker(path):
    """A line that starts with "<!--" opens an HTML block in Markdown (CommonMark, marked in
    JupyterLab): it would split the paragraph and skip Markdown and math on that line. Inline
    figures must sit after some text; only generated tables start a line."""
    bad = [i for i, line in enumerate(read(path).splitlines(), 1)
           if re.match(r"^[ >]*<!-- gen:(?!table\.)", line)]
    assert not bad, f"{path.name}: lines {bad} start with an inline <!-- gen: --> marker; join them to the line above"


@pytest.mark.parametrize("path", docs.doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_renders_as_a_table(path):
    """CommonMark + GFM tables (markdown-it, as JupyterLab's renderer): a generated table between its
    comment markers must still come out as an HTML table."""
    markdown_it = pytest.importorskip("markdown_it")
    src = read(path)
    separators = sum(1 for line in src.splitlines() if re.match(r"^\|( *:?-+:? *\|)+$", line.strip()))
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(src)
    assert html.count("<table>") == separators
