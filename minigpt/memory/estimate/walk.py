"""The symbolic forward walk: tensors as (numel, bytes per element), and the ops every family is made of
(save for backward, casts, dropout, activations); the layers themselves are in layers.py."""
from __future__ import annotations
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from .spec import ModelSpec, _inside, linear_layers
from .states import _half, _param_bytes


class _T:
    """A symbolic tensor: storage id, elements, bytes per element, requires_grad."""
    __slots__ = ("sid", "numel", "el", "grad", "storage")
    _next = 0

    def __init__(self, numel: int, el: int, grad: bool):
        _T._next += 1
        self.sid, self.numel, self.el, self.grad = _T._next, int(numel), int(el), bool(grad)
        self.storage = self.numel * self.el

    @property
    def nbytes(self) -> int:
        """Bytes of the storage (a view keeps its whole base alive)."""
        return self.storage

    @property
    def gbytes(self) -> int:
        """Bytes of this tensor's gradient (a slice's backward fills a base-sized gradient)."""
        return self.storage

    def slice(self, numel: int) -> "_T":
        """A view of part of this tensor: fewer elements, the same storage."""
        v = object.__new__(_T)
        v.sid, v.numel, v.el, v.grad, v.storage = self.sid, int(numel), self.el, self.grad, self.storage
        return v


class _Chunk(_T):
    """A chunk of a split: a view (the base's storage, in flight once) whose gradient is its own
    size; SplitBackward gathers the chunks' gradients into one of the base's size."""
    __slots__ = ()

    @property
    def gbytes(self) -> int:
        return self.numel * self.el

    @classmethod
    def of(cls, base: _T, numel: int) -> "_Chunk":
        v = object.__new__(cls)
        v.sid, v.numel, v.el, v.grad, v.storage = base.sid, int(numel), base.el, base.grad, base.storage
        return v


@dataclass
class _Ctx:
    spec: ModelSpec
    B: int
    T: int
    precision: str
    semantics: str
    attention: str
    p_hidden: float
    p_attn: float
    method: str
    rank: int
    adapted: frozenset      # adapted Linear names
    nf4: frozenset          # NF4 Linear names
    trainable_mods: tuple
    checkpointing: bool = False
    lora_p: float = 0.0     # LoRA dropout on each adapter's input (minigpt.lora / peft lora_dropout)
    card: Any = None        # gpus.GpuSpec whose SDPA kernel the CUDA semantics follow (None: flash for 16-bit)
    adapter_bytes: int = 0  # bytes per adapter element (0: as the weights)
    loss_dtype: Optional[str] = None   # RunSpec.loss_dtype: "fp32", "compute" (None: the family's own)
    loss_chunk: Optional[int] = None   # RunSpec.loss_chunk: tokens per chunk of the cross-entropy
    padding: bool = False              # RunSpec.padding: an attention_mask with zeros goes in

    @property
    def N(self) -> int:
        return self.B * self.T

    @property
    def amp(self) -> bool:
        return self.precision.startswith("amp")

    @property
    def wb(self) -> int:
        return _param_bytes(self.precision)

    @property
    def ab(self) -> int:
        """Bytes per adapter element: fp32, cast with a pure 16-bit model, or RunSpec.adapter_dtype's."""
        return self.adapter_bytes or self.wb

    @property
    def lp(self) -> int:
        """Bytes of a matmul output."""
        return 2 if (self.amp or _half(self.precision)) else 4

    @property
    def cuda(self) -> bool:
        return self.semantics == "cuda"

    @property
    def full(self) -> bool:
        return self.method == "full"


@dataclass
class _Op:
    """One forward op, as the backward pass will meet it."""
    name: str
    ins: list                  # inputs that get a gradient
    outs: list                 # outputs
    saves: list                # [(sid, bytes, bucket)] saved for backward
    pgrads: list               # [(param key, numel, computed bytes/elem, final bytes/elem)]
    work: int = 0              # workspace allocated during its backward
    block: int = -1            # transformer block (-1: outside the blocks)
    passthrough: bool = False  # add / view: the gradient is passed on, not computed
    unpacks: bool = False      # its backward reads saved tensors (parameters included)
    work_before: int = 0       # backward transient freed before its gradients are written


class _WalkCore:
    """Walks the forward pass symbolically. Each method is one op of the model code, with its
    rule for what autograd saves; together they give the activations (a sum of shapes) and the
    op list the backward replay walks in reverse."""

    def __init__(self, ctx: _Ctx):
        self.c = ctx
        self.saved: dict[int, int] = {}        # sid -> bytes, activations
        self.held: dict[str, int] = {}         # weight copies kept for backward
        self.cache: dict[str, int] = {}        # autocast cache (trainable weights), until forward ends
        self.terms: dict[str, int] = {}        # label -> bytes (for the breakdown)
        self.log: list[tuple[str, int]] = []   # (label, bytes) in the order saved
        self.dequant = 0                       # largest transient of an NF4 decode (weight_copies)
        self.ops: list[_Op] = []
        self.block = -1
        self._pending: list = []
        self._held_sid: dict[str, int] = {}
        self.cache_block: dict[int, int] = {}  # autocast cache made inside each block
        self.anchors: list[_T] = []            # tensors the model code keeps referenced
        self._keep: Optional[list] = None      # intermediates a C++ function keeps until it returns
        self.kept: list[_T] = []               # tensors the model's output holds until backward ends
        self.fwd_peak = 0
        self.fwd_peak_parts = (0, 0)           # (saved, weight copies) at that op: the peak's buckets
        self.recompute_trace: dict[int, list] = {}   # per block: (saved + in flight, op saves?)
        self.block_start = 0
        self.block_held = 0
        self.anchor_base = 0
        self.block_input = -1
        self.block_input_pre_saved = False     # the block's input was saved before the block began
        self.bias = {n: b for n, _, _, b in linear_layers(ctx.spec)}

    # ---------------------------------------------------------------- bookkeeping
    def save(self, t: _T, label: str) -> None:
        self._pending.append((t.sid, t.nbytes, "activations"))
        if t.sid not in self.saved:
            self.saved[t.sid] = t.nbytes
            self.terms[label] = self.terms.get(label, 0) + t.nbytes
            self.log.append((label, t.nbytes))

    def save_bytes(self, nbytes: int, label: str) -> None:
        self.save(_T(nbytes, 1, False), label)

    def hold(self, key: str, nbytes: int) -> None:
        """A weight copy saved for backward (autocast's 16-bit cast of a weight)."""
        if key not in self._held_sid:
            self._held_sid[key] = _T(0, 0, False).sid
        self.held[key] = nbytes
        self._pending.append((self._held_sid[key], nbytes, "weight_copies"))

    def arg_anchor(self, t: _T) -> None:
        """A module's argument (a norm's output), referenced until the module returns, in the
        forward pass and when checkpointing recomputes the block."""
        self.anchors.append(t)

    def to_cache(self, key: str, nbytes: int) -> None:
        if key not in self.cache:
            self.cache[key] = nbytes
            self.cache_block[self.block] = self.cache_block.get(self.block, 0) + nbytes

    def record(self, name: str, ins: Sequence[_T], outs: Sequence[_T], pgrads=(), work: int = 0,
               passthrough: bool = False, fwd_work: int = 0, alive: Sequence[_T] = (),
               unpacks: bool = False, work_before: int = 0, cast_copies: int = 0) -> None:
        op = _Op(name, [x for x in ins if x.grad], list(outs), self._pending, list(pgrads), work,
                 self.block, passthrough, bool(self._pending) or unpacks, work_before)
        self._pending = []
        if self._keep is not None:
            alive = (*alive, *self._keep)
        # forward peak: what is saved so far, the autocast cache, and the tensors in flight
        # (this op's inputs and outputs, the residual stream, the embedding output transformers
        # keeps in a local variable) unless they are saved already
        # (a kernel's workspace, e.g. an NF4 decode, is gone before its output is written), and
        # weight casts this op alone uses (``cast_copies``: autocast's copy of a frozen weight that
        # nothing saves, freed when the op returns)
        def in_flight(tensors) -> int:
            seen = {t.sid: t.nbytes for t in tensors if t.sid not in self.saved}
            new = {t.sid: t.nbytes for t in outs if t.sid not in self.saved and t.sid not in seen}
            return sum(seen.values()) + max(fwd_work, sum(new.values()))
        copies = sum(self.cache.values()) + sum(b for k, b in self.held.items() if k not in self.cache) + \
            cast_copies
        now = self.total() + copies + in_flight((*ins, *alive, *self.anchors, *self.kept))
        if now > self.fwd_peak:
            self.fwd_peak, self.fwd_peak_parts = now, (self.total(), copies)
        if self.block >= 0:   # the same inside the block alone: what recomputing it holds
            # (a module's argument, e.g. a norm's output, is referenced during the recomputation
            # as in the forward pass: the module holds it until it returns)
            inner = [t for t in (*ins, *alive) if t.sid != self.block_input] + \
                list(self.anchors[self.anchor_base:])
            held_blk = sum(b for k, b in self.held.items() if k not in self.cache) - self.block_held
            # the block's input, when an op of the block saves it (a norm), is the tensor the
            # checkpoint keeps: the backward replay counts it already
            own_input = self.saved.get(self.block_input, 0) if self.block_input_saved_in_block() else 0
            base = (self.total() - self.block_start - own_input) + \
                self.cache_block.get(self.block, 0) + held_blk
            blk = base + cast_copies + in_flight(inner)
            # torch.utils.checkpoint stops recomputing at the pack of the last saved tensor. An
            # ATen op saves its inputs before its kernel runs (VariableType: SavedVariable of the
            # inputs, then the call): if the block's last saving op saves inputs only, the
            # recomputation stops before its outputs and workspace are allocated.
            ins_sids = {t.sid for t in ins}
            inputs_only = bool(op.saves) and all(sid in ins_sids or bucket != "activations"
                                                 for sid, _, bucket in op.saves)
            seen = {t.sid: t.nbytes for t in inner if t.sid not in self.saved}
            blk_at_pack = base + sum(seen.values()) if inputs_only else blk
            self.recompute_trace.setdefault(self.block, []).append((blk, op.unpacks, blk_at_pack))
        if any(o.grad for o in outs) or op.saves:
            self.ops.append(op)

    def total(self) -> int:
        return sum(self.saved.values())

    def block_input_saved_in_block(self) -> bool:
        return self.block_input in self.saved and not self.block_input_pre_saved

    def cast(self, x: _T, el: int) -> _T:
        if x.el == el:
            return x
        y = _T(x.numel, el, x.grad)
        self.record("cast", [x], [y])
        return y

    def trainable(self, module: str) -> bool:
        return self.c.full or _inside(module, self.c.trainable_mods)

    def pgrad(self, key: str, numel: int, computed: Optional[int] = None) -> tuple:
        final = self.c.wb
        return (key, numel, computed or final, final)

    def add(self, x: _T, y: _T) -> _T:
        """x + y (residual): autograd passes the gradient on to both (cast to each dtype)."""
        out = _T(x.numel, max(x.el, y.el), x.grad or y.grad)
        self.record("add", [x, y], [out], passthrough=True)
        return out

    # ---------------------------------------------------------------- ops
    def embedding(self, key: str, rows: int, numel_w: int, trainable: bool, out_grad: bool) -> _T:
        """Token / position lookup (not autocast: output in the weights' dtype). Its backward
        builds a dense (vocab, d) gradient."""
        c = self.c
        out = _T(rows * c.spec.d, c.wb, trainable or out_grad)
        pg = [self.pgrad(key, numel_w)] if trainable else []
        self.record("embedding", [], [out], pg)
        return out

    def dropout(self, x: _T, p: float) -> _T:
        """F.dropout in training. CUDA (``native_dropout``): a 1-byte bool mask is saved. CPU
        (``_dropout_impl``): a noise tensor of x's dtype is saved. p = 0 returns x itself."""
        if p <= 0:
            return x
        if x.grad:
            if self.c.cuda:
                self.save(_T(x.numel, 1, False), "dropout masks")
            else:
                self.save(_T(x.numel, x.el, False), "dropout masks")
        y = _T(x.numel, x.el, x.grad)
        self.record("dropout", [x], [y])
        return y

    def act(self, x: _T, kind: str) -> _T:
        """GELU / SiLU save their input, tanh its output."""
        y = _T(x.numel, x.el, x.grad)
        if x.grad:
            self.save(y if kind == "tanh" else x, "activation-function inputs")
        self.record(kind, [x], [y])
        return y

    def mul(self, a: _T, b: _T) -> _T:
        """a * b saves both (each one's gradient needs the other)."""
        if b.grad:
            self.save(a, "products")
        if a.grad:
            self.save(b, "products")
        y = _T(a.numel, max(a.el, b.el), a.grad or b.grad)
        self.record("mul", [a, b], [y])
        return y

    def new_like(self, x: _T, el: Optional[int] = None, numel: Optional[int] = None) -> _T:
        """An elementwise op that saves nothing (rotary, scaling): a new tensor."""
        y = _T(numel or x.numel, el or x.el, x.grad)
        self.record("elementwise", [x], [y])
        return y

    # ---------------------------------------------------------------- attention
