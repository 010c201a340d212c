"""The Rotten Tomatoes reviews the way practitioners load text: ``datasets`` and a padding collator.

The same splits as ``minigpt.data.rotten_tomatoes`` (nothing is downloaded: the rows come from the
packaged file), as a ``datasets.Dataset`` with columns ``text`` and ``label``; tokenized with
``Dataset.map`` (batched, truncating to ``max_length``); batched by a ``DataLoader`` whose
``DataCollatorWithPadding`` pads each batch to its own longest row (dynamic padding), or to a
fixed length (``pad_to``), which is what padding every example to ``max_length`` costs.

    ds = tokenize(reviews_dataset("train", n=2000), load_tokenizer())
    for batch in review_loader(ds, tokenizer, batch_size=16, shuffle=True, seed=0): ...
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .data import rotten_tomatoes

MAX_LENGTH = 128       # tokens; the longest review of any split is 78 WordPiece tokens, so nothing is cut


def reviews_dataset(split: str = "train", n: Optional[int] = None):
    """A ``datasets.Dataset`` (columns text, label; 0 = rotten, 1 = fresh) of one split, built in
    memory from ``minigpt.data.rotten_tomatoes(split)``; ``n`` keeps the first n reviews."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import Dataset
    reviews = rotten_tomatoes(split)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be a positive number of reviews, got {n!r}.")
        reviews = reviews[:n]
    return Dataset.from_dict({"text": [r.text for r in reviews], "label": [r.label for r in reviews]})


def tokenize(ds, tokenizer, max_length: int = MAX_LENGTH):
    """``ds.map`` the tokenizer over the texts (batched, truncating, no padding yet): columns
    input_ids, token_type_ids, attention_mask and label; the text column is dropped."""
    from datasets.utils import logging as ds_logging

    def encode(rows: dict) -> dict:
        return tokenizer(rows["text"], truncation=True, max_length=max_length)
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()      # a "Map" bar per call would clutter the notebooks
    try:
        # keep_in_memory: nothing is written to the datasets cache, so a lab leaves no files behind
        return ds.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True,
                      load_from_cache_file=False)
    finally:
        if bars:
            ds_logging.enable_progress_bar()


def review_loader(ds, tokenizer, batch_size: int = 16, shuffle: bool = False, seed: int = 0,
                  pad_to: Optional[int] = None) -> torch.utils.data.DataLoader:
    """Batches of a tokenized dataset as dicts of tensors (input_ids, token_type_ids,
    attention_mask, labels), padded to the longest row of each batch, or to ``pad_to`` tokens."""
    from transformers import DataCollatorWithPadding
    if pad_to is None:
        collate = DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")
    else:
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=pad_to,
                                          return_tensors="pt")
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds.with_format(None), batch_size=batch_size, shuffle=shuffle,
                                       generator=g, collate_fn=collate)


__all__ = ["MAX_LENGTH", "reviews_dataset", "tokenize", "review_loader"]
