"""Model states: the bytes of weights, gradients and optimizer state per method, precision and optimizer
(NF4 bytes from minigpt.nf4, bitsandbytes' 8-bit and paged optimizers), sharded by ZeRO stage."""
from __future__ import annotations
from dataclasses import dataclass, field
from typing import Optional
from ...nf4 import BLOCKSIZE as NF4_BLOCK, nf4_nbytes
from .spec import BNB_8BIT_BLOCK, BNB_MIN_8BIT_SIZE, BNB_PAGED_MIN_NUMEL, ADAPTER_METHODS, ModelSpec, _inside, head_plan, linear_layers, lora_plan, parameter_inventory


def _half(precision: str) -> bool:
    return precision in ("bf16", "fp16", "fp16-master")


def _param_bytes(precision: str) -> int:
    return 2 if _half(precision) else 4


@dataclass
class _States:
    weights_trainable: int = 0
    weights_frozen: int = 0
    gradients: int = 0
    optimizer: int = 0
    paged: int = 0                    # optimizer bytes in unified memory (paged optimizers)
    host: int = 0                     # step counters on the host (semantics="cuda")
    n_params: int = 0
    n_trainable: int = 0
    trainable: list = field(default_factory=list)   # [(name, numel, bytes per element)]
    frozen_linear: list = field(default_factory=list)  # [(module, in, out)] frozen float Linear weights
    nf4_linear: list = field(default_factory=list)     # [(module, in, out)]
    adapted: list = field(default_factory=list)        # adapted Linear names
    head_modules: tuple = ()
    rows: dict = field(default_factory=dict)          # trainable name -> dim 0 of a matrix (0: a 1-D tensor)


def model_states(spec: ModelSpec, method: str, precision: str, optimizer: str, rank: int,
                 targets, double_quant: bool, semantics: str, head_trainable: bool = True,
                 adapter_bytes: int = 0) -> _States:
    """Weights, gradients and optimizer bytes, tensor by tensor (exact: the tracker agrees to the byte).
    ``adapter_bytes``: bytes per adapter element (0: as the weights, fp32 or cast with a pure 16-bit model)."""
    st = _States()
    wb = _param_bytes(precision)
    inv = parameter_inventory(spec)
    adapted: list[str] = []
    trainable_mods: tuple[str, ...] = ()
    if method in ADAPTER_METHODS:
        adapted, trainable_mods = lora_plan(spec, targets, head_trainable)
    elif method == "head":
        trainable_mods = head_plan(spec)
    st.adapted, st.head_modules = adapted, trainable_mods
    linear_shape = {n: (i, o) for n, i, o, _ in linear_layers(spec)}
    # QLoRA: quantize_model(skip=("lm_head", "classifier")) turns every other Linear into NF4
    quantized = set()
    if method == "qlora":
        quantized = {n for n in linear_shape
                     if not (set(n.split(".")) & {"lm_head", "classifier"})}

    trainable: list[tuple[str, int, int]] = []
    for t in inv:
        if t.kind == "buffer_int":
            st.weights_frozen += 8 * t.numel
            continue
        if t.kind == "buffer_float":  # rotary tables: cast with the model in pure 16-bit
            st.weights_frozen += wb * t.numel
            continue
        st.n_params += t.numel
        if method == "full" or _inside(t.name, trainable_mods):
            trainable.append((t.name, t.numel, wb))
            st.rows[t.name] = t.rows
            continue
        if t.kind == "linear_w" and t.module in quantized:
            st.weights_frozen += nf4_bytes(t.numel, double_quant)
            st.nf4_linear.append((t.module, *linear_shape[t.module]))
            continue
        st.weights_frozen += wb * t.numel
        if t.kind == "linear_w":
            st.frozen_linear.append((t.module, *linear_shape[t.module]))
    # (an NF4 weight counts its logical in x out elements in n_params, as measure.logical_parameter_count)
    ab = adapter_bytes or wb  # adapters: fp32 (peft's autocast_adapter_dtype), cast with the model in pure 16-bit
    for name in adapted:
        fin, fout = linear_shape[name]
        trainable += [(name + ".A", rank * fin, ab), (name + ".B", fout * rank, ab)]
        st.rows[name + ".A"], st.rows[name + ".B"] = rank, fout
        st.n_params += rank * (fin + fout)
    st.trainable = trainable
    st.n_trainable = sum(n for _, n, _ in trainable)
    st.weights_trainable = sum(n * b for _, n, b in trainable)
    st.gradients = st.weights_trainable

    # optimizer state
    opt, paged = optimizer_bytes(trainable, precision, optimizer, semantics, st.rows)
    counters = len(trainable) if optimizer in ("adamw", "adafactor") else 0
    if counters and semantics == "cuda":
        st.host += 4 * counters
    st.optimizer, st.paged = opt, paged
    return st


def tensor_optimizer_bytes(n: int, b: int, precision: str, optimizer: str, rows: int = 0) -> tuple[int, int]:
    """(GPU bytes, paged bytes) of one trainable tensor's optimizer state: ``n`` elements of ``b``
    bytes (the step counter not included); ``rows``: dim 0 of a matrix (0: a 1-D tensor)."""
    master = 4 * n if precision == "fp16-master" else 0
    if optimizer == "adafactor":   # torch.optim.Adafactor: row (rows, 1) and column (1, cols) variances
        state = (rows + n // rows) * b if rows else n * b
    elif optimizer == "sgd":
        state = (4 if precision == "fp16-master" else b) * n
    elif optimizer == "adamw":
        state = 2 * (4 if precision == "fp16-master" else b) * n
    elif optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        state = 2 * n + 2 * 4 * -(-n // BNB_8BIT_BLOCK) if n >= BNB_MIN_8BIT_SIZE else 8 * n
    else:  # paged-adamw: float32 states
        state = 8 * n
    if optimizer.startswith("paged") and n >= BNB_PAGED_MIN_NUMEL:
        return master, state
    return state + master, 0


def optimizer_bytes(trainable: list, precision: str, optimizer: str, semantics: str,
                    rows: Optional[dict] = None) -> tuple[int, int]:
    """(GPU bytes, paged bytes) of the optimizer state of ``trainable`` [(name, numel, bytes)]: the
    tensors' states, bitsandbytes' code tables, AdamW's float32 step counters (on the host under
    semantics="cuda", so not counted here); ``rows``: name -> dim 0 of each matrix (Adafactor)."""
    opt = paged = 0
    for name, n, b in trainable:
        s, p = tensor_optimizer_bytes(n, b, precision, optimizer, (rows or {}).get(name, 0))
        opt, paged = opt + s, paged + p
    if optimizer in ("adamw-8bit", "paged-adamw-8bit") and any(n >= BNB_MIN_8BIT_SIZE for _, n, _ in trainable):
        opt += 2 * 256 * 4  # the signed and unsigned dynamic code tables
    if optimizer in ("adamw", "adafactor") and semantics != "cuda":
        opt += 4 * len(trainable)
    return opt, paged


def _shard(n: int, g: int) -> int:
    """Bytes per GPU of ``n`` bytes sharded over ``g`` GPUs (ZeRO), rounded up."""
    return -(-n // g)


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Stored bytes of one NF4 weight: minigpt.nf4.nf4_nbytes (bitsandbytes' layout), QLoRA's blocks of 64."""
    return nf4_nbytes(numel, NF4_BLOCK, double_quant)
