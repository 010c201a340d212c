"""Per-rank model states and FSDP2's gathered blocks, as the real implementations lay them out
(measured per rank with 2 gloo ranks by ``minigpt.memory.distributed``; tests/memory/test_distributed.py).

Three implementations (``estimate(..., gpus=G, zero=Z, sharding=...)``):

* ``"flat"`` (DeepSpeed-style ZeRO, the default): the flat buffer of each state split evenly,
  ceil(bytes / G) per GPU; no DDP buffers modelled.
* ``"fsdp2"`` (PyTorch FSDP2 ``fully_shard`` on every block and the root, ZeRO-3): every parameter
  is sharded on dim 0 into ceil(rows / G) rows per rank, **padded**: each rank stores the padded
  shard of weights and of gradients, while the optimizer's ``zeros_like`` state follows only the
  rank's real rows (rank G-1 of a 65-row embedding has 32 real rows of 33). A block's full weights
  exist only while it runs; in backward the next block's all-gather buffer (prefetch) and the
  reduce-scatter buffer of the block just done are alive beside it.
* ``"ddp"`` (``DistributedDataParallel(gradient_as_bucket_view=True)``): the gradients *are* the
  communication buckets, allocated once and kept through ``zero_grad(set_to_none=True)``: a full
  set of gradients is alive all step. With ``zero=1`` the optimizer is PyTorch's
  ``ZeroRedundancyOptimizer``: whole parameters per rank, largest first, each to the rank with
  the fewest elements so far (not an even split).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .spec import EstimateError, ModelSpec, parameter_inventory
from .states import _States, optimizer_bytes

SHARDINGS = ("flat", "fsdp2", "ddp")
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)\.")


def block_of(name: str) -> int:
    """The transformer block a parameter belongs to (FSDP2's unit), -1 for the root module."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else -1


def fsdp2_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """(padded rows every rank stores, real rows of ``rank``) of a dim 0 of ``rows`` rows."""
    per = -(-rows // world)
    return per, max(0, min(per, rows - rank * per))


def zero_redundancy_partition(sizes: list[int], world: int) -> list[int]:
    """The rank of each tensor under ``ZeroRedundancyOptimizer``'s rule
    (torch/distributed/optim/zero_redundancy_optimizer.py ``_partition_parameters``): sorted by
    size, largest first (a stable sort), each to the first rank with the smallest total so far."""
    owner = [0] * len(sizes)
    totals = [0] * world
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = totals.index(min(totals))
        owner[i] = r
        totals[r] += sizes[i]
    return owner


@dataclass
class FsdpPlan:
    """What FSDP2's schedule moves, per FSDP unit (-1 = the root), in bytes on one rank."""
    world: int
    full: dict = field(default_factory=dict)     # unit -> bytes of its unsharded parameters
    shard: dict = field(default_factory=dict)    # unit -> padded bytes of its shard (weights, grads)
    trainable_shard: dict = field(default_factory=dict)  # unit -> padded bytes of its trainable shard
    grads_of: dict = field(default_factory=dict)  # parameter key -> unit

    def buffer(self, unit: int) -> int:
        """An all-gather (or reduce-scatter) buffer of ``unit``: every rank's padded shard."""
        return self.world * self.shard.get(unit, 0)

    def trainable_buffer(self, unit: int) -> int:
        return self.world * self.trainable_shard.get(unit, 0)


def check_sharding(sharding: str, zero: int, gpus: int, rank: int) -> None:
    """One sentence for a sharding the rules below do not describe (RunSpec calls it)."""
    if sharding not in SHARDINGS:
        raise EstimateError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < gpus:
        raise EstimateError(f"rank_index={rank} is not a rank of {gpus} GPUs; use 0 to {gpus - 1}.")
    if sharding == "fsdp2" and zero != 3:
        raise EstimateError("sharding='fsdp2' shards parameters, gradients and optimizer state: use zero=3.")
    if sharding == "ddp" and zero > 1:
        raise EstimateError("sharding='ddp' replicates weights and gradients (zero=0) or shards the "
                            "optimizer state (zero=1, ZeroRedundancyOptimizer); use zero=0 or 1.")


def shard_states(spec: ModelSpec, st: _States, precision: str, optimizer: str, semantics: str,
                 gpus: int, zero: int, sharding: str, rank: int, wb: int) -> FsdpPlan | None:
    """Replace ``st``'s weights, gradients and optimizer bytes by what ``rank`` holds; return the
    FSDP2 plan for the replay (None for the other implementations). ``wb``: bytes per weight."""
    check_sharding(sharding, zero, gpus, rank)
    if sharding == "flat":
        return None
    if st.nf4_linear:
        raise EstimateError(f"sharding={sharding!r} is modelled for float weights; for QLoRA use sharding='flat'.")
    trainable = st.trainable
    if sharding == "ddp":
        if zero == 1:
            owner = zero_redundancy_partition([n for _, n, _ in trainable], gpus)
            mine = [t for t, r in zip(trainable, owner) if r == rank]
            st.optimizer, st.paged = optimizer_bytes(mine, precision, optimizer, semantics)
        return None
    # FSDP2: per-tensor dim-0 shards
    inventory = parameter_inventory(spec)
    params = [t for t in inventory if not t.kind.startswith("buffer")]   # buffers are not sharded
    names = {name for name, _, _ in trainable}
    plan = FsdpPlan(gpus)
    local_trainable: list = []
    for t in params:
        _add_unit(plan, t.name, t.numel, t.dim0, wb, gpus, rank, t.name in names, local_trainable)
    known = {t.name for t in params}
    for name, n, b in trainable:          # LoRA adapters: A is (r, in), B is (out, r)
        if name not in known:
            r_ = n // _lora_cols(name, n, st) if name.endswith((".A", ".B")) else n
            _add_unit(plan, name, n, r_, b, gpus, rank, True, local_trainable)
    # the buffers stay whole in weights_frozen: what model_states counted beyond the frozen parameters
    buffers = st.weights_frozen - sum(t.numel for t in params if t.name not in names) * wb
    st.weights_trainable = sum(plan.trainable_shard.values())
    st.weights_frozen = sum(plan.shard.values()) - st.weights_trainable + buffers
    st.gradients = st.weights_trainable
    st.optimizer, st.paged = optimizer_bytes(local_trainable, precision, optimizer, semantics)
    return plan


def _lora_cols(name: str, n: int, st: _States) -> int:
    """Columns of a LoRA factor: A (r x in) has ``in`` columns, B (out x r) has r."""
    layer = name[:-2]
    shapes = {m: (i, o) for m, i, o in st.frozen_linear}
    fin, fout = shapes.get(layer, (None, None))
    if name.endswith(".A") and fin:
        return fin
    if name.endswith(".B") and fout:
        return n // fout
    return 1


def _add_unit(plan: FsdpPlan, name: str, numel: int, rows: int, b: int, world: int, rank: int,
              trainable: bool, local_trainable: list) -> None:
    unit = block_of(name)
    per, real = fsdp2_rows(rows, world, rank)
    cols = numel // rows
    plan.full[unit] = plan.full.get(unit, 0) + numel * b
    plan.shard[unit] = plan.shard.get(unit, 0) + per * cols * b
    if trainable:
        plan.trainable_shard[unit] = plan.trainable_shard.get(unit, 0) + per * cols * b
        plan.grads_of[name] = unit
        local_trainable.append((name, real * cols, b))
