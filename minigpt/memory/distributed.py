"""A sharded fine-tune for real: ``torch.distributed`` on CPU (the ``gloo`` backend), the course's
tracker on every rank, per-rank buckets and peak.

    results = run_sharded("tiny", mode="fsdp2", world=2, batch=2, seq=32)
    for r in results: print(r.rank, r.peak, r.peak_buckets)

Modes (what each rank keeps of the model states; batch and seq are per rank):

    ddp     DistributedDataParallel: everything replicated, gradients all-reduced in buckets
            (``gradient_as_bucket_view=True``: the .grad tensors *are* the bucket, no second copy)
    zero1   DDP + ``ZeroRedundancyOptimizer``: optimizer state sharded, whole parameters per rank
    fsdp2   FSDP2 ``fully_shard`` on every block and the root: parameters, gradients and optimizer
            state sharded on dim 0 (ZeRO-3 semantics); a block's full weights exist only while it runs

Each rank is its own process (``python -m minigpt.memory.distributed --worker``), started here with a
file rendezvous (no network needed for it) or by ``torchrun --nproc-per-node N -m
minigpt.memory.distributed``. The launcher kills every rank when one fails or the time runs out,
and each rank dies with its launcher (``PR_SET_PDEATHSIG``): no process outlives a run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch

from .buckets import BUCKETS
from .tracker import TensorTracker, _storage, tree_flatten

MODES = ("ddp", "zero1", "fsdp2")
COMM = "communication"
# ops whose tensors are collective buffers: c10d's collectives and FSDP2's copy-in / chunk-cat ops
_COMM_NAMESPACES = ("c10d", "_c10d_functional", "fsdp")


# what a rank prints when it failed because another rank died
_PEER_DIED = ("remote worker", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


class ShardedRunError(RuntimeError):
    """A sharded run that did not complete on every rank (``pids``: its processes, all stopped)."""

    def __init__(self, message: str, pids: tuple = ()):
        super().__init__(message)
        self.pids = tuple(pids)


class DistTracker(TensorTracker):
    """The tensor tracker plus a ``communication`` bucket: every storage that a collective reads
    or writes (all-gather inputs and outputs, reduce-scatter buffers, DDP's gradient buckets when
    they are not the gradients themselves) is booked there while it lives."""

    buckets = (*BUCKETS, COMM)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if func.namespace in _COMM_NAMESPACES:
            # a collective's every tensor is a buffer; FSDP2's own ops make buffers (their outputs)
            # but write the gathered weights into the unsharded parameters (weight_copies)
            touched = (args, kwargs or {}, out) if func.namespace != "fsdp" else out
            for t in tree_flatten(touched)[0]:
                if isinstance(t, torch.Tensor):
                    rec = self._find(_storage(t))
                    # weights, gradients and the optimizer's state keep their own bucket
                    if rec is not None and rec.bucket in ("temporaries", "weight_copies"):
                        self._retag(rec, COMM)   # (a retag moves bytes, the total stays)
        return out


@dataclass
class RankResult:
    """What one rank measured: storage bytes of its model states before the step, then the peak of
    one tracked training step with its buckets (the tracker's seven plus ``communication``)."""
    mode: str
    world: int
    rank: int
    model: str
    batch: int
    seq: int
    model_state: dict = field(default_factory=dict)   # weights / gradients / optimizer, bytes
    peak: int = 0                                       # the lowest peak of the tracked steps
    peaks: list = field(default_factory=list)           # the peak of every tracked step
    peak_phase: str = ""
    peak_buckets: dict = field(default_factory=dict)
    phase_peaks: dict = field(default_factory=dict)    # phase -> peak bytes
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    n_params_local: int = 0                            # real (unpadded) parameter elements held

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def buckets(self) -> dict:
        """The split at the peak (what plot.bucket_bars draws)."""
        return self.peak_buckets


# ------------------------------------------------------------------------------------ one rank
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its launcher dies (a rank must never be orphaned)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _loopback_up() -> None:
    """Inside a fresh network namespace (the grading sandbox) ``lo`` starts DOWN and gloo cannot
    find 127.0.0.1; bring it up (allowed to the namespace's own root; a no-op elsewhere)."""
    with contextlib.suppress(Exception):
        import fcntl
        import socket
        import struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]       # SIOCGIFFLAGS
        if not flags & 1:                                                   # IFF_UP
            fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))   # SIOCSIFFLAGS
        s.close()


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _optimizer_state(opt) -> list:
    inner = getattr(opt, "optim", opt)   # ZeroRedundancyOptimizer wraps the rank's own optimizer
    return [v for s in inner.state.values() for v in s.values() if hasattr(v, "untyped_storage")]


def _storage_bytes(tensors) -> int:
    seen, n = set(), 0
    for t in tensors:
        st = _local(t).untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            n += st.nbytes()
    return n


def _build(mode: str, model_name: str, lr: float):
    """The model on this rank, wrapped for ``mode``, and its AdamW (for-loop implementation, as
    the estimator's semantics="cpu")."""
    import torch
    from ..model import from_preset
    if model_name == "pretrained":
        from ..train import load_pretrained
        model, _ = load_pretrained()
    else:
        torch.manual_seed(0)   # the same initial weights on every rank
        model = from_preset(model_name)
    model.train()
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, gradient_as_bucket_view=True)
    if mode == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return model, ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW,
                                              lr=lr, foreach=False)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)


def _patch_fsdp_storage(tracker: TensorTracker):
    """FSDP2 frees and re-allocates its unsharded parameters with ``UntypedStorage.resize_``, which
    no dispatch mode sees: report each resize to the tracker."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group
    orig_alloc, orig_free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def alloc(t):
        orig_alloc(t)
        tracker.storage_resized(t)

    def free(t):
        orig_free(t)
        tracker.storage_resized(t)

    stack = contextlib.ExitStack()
    for mod, name, fn in ((_fsdp_param, "alloc_storage", alloc), (_fsdp_param, "free_storage", free),
                          (_fsdp_param_group, "alloc_storage", alloc)):
        stack.callback(setattr, mod, name, getattr(mod, name))
        setattr(mod, name, fn)
    return stack


def run_rank(rank: int, world: int, mode: str, model_name: str, batch: int, seq: int, steps: int,
             out_dir: str, init_method: Optional[str], fail: bool = False, lr: float = 3e-4,
             tracked: int = 3) -> RankResult:
    """One rank's run: ``steps - 1`` untracked steps (the optimizer state exists after the first,
    DDP rebuilds its buckets after it), then ``tracked`` tracked steps. Writes ``rank<N>.json`` into
    ``out_dir`` *before* tearing the process group down (gloo's teardown sometimes aborts after
    the work is done)."""
    import torch
    import torch.distributed as dist
    from ..data import encode_corpus, lm_batch, rotten_tomatoes
    torch.set_num_threads(1)
    kw = dict(rank=rank, world_size=world) if init_method else {}
    dist.init_process_group("gloo", init_method=init_method or "env://", timeout=timedelta(seconds=60), **kw)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if fail:
            raise RuntimeError(f"rank {rank} fails on purpose (fail_rank)")
        model, opt = _build(mode, model_name, lr)
        gen = torch.Generator().manual_seed(1000 + rank)     # each rank its own share of the data
        # review text, as lab 02 fine-tunes on: the Shakespeare model meets a new domain
        data = encode_corpus("\n".join(r.text for r in rotten_tomatoes("train")), errors="replace")
        res = RankResult(mode, world, rank, model_name, batch, seq)
        start = time.perf_counter()
        best = None
        for step in range(steps + tracked - 1):
            x, y = lm_batch(data, batch, seq, gen)
            tracker = None
            if step >= steps - 1:        # the tracked steps: each its own tracker
                tracker = DistTracker()
                res.model_state = {"weights": _storage_bytes(model.parameters()),
                                   "optimizer": _storage_bytes(_optimizer_state(opt))}
                tracker.register_module(model)
                if mode != "fsdp2":   # DDP's gradient bucket outlives zero_grad(set_to_none=True)
                    tracker.register([p.grad for p in model.parameters() if p.grad is not None], "gradients",
                                     data=True)
                tracker.register(_optimizer_state(opt), "optimizer", data=True)
                tracker.register((x, y), "temporaries", data=True)
            res.losses.append(_step(model, opt, x, y, tracker, mode))
            if tracker is not None:
                res.peaks.append(tracker.peak)
                if best is None or tracker.peak < best.peak:
                    best = tracker
        res.model_state["gradients"] = _storage_bytes(p.grad for p in model.parameters() if p.grad is not None)
        res.seconds = time.perf_counter() - start
        # gloo finishes a collective in a background thread and holds its buffers until then, so the
        # same step can peak a little higher when a buffer is released late: report the lowest peak
        # of the tracked steps (the schedule without late releases) and keep every step's in ``peaks``
        res.peak, res.peak_phase = best.peak, best.peak_phase
        res.peak_buckets = dict(best.peak_buckets)
        res.phase_peaks = {k: v[0] for k, v in best.phase_peaks.items()}
        res.n_params_local = sum(_local(p).numel() for p in model.parameters())
        if mode == "zero1":   # whole parameters per rank: count the ones this rank updates
            res.n_params_local = sum(p.numel() for g in opt.optim.param_groups for p in g["params"])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res.to_dict()))
        dist.barrier()
        return res
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _step(model, opt, x, y, tracker: Optional[TensorTracker], mode: str) -> float:
    def phase(name):
        if tracker is not None:
            tracker.set_phase(name)
    opt.zero_grad(set_to_none=True)
    patch = _patch_fsdp_storage(tracker) if (tracker is not None and mode == "fsdp2") else contextlib.nullcontext()
    with patch, (tracker if tracker is not None else contextlib.nullcontext()):
        phase("forward")
        _, loss = model(x, y)
        value = float(loss.detach())
        phase("backward")
        loss.backward()
        del loss
        phase("optimizer")
        opt.step()
        phase("end")
    return value


# how each mode is described to the estimator (minigpt/memory/estimate/sharding.py)
ESTIMATE_ARGS = {"ddp": dict(zero=0, sharding="ddp"), "zero1": dict(zero=1, sharding="ddp"),
                 "fsdp2": dict(zero=3, sharding="fsdp2")}


def estimate_rank(mode: str, model: str, world: int, rank: int, batch: int, seq: int):
    """The estimator's prediction for one rank of ``run_sharded(model, mode, world, batch, seq)``:
    AdamW (for-loop), fp32, CPU kernels ("pretrained" has the shapes of the ``small`` preset)."""
    from .estimate import RunSpec, estimate
    return estimate(RunSpec("small" if model == "pretrained" else model, batch=batch, seq=seq, semantics="cpu",
                            gpus=world, rank_index=rank, **ESTIMATE_ARGS[mode]))


def rank_model_state(est) -> dict:
    """An Estimate's model states in RankResult.model_state's terms: weights (trainable and frozen
    together, as a rank's storage), gradients, optimizer."""
    ms = est.model_state
    return {"weights": ms["weights_trainable"] + ms["weights_frozen"], "gradients": ms["gradients"],
            "optimizer": ms["optimizer"]}


def with_communication(est) -> dict:
    """An Estimate's split at the peak with its collective buffers as their own bucket (the
    estimator counts them in temporaries), to draw beside a rank's measured buckets."""
    b = dict(est.buckets)
    b["temporaries"] -= est.communication
    b[COMM] = est.communication
    return b


def gloo_problem(timeout: float = 60.0) -> Optional[str]:
    """None when a 1-rank gloo process group starts on this machine, else one line saying why not."""
    try:
        run_sharded("tiny", "ddp", world=1, batch=1, seq=8, steps=2, timeout=timeout)
    except (ShardedRunError, OSError) as e:
        return str(e).strip().splitlines()[-1][:300]
    return None


# ------------------------------------------------------------------------------- the launcher
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_sharded(model: str = "tiny", mode: str = "fsdp2", world: int = 2, batch: int = 2, seq: int = 32,
                steps: int = 3, timeout: float = 180.0, fail_rank: Optional[int] = None) -> list[RankResult]:
    """Run ``world`` ranks of one sharded fine-tune on this CPU and return each rank's result.

    Args:
        model: a MiniGPT preset ("tiny", "small", ...) with fresh weights, or "pretrained" (the shipped
            Shakespeare ``small`` checkpoint).
        mode: "ddp", "zero1" or "fsdp2" (see the module docstring).
        world, batch, seq: ranks, and the batch and sequence length of *each* rank.
        steps: the first tracked step is step number ``steps`` (at least 2, so the optimizer state
            exists; DDP rebuilds its gradient buckets after the first step, so 3 by default); it and
            the next two are tracked, and each rank reports the lowest of their peaks (``peaks``: all).
        timeout: seconds for the whole run; then every rank is killed.
        fail_rank: make that rank raise right after joining (tests: the others must not hang).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive number of ranks, got {world!r}.")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the tracked step needs the optimizer state), got {steps}.")
    with tempfile.TemporaryDirectory(prefix="minigpt-dist-") as tmp:
        store = Path(tmp, "store")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        procs = []
        for r in range(world):
            cmd = [sys.executable, "-m", "minigpt.memory.distributed", "--worker", "--rank", str(r),
                   "--world", str(world), "--mode", mode, "--model", model, "--batch", str(batch),
                   "--seq", str(seq), "--steps", str(steps), "--out", tmp,
                   "--init-method", "file://" + str(store)]
            if fail_rank == r:
                cmd.append("--fail")
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          start_new_session=True, text=True))
        deadline = time.monotonic() + timeout
        outputs = _wait_all(procs, timeout)
        results = []
        for r in range(world):
            f = Path(tmp, f"rank{r}.json")
            if f.exists():
                results.append(RankResult(**json.loads(f.read_text())))
        if len(results) < world:
            codes = ", ".join(f"rank {r}: {p.returncode}" for r, p in enumerate(procs))
            # a rank whose peer died fails in a collective: show the error of a rank that did not
            failed = [o for o in outputs if "Error" in o]
            own = [o for o in failed if not any(k in o for k in _PEER_DIED)]
            tail = ((own or failed or outputs or [""])[0])[-1500:]
            if time.monotonic() > deadline:
                tail = f"(stopped after the {timeout:.0f}-second limit)\n" + tail
            raise ShardedRunError(f"the {mode} run finished on {len(results)} of {world} ranks (exit codes "
                                  f"{codes}); the first error:\n{tail}", [p.pid for p in procs])
        return results


def _wait_all(procs: list, timeout: float) -> list[str]:
    """Wait for every rank; when one fails or time runs out, kill the others' process groups.
    Returns the ranks' outputs, first the rank that exited first."""
    deadline = time.monotonic() + timeout
    order: list = []              # ranks in the order they exited: the first failure is the cause
    try:
        while any(p.poll() is None for p in procs):
            order += [i for i, p in enumerate(procs) if p.returncode is not None and i not in order]
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                # a rank that died leaves the others blocked in a collective: stop them now
                time.sleep(0.5 if failed else 0)
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
    order += [i for i in range(len(procs)) if i not in order]
    outputs = [p.stdout.read() if p.stdout else "" for p in procs]
    return [outputs[i] for i in order]


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minigpt.memory.distributed",
                                 description="One sharded fine-tune on CPU ranks (gloo); per-rank peak memory.")
    ap.add_argument("--mode", choices=MODES, default="fsdp2")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print each rank's result as JSON instead of a table")
    ap.add_argument("--out", default=None, help="folder for rank<N>.json (worker mode)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--init-method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fail", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker or "RANK" in os.environ:   # a rank: started by run_sharded or by torchrun
        _die_with_parent()
        _loopback_up()
        out = a.out or tempfile.mkdtemp(prefix="minigpt-dist-")
        rank = a.rank if a.rank is not None else int(os.environ["RANK"])
        res = run_rank(rank, a.world if a.init_method else int(os.environ["WORLD_SIZE"]), a.mode, a.model,
                       a.batch, a.seq, a.steps, out, a.init_method, a.fail)
        print(json.dumps(res.to_dict()), flush=True)
        return
    results = run_sharded(a.model, a.mode, a.world, a.batch, a.seq, a.steps)
    if a.json:
        for r in results:
            print(json.dumps(r.to_dict()))
        return
    print(rank_table(results))


def rank_table(results: list[RankResult]) -> str:
    """Each rank's buckets at its peak, measured, beside the estimate for that rank (MiB)."""
    from .buckets import MiB, fmt_error
    first = results[0]
    ests = [with_communication(estimate_rank(r.mode, r.model, r.world, r.rank, r.batch, r.seq)) for r in results]
    head = "".join(f"{f'rank {r.rank} measured':>18}{'estimated':>11}" for r in results)
    lines = [f"{first.mode} on {first.world} gloo rank(s), {first.model}, batch {first.batch} x {first.seq} per rank; "
             "MiB (2^20 bytes) at each rank's peak (tracked on CPU)", f"{'bucket':<19}{head}"]
    for k in (*BUCKETS, COMM):
        lines.append(f"{k:<19}" + "".join(f"{r.peak_buckets.get(k, 0) / MiB:>18.2f}{e.get(k, 0) / MiB:>11.2f}"
                                          for r, e in zip(results, ests)))
    lines.append(f"{'peak':<19}" + "".join(f"{r.peak / MiB:>18.2f}{sum(e.values()) / MiB:>11.2f}" for r, e in zip(results, ests)))
    lines.append(f"{'error':<19}" + "".join(f"{'':>18}{fmt_error(sum(e.values()), r.peak):>11}" for r, e in zip(results, ests)))
    lines.append("model states per rank, bytes: " + "; ".join(
        f"rank {r.rank} " + ", ".join(f"{k} {v:,}" for k, v in r.model_state.items()) for r in results))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
