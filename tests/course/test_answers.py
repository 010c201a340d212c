"""Truth rule 1 for the reference answers: every number an answer quotes was printed by its notebook.

A reference answer (a markdown cell starting ``<!-- ANSWER: id -->``) may quote a decimal number
only if the same text appears in the stored outputs of that notebook, or if it is listed in
DERIVED below with where it comes from. When outputs are stored again on another machine and a
printed digit moves, this test names the answer to update.
"""
from __future__ import annotations

import json
import re

import pytest

from minigpt.paths import ROOT  # noqa: E402
SOLUTIONS = sorted(ROOT.glob("solutions/[0-9][0-9]-*.ipynb"))
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)+")

# Numbers an answer may quote that no cell prints verbatim: each with the printed figure it is read from.
DERIVED = {
    "02-finetune-full-vs-lora.ipynb": {
        "22.6": "the full model's 22,566,146 trainable parameters, printed by the first cells (22.6 M)",
        "1.2": "the benchmark's full accuracy minus LoRA's, both printed (78.1% - 76.9%)",
    },
    "04-nf4-and-qlora.ipynb": {
        "7.8": "32 / 4.127, the fp32 bits over NF4's bits per weight, both printed",
        "0.127": "NF4+DQ's 4.127 bits per weight minus the 4 bits of the codes",
    },
}


def outputs(nb: dict) -> str:
    text = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            text.append("".join(o.get("text", "")))
            text.append("".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def answers(nb: dict) -> list[tuple[str, str]]:
    found = []
    for c in nb["cells"]:
        s = "".join(c["source"])
        if c["cell_type"] == "markdown" and s.startswith("<!-- ANSWER:"):
            found.append((s.split()[2], s))
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_number_in_a_reference_answer_was_printed(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    printed, derived = outputs(nb), DERIVED.get(path.name, {})
    missing = [f"{aid}: {n}" for aid, text in answers(nb) for n in sorted(set(NUMBER.findall(text)))
               if n not in printed and n not in derived]
    assert not missing, (f"{path.name}: these answers quote numbers no stored output prints (update the answer "
                         f"to the printed figure, or list it in DERIVED with its source): {missing}")


def test_derived_numbers_are_still_quoted():
    """An entry of DERIVED that no answer quotes any more is stale."""
    for name, numbers in DERIVED.items():
        nb = json.loads((ROOT / "solutions" / name).read_text(encoding="utf-8"))
        quoted = {n for _, text in answers(nb) for n in NUMBER.findall(text)}
        assert set(numbers) <= quoted, f"{name}: DERIVED lists {sorted(set(numbers) - quoted)}, no answer quotes them"
