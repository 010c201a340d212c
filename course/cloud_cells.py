#!/usr/bin/env python
"""Write the cloud-GPU parts of every lab from course/cloud.py (the one place the repository URL lives).

    make cloud-cells                          rewrite solutions/ and README.md (then make generate-labs)
    python course/cloud_cells.py --check     exit 1 and say what is stale (tests/course/test_cloud.py runs it)

In each solution notebook:
* the first code cell is the bootstrap cell (``course.cloud.bootstrap_cell_source``), tagged
  ``phase28-cloud-setup``; it is inserted before the first code cell when missing;
* the first markdown cell carries the "Open in Colab" / "Open in Kaggle" line (ends with the
  ``<!-- phase28:cloud-links -->`` marker);
* every relative link to a file of the repository (``../theory/02-lora.md``) is followed by a
  twin, `` ([GitHub](https://github.com/<owner>/<repo>/blob/<branch>/theory/02-lora.md))``: a lab
  opened from Colab or Kaggle is a lone file, and a relative link there leads nowhere.
README.md gets the table of links between ``<!-- gen:cloud-links -->`` and ``<!-- /gen:cloud-links -->``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from minigpt.paths import ROOT

from course import cloud
from course.labs import render

README_START, README_END = "<!-- gen:cloud-links -->", "<!-- /gen:cloud-links -->"
# [text](../some/file) not already followed by its GitHub twin
_REL_LINK = re.compile(r"(\[[^\]]+\]\(\.\./([^)#\s]+)(#[^)\s]*)?\))(?! \(\[GitHub\]\()")


def _src(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _set_src(cell: dict, text: str) -> None:
    lines = text.splitlines(keepends=True)
    cell["source"] = lines


def twin_links(text: str) -> str:
    """Add a GitHub twin after every relative repository link of a markdown text (idempotent)."""
    return _REL_LINK.sub(lambda m: f"{m.group(1)} ([GitHub]({cloud.github_url(m.group(2))}{m.group(3) or ''}))", text)


def _strip_twins(text: str) -> str:
    return re.sub(r" \(\[GitHub\]\(https://github\.com/[^)]+\)\)", "", text)


def with_links_line(text: str, lab: str) -> str:
    """The first markdown cell's text with the links line right after its title."""
    title, *rest = [ln for ln in text.split("\n") if cloud.LINKS_MARKER not in ln]
    while rest and not rest[0].strip():
        rest.pop(0)
    return "\n".join([title, "", cloud.links_line(lab), "", *rest])


def bootstrap_cell() -> dict:
    return {"cell_type": "code", "execution_count": None, "id": "phase28-cloud-setup",
            "metadata": {"tags": [cloud.CELL_TAG]}, "outputs": [], "source": []}


def update_notebook(nb: dict, lab: str) -> dict:
    """The notebook with its bootstrap cell, links line and link twins brought up to date."""
    cells = nb["cells"]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    first = code[0] if code else len(cells)
    if not code or not _src(cells[first]).startswith(cloud.CELL_MARKER):
        cells.insert(first, bootstrap_cell())
    cell = cells[first]
    want = cloud.bootstrap_cell_source()
    if _src(cell) != want:
        _set_src(cell, want)
        cell["outputs"], cell["execution_count"] = [], None
    cell.setdefault("metadata", {}).setdefault("tags", [])
    if cloud.CELL_TAG not in cell["metadata"]["tags"]:
        cell["metadata"]["tags"].append(cloud.CELL_TAG)
    md = [c for c in cells if c["cell_type"] == "markdown"]
    if md:
        _set_src(md[0], with_links_line(_src(md[0]), lab))
    for c in md:
        _set_src(c, twin_links(_strip_twins(_src(c))))
    return nb


def readme_block(labs: list[str]) -> str:
    rows = ["| Lab | Google Colab | Kaggle |", "|---|---|---|"]
    rows += [f"| `{lab}` | [Open in Colab]({cloud.colab_url(lab)}) | [Open in Kaggle]({cloud.kaggle_url(lab)}) |"
             for lab in labs]
    note = ("The links point at `" + cloud.COURSE_REPO + "` (branch `" + cloud.COURSE_BRANCH + "`), set in "
            "`course/cloud.py`" + (": a placeholder until the course is published (see *Publishing* below)."
                                    if cloud.is_placeholder() else "."))
    return "\n".join([README_START, note, "", *rows, README_END])


def run(check: bool, root: Path = ROOT) -> list[str]:
    """Bring every solution and README.md up to date (or, with check, list what is stale)."""
    stale = []
    paths = sorted((root / "solutions").glob("[0-9][0-9]-*.ipynb"))
    for p in paths:
        old = p.read_text(encoding="utf-8")
        new = render(update_notebook(json.loads(old), p.name))
        if new != old:
            stale.append(f"{p.relative_to(root)}: its cloud cell or links differ from course/cloud.py")
            if not check:
                p.write_text(new, encoding="utf-8")
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = readme_block([p.name for p in paths])
    if README_START not in text or README_END not in text:
        stale.append(f"README.md: no {README_START} ... {README_END} block for the Colab/Kaggle links")
    else:
        head, tail = text.split(README_START, 1)
        new = head + block + tail.split(README_END, 1)[1]
        if new != text:
            stale.append("README.md: the Colab/Kaggle links differ from course/cloud.py")
            if not check:
                readme.write_text(new, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when something is stale")
    a = p.parse_args(argv)
    stale = run(a.check)
    for s in stale:
        print(s)
    if a.check:
        if stale:
            print("run `make cloud-cells` then `make generate-labs`")
        return 1 if stale else 0
    print(f"updated {len(stale)} file(s)" if stale else "everything was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
