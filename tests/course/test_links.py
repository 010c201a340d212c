"""Every relative link resolves from every place its file is shipped: labs/, solutions/, a
learner's copy made by `make start` (learners/<name>/labs/, two levels deeper), the theory files
in English and Spanish, and the READMEs."""
from __future__ import annotations

import json
import shutil

import pytest

from course import learner
from course.links import broken_links, relative_links
from minigpt.paths import ROOT

SHIPPED = sorted([*ROOT.glob("labs/*.ipynb"), *ROOT.glob("solutions/*.ipynb"), *ROOT.glob("solutions/*.md"),
                  *ROOT.glob("learners/*/labs/*.ipynb"), *ROOT.glob("theory/*.md"), *ROOT.glob("theory/es/*.md"),
                  *ROOT.glob("docs/*.md"), ROOT / "README.md", ROOT / "learners" / "README.md"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_where_the_file_is(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)} links to files that do not exist"


def test_the_labs_do_link_to_the_theory():
    # the test above must not pass because there is nothing to follow
    assert any("../theory/" in t for p in ROOT.glob("labs/*.ipynb") for t in relative_links(
        "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "markdown")))


def test_make_start_rewrites_the_links_of_a_learners_copy(tmp_path):
    shutil.copytree(ROOT / "labs", tmp_path / "labs")
    (tmp_path / "learners" / "TEMPLATE").mkdir(parents=True)
    shutil.copy(ROOT / "learners" / "TEMPLATE" / "profile.md", tmp_path / "learners" / "TEMPLATE")
    learner.start("ana", tmp_path)
    copies = sorted((tmp_path / "learners" / "ana" / "labs").glob("*.ipynb"))
    assert [p.name for p in copies] == sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))
    for copy in copies:
        # placed where `make start` puts it in this repository: every link lands on a real file
        assert broken_links(copy, placed_in=ROOT / "learners" / "ana" / "labs") == [], copy.name
        # and only the links changed: the cells are the lab's
        lab, mine = (json.loads(p.read_text()) for p in (ROOT / "labs" / copy.name, copy))
        assert [c["id"] for c in lab["cells"]] == [c["id"] for c in mine["cells"]]
        assert [c["source"] for c in lab["cells"] if c["cell_type"] == "code"] == \
            [c["source"] for c in mine["cells"] if c["cell_type"] == "code"]
