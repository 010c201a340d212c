"""The step after the forward pass: backward replayed in reverse (gradients appear, saved tensors are
freed), then the optimizer step with its temporaries; the peak and the buckets at the peak."""
from __future__ import annotations
from typing import Optional
from ..buckets import empty_buckets
from .spec import ModelSpec
from .states import _shard, _States
from .walk import _Ctx, _T
from .forward import _Forward


def batch_bytes(spec: ModelSpec, B: int, T: int) -> int:
    """The batch tensors (int64), alive through the step (the tracker books them as temporaries).
    MiniGPT: idx, targets; LLaMA: input_ids, labels (B, T); BERT/RoBERTa: input_ids (B, T), labels (B,).
    No attention_mask: without padding the traced batch has none (zoo.make_batch says why); with
    padding the estimator adds it."""
    if spec.task == "cls":
        return 8 * (B * T + B)
    return 8 * 2 * B * T


class _Live:
    """Bucket totals during the replay, and the largest total seen per phase."""

    def __init__(self, static: dict[str, int]):
        self.b = dict(static)
        self.peaks: dict[str, tuple[int, dict]] = {}
        self.where: dict[str, str] = {}      # the op at each phase's peak (for explanations)
        self.at = "start"

    def total(self) -> int:
        return sum(self.b.values())

    def add(self, bucket: str, n: int) -> None:
        self.b[bucket] += n

    def check(self, phase: str, extra: Optional[dict] = None) -> None:
        b = dict(self.b)
        for k, v in (extra or {}).items():
            b[k] += v
        t = sum(b.values())
        if phase not in self.peaks or t > self.peaks[phase][0]:
            self.peaks[phase] = (t, b)
            self.where[phase] = self.at


def _optimizer_temporaries(states: _States, optimizer: str, precision: str, semantics: str,
                           impl: str = "default") -> int:
    """Temporaries of optimizer.step().

    torch AdamW, foreach (CUDA's default, torch/optim/adam.py ``_multi_tensor_adam``):
    ``torch._foreach_sqrt(exp_avg_sqs)`` makes one tensor per parameter at once: the size of all
    trainable parameters. For-loop (CPU's default, ``_single_tensor_adam``): ``denom =
    (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`` makes two tensors of one parameter's
    size while the previous parameter's ``denom`` is still referenced. SGD with momentum updates
    in place. bitsandbytes' 8-bit and paged optimizers run one fused kernel per tensor, and so
    does AdamW with ``fused=True`` (``impl="fused"``: no temporaries).
    """
    sizes = [n * b for _, n, b in states.trainable]
    if not sizes:
        return 0
    if optimizer == "adafactor":
        return adafactor_temporaries([(n, b, states.rows.get(name, 0)) for name, n, b in states.trainable],
                                     foreach=semantics == "cuda")
    if optimizer == "adamw":
        if precision == "fp16-master":   # fp32 master copies: the update reads fp32 gradients
            return max(4 * n for _, n, _ in states.trainable) * 2
        if impl == "fused":
            return 0
        if impl == "foreach" or (impl == "default" and semantics == "cuda"):
            return sum(sizes)
        best, prev = 0, 0
        for sz in sizes:
            best = max(best, prev + 2 * sz)
            prev = sz
        return best
    if precision == "fp16-master":
        return max(4 * n for _, n, _ in states.trainable)
    return 0


def adafactor_temporaries(tensors: list[tuple[int, int, int]], foreach: bool) -> int:
    """Largest temporaries of torch.optim.Adafactor's step over ``tensors`` [(numel, bytes, rows)] in
    parameter order (rows 0: a 1-D tensor), torch/optim/_adafactor.py. Per matrix: the row and column
    means of grad**2 (rows, cols), then ``var_estimate = row_var @ col_var`` (numel) that becomes the
    update; per vector: ``grad * grad`` and ``variance.clone()`` (numel each). The for-loop keeps the
    previous tensor's locals until they are reassigned; foreach (CUDA's default) makes one group
    (dtype, matrix or vector) at once, the previous group's updates still referenced."""
    best = 0
    if foreach:
        groups: dict = {}
        for n, b, rows in tensors:
            groups.setdefault((b, rows > 0), []).append((n, rows))
        prev = 0
        for (b, matrix), ts in groups.items():
            var = sum(n for n, _ in ts) * b
            if matrix:
                best = max(best, prev + sum(r for _, r in ts) * b, prev + sum(n // r for n, r in ts) * b,
                           prev + var + len(ts) * b)      # + row_var.mean(-2): one element per matrix
            else:
                best = max(best, prev + var)               # grad * grad, freed, then the clones
            prev = var
        return best
    live = {"var": 0, "sq": 0, "row": 0, "col": 0}

    def make(local: str, nbytes: int, extra: int = 0) -> None:
        nonlocal best
        best = max(best, sum(live.values()) + nbytes + extra)
        live[local] = nbytes
    for n, b, rows in tensors:
        if rows:
            make("row", rows * b)
            make("col", n // rows * b)
            make("var", n * b, b)
        else:
            make("sq", n * b)
            make("var", n * b)
    return best


def replay_step(fw: _Forward, ctx: _Ctx, states: _States, optimizer: str, grad_scale: int = 1,
                opt_scale: int = 1, extra_copies: int = 0, fsdp=None, grads_alive: bool = False,
                optimizer_impl: str = "default") -> dict:
    """Peak bucket totals of the forward pass, the backward pass and the optimizer step.

    The backward pass is replayed over the forward's op list in reverse, as autograd runs it:
    each op allocates the gradients of its inputs (and of its parameters, plus any kernel
    workspace), then frees the gradient of its output and the tensors it saved, and only then
    hands the new gradients on. A gradient that reaches a tensor twice (a residual stream, a
    layer's input read by its frozen weight and its LoRA adapter) is summed out of place: the sum
    is a new tensor, briefly beside both parts. A parameter's gradient becomes
    a ``.grad`` (bucket gradients) once all its contributions are summed (the tied LM head and
    embedding contribute twice). Under autocast the 16-bit gradient of a weight is cast to fp32.
    With checkpointing, a block's saved tensors come back (recomputed) when backward reaches it.

    ``fsdp`` (a sharding.FsdpPlan): FSDP2's schedule, unit by unit (bucket ``communication`` for
    its buffers). The root's weights stay gathered from forward to the end of backward; backward
    gathers each block when it reaches it and prefetches the next block's all-gather buffer; a
    block's gradients stay unsharded (temporaries) until its post-backward reduce-scatters them
    (its buffer beside them), then its gathered weights are freed. ``grads_alive``: the full
    gradients are alive all step and each new one is added into them, then freed: DDP with
    ``gradient_as_bucket_view`` (its buckets), zero_grad(set_to_none=False), and every micro-batch
    after the first of a gradient accumulation.
    """
    static = empty_buckets()
    static["weights_trainable"] = states.weights_trainable
    static["weights_frozen"] = states.weights_frozen
    static["optimizer"] = states.optimizer
    static["temporaries"] = batch_bytes(ctx.spec, ctx.B, ctx.T)
    static["weight_copies"] = extra_copies      # ZeRO-3 gather buffers
    if fsdp is not None:
        static["communication"] = 0
    if grads_alive:
        static["gradients"] = states.gradients
    live = _Live(static)
    fs = _FsdpSchedule(fsdp, live) if fsdp is not None else None
    ops = fw.ops
    ckpt = ctx.checkpointing

    # ---------------- forward: everything saved, the autocast cache, the logits and the loss copy
    end = dict(static)
    end["activations"] = fw.activations
    end["weight_copies"] = fw.copies_end_forward
    end["temporaries"] += fw.logits + fw.kept
    if fs is not None:
        end["weight_copies"] += fsdp.full.get(-1, 0)   # the root is not resharded after forward
    live.peaks["forward"] = (sum(end.values()), end)
    extra = fw.fwd_peak - (end["activations"] + end["weight_copies"] + fw.logits + fw.kept)
    if ctx.checkpointing:
        extra = 0   # (the blocks' insides are freed as they go; not modelled)
    if extra > 0:
        # the worst op comes before the end of forward (the head's copies and activations, say, do
        # not exist yet): the buckets of that moment, with what is in flight as temporaries
        saved, copies = fw.fwd_peak_parts
        peak_fwd = dict(end)
        peak_fwd["activations"], peak_fwd["weight_copies"] = saved, end["weight_copies"] - fw.copies_end_forward + copies
        peak_fwd["temporaries"] = static["temporaries"] + fw.fwd_peak - saved - copies
        live.peaks["forward"] = (sum(peak_fwd.values()), peak_fwd)

    # ---------------- backward
    # alive at its start: saved tensors (refcounted: a storage can be saved by several ops)
    rc: dict[int, int] = {}
    size: dict[int, tuple[int, str]] = {}
    for op in ops:
        if ckpt and op.block >= 0:
            continue
        for sid, b, bucket in op.saves:
            rc[sid] = rc.get(sid, 0) + 1
            size[sid] = (b, bucket)
    live.b["temporaries"] += fw.logits + fw.kept
    if fs is not None:
        live.add("weight_copies", fsdp.full.get(-1, 0))
    for sid, (b, bucket) in size.items():
        live.add(bucket, b)
    ckpt_alive = {}
    if ckpt:
        for i, b in enumerate(fw.ckpt_inputs):
            ckpt_alive[i] = b
            live.add("activations", b)
    live.check("backward")

    gbuf: dict[int, list] = {}          # id(tensor) -> [bytes, refs] (shared by pass-through)

    def release(buf: list) -> None:
        buf[1] -= 1
        if buf[1] == 0:
            live.add("temporaries", -buf[0])

    def give(x: _T, buf: list) -> None:
        """x receives gradient buffer buf (accumulating into what it has)."""
        old = gbuf.get(id(x))
        if old is None:
            gbuf[id(x)] = buf
            return
        # out-of-place sum: autograd's InputBuffer adds in place only into a plain dense tensor
        # it holds the last reference to, and not into a view: a Linear's input gradient is a
        # view of mm's output (reshaped back to (..., in)), a pass-through gradient is shared,
        # and fake tensors (a tensor subclass) are never added in place. Tracked (fake and CPU):
        # every accumulation in a MiniGPT backward is an add.Tensor, e.g. x@A.T's gradient + the
        # frozen down_proj's: 3 MLP-wide tensors at once with LoRA on the MLP.
        new = [old[0], 1]
        live.add("temporaries", new[0])
        live.check("backward")
        release(old)
        release(buf)
        gbuf[id(x)] = new

    contributions: dict[str, int] = {}
    for op in ops:
        for key, *_ in op.pgrads:
            contributions[key] = contributions.get(key, 0) + 1
    pending: dict[str, int] = {}
    recomputed: set = set()
    current_block = None
    loss_op = [op for op in ops if op.name == "nll_loss"][-1]
    gbuf[id(loss_op.outs[0])] = [4, 1]
    live.add("temporaries", 4)
    for op in reversed(ops):
        if not any(id(o) in gbuf for o in op.outs):
            continue
        if ckpt and op.block != current_block:
            if current_block is not None and current_block >= 0 and current_block in ckpt_alive:
                live.add("activations", -ckpt_alive.pop(current_block))
            current_block = op.block
        if ckpt:
            if op.block >= 0 and op.block not in recomputed and op.unpacks:
                # (triggered by the first saved tensor backward unpacks; ops that saved nothing,
                # e.g. an NF4 layer, run their backward before it)
                recomputed.add(op.block)
                # recomputing the block: its saved tensors, the autocast cache and the tensors
                # in flight at the worst op, then only the saved ones stay for its backward
                live.at = f"recomputing block {op.block}"
                live.check("backward", {"temporaries": fw.recompute_peak.get(op.block, 0)})
                for o2 in ops:
                    if o2.block != op.block:
                        continue
                    for sid, b, bucket in o2.saves:
                        if sid == fw.ckpt_sids[op.block]:
                            continue      # the block's input: the checkpoint kept it already
                        if sid not in rc:
                            live.add(bucket, b)
                            size[sid] = (b, bucket)
                        rc[sid] = rc.get(sid, 0) + 1
        live.at = f"{op.name} (block {op.block})" if op.block >= 0 else op.name
        if fs is not None:
            fs.reach(op.block)
        out_buf = gbuf.get(id(op.outs[0]))
        new_bufs = []
        for x in op.ins:
            if op.passthrough and out_buf is not None and x.el == op.outs[0].el \
                    and x.gbytes == op.outs[0].gbytes:
                out_buf[1] += 1
                new_bufs.append((x, out_buf))
            else:
                buf = [x.gbytes, 1]
                live.add("temporaries", buf[0])
                new_bufs.append((x, buf))
        pg = sum(n * ce for _, n, ce, _ in op.pgrads)
        live.add("temporaries", pg)
        if op.work_before:   # (e.g. an NF4 decode, before the gradients it computes exist)
            fresh = pg + sum(buf[0] for x, buf in new_bufs if buf is not out_buf)
            live.check("backward", {"temporaries": op.work_before - fresh})
        live.check("backward", {"temporaries": op.work})
        # autograd's engine (evaluate_function): the node's incoming gradient goes when
        # call_function returns and its saved tensors with release_variables(), both before
        # the new gradients are added into the next nodes' input buffers
        for o in op.outs:
            buf = gbuf.pop(id(o), None)
            if buf is not None:
                release(buf)
        for sid, b, bucket in op.saves:
            if sid in rc:
                rc[sid] -= 1
                if rc[sid] == 0:
                    live.add(size[sid][1], -size[sid][0])
                    del rc[sid]
        for x, buf in new_bufs:
            give(x, buf)
        for key, n, ce, fe in op.pgrads:
            if ce != fe:   # the 16-bit gradient of an autocast copy, cast to the weight's dtype
                live.add("temporaries", n * fe)
                live.check("backward")
                live.add("temporaries", -n * ce)
            contributions[key] -= 1
            pending[key] = n * fe
            if contributions[key] == 0 and fs is not None:
                fs.grad_done(key, n * fe)     # unsharded until its unit's reduce-scatter
            elif contributions[key] == 0 and grads_alive:
                live.add("temporaries", -n * fe)   # added into its .grad / bucket, alive all along
            elif contributions[key] == 0:   # (ZeRO-2/3: reduce-scattered, each GPU keeps 1/G)
                live.add("temporaries", -n * fe)
                live.add("gradients", _shard(n * fe, grad_scale))
        live.check("backward")
    if fs is not None:
        fs.finish()
    # the graph is freed: whatever is still saved goes, and the output (logits) is dropped
    for sid in list(rc):
        live.add(size[sid][1], -size[sid][0])
    for b in ckpt_alive.values():
        live.add("activations", -b)
    for buf in {id(b): b for b in gbuf.values()}.values():
        live.add("temporaries", -buf[0] * (buf[1] > 0))
    live.b["temporaries"] = static["temporaries"]
    live.b["weight_copies"] = 0
    live.b["activations"] = 0
    live.b["gradients"] = states.gradients
    if fs is not None:
        live.b["communication"] = 0
    live.at = "end of backward"
    live.check("backward")
    live.at = "optimizer.step()"
    # ---------------- optimizer step
    live.check("optimizer", {"temporaries": _shard(_optimizer_temporaries(
        states, optimizer, ctx.precision, ctx.semantics, optimizer_impl), opt_scale)})
    live.peaks["_where"] = live.where
    return live.peaks


class _FsdpSchedule:
    """FSDP2's unshard / prefetch / reduce-scatter / reshard events during the backward replay."""

    def __init__(self, plan, live: _Live):
        self.plan, self.live = plan, live
        self.current = None                 # the block whose backward runs
        self.prefetched: set = set()
        self.unsharded_grads: dict = {}     # unit -> bytes of its finished, unsharded gradients

    def reach(self, block: int) -> None:
        if block < 0 or block == self.current:
            return
        if self.current is not None:
            self._post_backward(self.current)
        p, live = self.plan, self.live
        live.at = f"FSDP2 all-gather of block {block}"
        if block not in self.prefetched:
            live.add("communication", p.buffer(block))
        live.add("weight_copies", p.full.get(block, 0))      # copied out of the all-gather buffer
        live.check("backward")
        live.add("communication", -p.buffer(block))
        self.prefetched.discard(block)
        if block - 1 >= 0:                                    # backward prefetch of the next block
            live.add("communication", p.buffer(block - 1))
            self.prefetched.add(block - 1)
        live.check("backward")
        self.current = block

    def grad_done(self, key: str, nbytes: int) -> None:
        unit = self.plan.grads_of.get(key, -1)
        self.unsharded_grads[unit] = self.unsharded_grads.get(unit, 0) + nbytes

    def _post_backward(self, unit: int) -> None:
        p, live = self.plan, self.live
        live.at = f"FSDP2 reduce-scatter of {'the root' if unit < 0 else f'block {unit}'}"
        live.add("communication", p.trainable_buffer(unit))   # the gradients, copied in
        live.check("backward")
        live.add("temporaries", -self.unsharded_grads.pop(unit, 0))
        live.add("gradients", p.trainable_shard.get(unit, 0))
        live.check("backward")
        live.add("communication", -p.trainable_buffer(unit))
        live.add("weight_copies", -p.full.get(unit, 0))       # resharded

    def finish(self) -> None:
        if self.current is not None:
            self._post_backward(self.current)
        self._post_backward(-1)
