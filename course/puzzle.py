"""The fp16/LoRA puzzle of a learner (theory 03, lab 05): one definition of their experiment.

A learner fine-tuned RoBERTa-base on SST-2 with fp16 or fp32, full fine-tuning or LoRA, and inputs
of normal length or repeated 8 times, all at the same batch size, and read nvidia-smi. We trace the
same eight steps on fake tensors with simulated CUDA semantics (``course.docs.run_trace``):

    from course import puzzle
    g = puzzle.grid()                        # {(precision, method, scale): report dict}
    r = puzzle.trace(puzzle.spec("amp-fp16", "lora", 8))
    run = puzzle.run_spec("amp-fp16", "lora", 8)    # the same run for minigpt.memory's estimate / measure
    lengths = puzzle.token_lengths()         # BPE tokens per Rotten Tomatoes snippet (with <s>, </s>)

The sequence lengths come from the data: a byte-level BPE (``tokenizers``, trained here on the
training snippets, nothing downloaded) gives SST-2-like token counts; with batches of ``BATCH``
padded to their longest row, the mean padded length is ``T_SHORT`` (``padded_lengths``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch

MODEL = "roberta-base"
BATCH = 32                 # the learner's batch size, the same in every run
T_SHORT = 64               # tokens per row at input scale 1 (the mean padded length, see padded_lengths)
SCALE = 8                  # "8 x length": every input repeated 8 times
MAX_TOKENS = 512           # RoBERTa: 514 positions, 2 taken by the padding offset, so longer inputs are cut
BPE_VOCAB = 4000           # our byte-level BPE (RoBERTa's has 50 265 entries; ours is trained on 10k snippets)
LORA = dict(r=8, alpha=16, dropout=0.1, targets=("query", "value"), trainable=("classifier",))
# the same adapters as docs.TraceSpec fields (alpha = 2r there)
LORA_SPEC = dict(method="lora", r=LORA["r"], targets=LORA["targets"], trainable=LORA["trainable"],
                 dropout=LORA["dropout"])
PRECISIONS = ("fp32", "amp-fp16")
METHODS = ("full", "lora")
SCALES = (1, SCALE)


def seq_len(scale: int) -> int:
    """Tokens per row at an input scale: T_SHORT * scale, cut at RoBERTa's MAX_TOKENS."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    return min(T_SHORT * scale, MAX_TOKENS)


def spec(precision: str, method: str, scale: int = 1, *, batch: int = BATCH, attention: str = "sdpa", **extra):
    """The docs.TraceSpec of one run of the learner's grid; ``extra``: any other TraceSpec field
    (base_dtype, adapter_dtype, model_dropout, dropout, ...)."""
    from .traces import TraceSpec
    if method not in ("full", "lora", "head"):
        raise ValueError(f"method must be 'full', 'lora' or 'head', got {method!r}.")
    kw = dict(model=MODEL, batch=batch, seq=seq_len(scale), precision=precision, attention=attention)
    if method == "lora":
        kw.update(LORA_SPEC)
    if method == "head":
        kw.update(method="head", trainable=LORA["trainable"])
    kw.update(extra)
    return TraceSpec(**kw)


def run_spec(precision: str, method: str, scale: int = 1, *, batch: int = BATCH, attention: str = "sdpa"):
    """The same run as a minigpt.memory RunSpec, which estimate, measure and build_factory take:
    RoBERTa-base with its own dropout; for method "lora" the adapters of LORA (the classifier trained
    in full, as build_factory does for a classification model)."""
    from minigpt.memory.estimate import RunSpec
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}.")
    lora = dict(method="lora", rank=LORA["r"], alpha=LORA["alpha"], targets=LORA["targets"],
                lora_dropout=LORA["dropout"]) if method == "lora" else {}
    return RunSpec(model=MODEL, batch=batch, seq=seq_len(scale), precision=precision, attention=attention, **lora)


def trace(s) -> dict:
    """One step traced on fake tensors with simulated CUDA semantics (integer bytes)."""
    from .traces import run_trace
    return run_trace(s)


def grid(precisions: Sequence[str] = PRECISIONS, methods: Sequence[str] = METHODS,
         scales: Sequence[int] = SCALES) -> dict[tuple[str, str, int], dict]:
    """The learner's runs: {(precision, method, scale): trace}."""
    return {(p, m, s): trace(spec(p, m, s)) for p in precisions for m in methods for s in scales}


def model_states(t: dict) -> int:
    """Bytes of weights, gradients and optimizer state alive before the step's forward."""
    return sum(t["start"].get(k, 0) for k in ("weights_trainable", "weights_frozen", "gradients", "optimizer"))


def forward_activations(t: dict) -> int:
    """Bytes autograd holds for backward at the end of forward (the forward phase's peak)."""
    return t["phases"]["forward"]["buckets"]["activations"]


# ------------------------------------------------------------------------ SST-2-like lengths
@lru_cache(maxsize=None)
def _bpe(vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from minigpt.data import rotten_tomatoes
    tok = ByteLevelBPETokenizer()
    # deterministic: the same snippets in the same order give the same merges
    tok.train_from_iterator([r.text for r in rotten_tomatoes("train")], vocab_size=vocab_size,
                            min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    return tok


def bpe_tokenizer(vocab_size: int = BPE_VOCAB):
    """A byte-level BPE (RoBERTa's kind of tokenizer) trained on the training snippets."""
    return _bpe(vocab_size)


def token_lengths(split: str = "train", vocab_size: int = BPE_VOCAB) -> torch.Tensor:
    """Tokens per Rotten Tomatoes snippet of ``split``, with RoBERTa's <s> and </s> (int64, (N,))."""
    from minigpt.data import rotten_tomatoes
    enc = bpe_tokenizer(vocab_size).encode_batch([r.text for r in rotten_tomatoes(split)])
    return torch.tensor([len(e.ids) + 2 for e in enc])


def padded_lengths(lengths: torch.Tensor, batch_size: int = BATCH, cap: Optional[int] = MAX_TOKENS) -> torch.Tensor:
    """The padded length of each batch of consecutive rows (dynamic padding: the longest row of the
    batch), cut at ``cap``. (N,) -> (ceil(N / batch_size),)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    lengths = torch.as_tensor(lengths)
    out = torch.stack([lengths[i:i + batch_size].max() for i in range(0, lengths.numel(), batch_size)])
    return out if cap is None else out.clamp(max=cap)


def attention_scores_bytes(batch: int, heads: int, seq: int, nbytes: int) -> int:
    """Bytes of one (B, H, T, T) attention-score tensor of ``nbytes`` bytes per element."""
    return batch * heads * seq * seq * nbytes


# ------------------------------------------------------------------- what can make LoRA heavier
PRECISION_NAMES = {"fp32": "fp32", "amp-fp16": "fp16 (AMP)"}


def all_linear_name(precision: str, scale: int) -> str:
    """The name of an all-linear LoRA run in mechanism_specs()."""
    return f"{PRECISION_NAMES[precision]} LoRA all-linear, T={seq_len(scale)}"


def mechanism_specs() -> dict:
    """The runs of lab 05's part 4, by name: each changes the learner's LoRA run in one place.

    * LoRA dropout off, and the classification head alone (no adapters), fp16 (AMP), long inputs;
    * adapters on every linear layer (``"all-linear"``, head trained in full), both precisions and lengths;
    * a base loaded in fp16 without autocast (measure_step's precision "fp32" means: no cast, no
      autocast, every tensor keeps the dtype the factory gave it), with peft's fp32 adapters, with
      fp16 adapters (``autocast_adapter_dtype=False``), and with fp32 adapters without dropout; next
      to pure-fp16 full fine-tuning of the same model.
    """
    L = SCALE
    out = {"fp16 LoRA, LoRA dropout 0": spec("amp-fp16", "lora", L, dropout=0.0),
           "fp16 head only (no adapters)": spec("amp-fp16", "head", L)}
    for p in PRECISIONS:
        for s in SCALES:
            out[all_linear_name(p, s)] = spec(p, "lora", s, targets="all-linear")
    out.update({
        "pure fp16 full": spec("fp16", "full", L),
        "fp16 base, fp32 adapters": spec("fp32", "lora", L, base_dtype="fp16"),
        "fp16 base, fp16 adapters": spec("fp32", "lora", L, base_dtype="fp16", adapter_dtype="base"),
        "fp16 base, fp32 adapters, dropout 0": spec("fp32", "lora", L, base_dtype="fp16", dropout=0.0),
    })
    return out


def fp32_adapter_extra_bytes(batch: int, seq: int, d_in: int, r: int, n_adapted: int) -> int:
    """Activation bytes fp32 adapters keep beyond fp16 adapters on an fp16 base, LoRA dropout on:
    per adapted layer the dropped-out input (B, T, d_in) and x A^T (B, T, r) at 4 bytes, not 2."""
    return n_adapted * (4 - 2) * batch * seq * (d_in + r)


def row(*cols, widths: tuple[int, ...] = (26, 12, 12, 12, 12, 12)) -> str:
    """One line of lab 05's fixed-width tables: the first column left-aligned, the rest right-aligned."""
    return "".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cols, widths)))


# --------------------------------------------------- Question 3: the learner's nvidia-smi polling loop
POLL_STEPS = 4             # consecutive training steps replayed, one DataLoader batch each
POLL_EVERY = 1000          # the learner's thread: one nvidia-smi reading every this many allocator events
POLL_CARD = "t4"           # the learner did not name their card; the free Colab/Kaggle one


def polling_lengths(scale: int = SCALE, steps: int = POLL_STEPS) -> list[int]:
    """The padded lengths of the first ``steps`` batches of the training snippets repeated ``scale``
    times (dynamic padding: each batch padded to its longest row, cut at MAX_TOKENS)."""
    return padded_lengths(token_lengths("train") * scale, BATCH)[:steps].tolist()


def polling_run(precision: str, method: str, scale: int = SCALE, steps: int = POLL_STEPS, card: str = POLL_CARD):
    """``steps`` consecutive steps of one run of the learner's grid, batches of ``polling_lengths``,
    traced on fake tensors (simulated CUDA) and replayed through the allocator model
    (minigpt.memory.polling.PollTimeline: allocated, reserved, nvidia-smi modelled for ``card``)."""
    from minigpt import nf4  # noqa: F401 - its code tables must be built outside FakeTensorMode
    from minigpt.memory.polling import record_steps
    from minigpt.memory.zoo import make_batch
    from minigpt.memory.compare import build_factory
    make = build_factory(spec(precision, method, scale).run_spec())
    batches = [make_batch(MODEL, BATCH, T, seed=i) for i, T in enumerate(polling_lengths(scale, steps))]
    return record_steps(make, batches, precision=precision, card=card)


# --------------------------------------------------- the same grid, trained on MiniLM (make benchmark-grid)
# our precision on the CPU -> the learner's on a GPU (CPU autocast runs bf16; the learner ran fp16)
MINILM_PRECISION = {"fp32": "fp32", "amp-bf16": "amp-fp16"}


def measured_grid() -> dict:
    """The committed results of ``make benchmark-grid`` (benchmarks/results/forum_grid.json): MiniLM
    trained for real in each of the learner's settings, one tracked step per setting, the estimate."""
    from minigpt.paths import committed_results
    return committed_results("forum_grid.json")


def measured_cell(d: dict, precision: str, method: str, scale: int) -> dict:
    """One cell of measured_grid(): precision "fp32" | "amp-bf16", method "full" | "lora", scale 1 | 8."""
    return d["cells"][f"{precision}/{method}/x{scale}"]
