"""Measure one training step, bucket by bucket: on a GPU, on a CPU, or with fake tensors.

    report = measure_step(lambda: from_preset("tiny"), (idx, targets), precision="amp-bf16")
    print(report)            # a table in MiB/GiB (binary units, it says so)
    report.to_dict()         # integer bytes

Three modes, one step, one report:

* ``mode="cpu"``  runs the real step on the CPU under the package's live-tensor tracker
  (tracker.py): exact bytes of every tensor storage, bucket by bucket.
* ``mode="fake"`` runs the same step on fake tensors (``torch._subclasses.FakeTensorMode``): shapes,
  dtypes and storages without memory, so a 7B model "trains" on a laptop. It agrees with
  ``mode="cpu"`` to the byte.
* ``mode="cuda"`` runs on the GPU and reads the CUDA caching allocator:
  ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` is the measured peak;
  the tracker runs alongside for the bucket split.

``semantics="cuda"`` (modes cpu and fake) applies the explicit rules of cuda_rules.py where CPU
kernels hold different memory from CUDA kernels; the result is labelled "simulated CUDA".
"""
from __future__ import annotations

import contextlib
import copy
import gc
import sys
import time
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from . import cuda_rules
from ..precision import PRECISIONS as PRECISION_TABLE, RUNNABLE
from .estimate.spec import OPTIMIZER_IMPLS
from .report import STEP_PHASES, MemoryReport, label_for  # noqa: F401 (MemoryReport: re-exported)
from .tracker import TensorTracker

MODES = ("cpu", "fake", "cuda")
SEMANTICS = ("cpu", "cuda")
PRECISIONS = RUNNABLE
_DTYPES = {k: PRECISION_TABLE[k].compute for k in RUNNABLE if k != "fp32"}

ModelOrFactory = Union[nn.Module, Callable[[], nn.Module]]
OptimizerSpec = Union[str, Callable[[list], torch.optim.Optimizer]]


# ------------------------------------------------------------------------- step machinery
def _check_choice(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not known; use one of {', '.join(map(repr, allowed))}.")


def make_optimizer(spec: OptimizerSpec, params: list, foreach: Optional[bool] = None,
                   lr: float = 1e-3, fused: bool = False) -> torch.optim.Optimizer:
    """An optimizer from a name or a callable ``params -> optimizer``.

    Names: "adamw", "adam", "sgd" (momentum 0.9), "sgd-nomomentum", "adafactor", "rmsprop",
    "adagrad", "adamw-8bit" and "paged-adamw-8bit" (bitsandbytes 0.50.2; on CPU tensors the paged
    one falls back to ordinary tensors, as bitsandbytes warns). ``foreach=None`` is torch's default for the device (for-loop on CPU, foreach on CUDA);
    ``fused=True`` (Adam/AdamW): one fused kernel per step, no per-parameter temporaries.
    """
    if callable(spec):
        return spec(params)
    kw = {} if foreach is None else {"foreach": foreach}
    if fused:
        if spec not in ("adamw", "adam"):
            raise ValueError(f"fused applies to optimizer 'adamw' or 'adam', not {spec!r}.")
        kw = {"fused": True}
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kw)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **kw)
    if spec == "sgd-nomomentum":
        return torch.optim.SGD(params, lr=lr, **kw)
    if spec == "adafactor":
        return torch.optim.Adafactor(params, lr=lr, **kw)
    if spec in ("adamw-8bit", "paged-adamw-8bit"):   # bitsandbytes: one kernel per tensor, no foreach
        import bitsandbytes as bnb
        return (bnb.optim.AdamW8bit if spec == "adamw-8bit" else bnb.optim.PagedAdamW8bit)(params, lr=lr)
    if spec == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, **kw)
    if spec == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, **kw)
    raise ValueError(f"optimizer={spec!r} is not known; use one of 'adamw', 'adam', 'sgd', "
                     f"'sgd-nomomentum', 'adafactor', 'rmsprop', 'adagrad', 'adamw-8bit', 'paged-adamw-8bit', or a callable "
                     f"taking the trainable parameters and returning an optimizer.")


def loss_of(out: Any) -> torch.Tensor:
    """The loss of a model output: ``.loss``, else the 2nd item of a tuple, else the mean."""
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, (tuple, list)) and len(out) >= 2 and isinstance(out[1], torch.Tensor):
        loss = out[1]
    if loss is None and isinstance(out, torch.Tensor):
        loss = out.float().mean() if not out.is_floating_point() else out.mean()
    if loss is None:
        raise ValueError("The model returned no loss: pass labels/targets in the batch so the output "
                         "has a .loss (or returns (logits, loss)), or return a plain tensor.")
    return loss


def call_model(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, torch.Tensor):
        return model(batch)
    raise TypeError(f"batch must be a dict of keyword arguments, a tuple of positional arguments or "
                    f"a tensor, got {type(batch).__name__}.")


def _replace_tensors(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Swap every parameter and buffer for fn(tensor), keeping tied tensors tied.

    Used instead of ``model.to()`` because fake parameters cannot be moved or cast in place.
    """
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                new = fn(p)
                memo[id(p)] = p if new is p else nn.Parameter(new.detach(), requires_grad=p.requires_grad)
            mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is None:
                continue
            if id(b) not in memo:
                memo[id(b)] = fn(b)
            mod._buffers[name] = memo[id(b)]


def to_fake(model: nn.Module, fake_mode) -> nn.Module:
    """Make every parameter and buffer a fake CPU tensor of ``fake_mode``.

    A model built on ``meta`` gets fake CPU tensors of the same shape and dtype (no values); a real
    model gets fake copies; parameters already fake in this mode are kept as they are.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    def fake(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor) and t.fake_mode is fake_mode and t.device.type != "meta":
            return t
        if t.device.type == "meta":
            with fake_mode:
                return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
        return fake_mode.from_tensor(t.detach())

    _replace_tensors(model, fake)
    return model


def cast_model(model: nn.Module, dtype: torch.dtype, fake_mode=None, keep_adapters: bool = False) -> nn.Module:
    """Pure low precision: cast floating parameters and buffers to dtype (works on fake models);
    ``keep_adapters``: LoRA's A and B keep the dtype apply_lora gave them (peft's fp32 adapters on a
    16-bit model, ``autocast_adapter_dtype=True``)."""
    from ..lora import LoRALinear
    keep = {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in (m.A, m.B)} if keep_adapters else set()

    def cast(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point() or t.dtype == dtype or id(t) in keep:
            return t
        with (fake_mode if fake_mode is not None else contextlib.nullcontext()):
            return t.detach().to(dtype)
    _replace_tensors(model, cast)
    return model


def enable_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "set_gradient_checkpointing"):          # minigpt.GPT
        model.set_gradient_checkpointing(True)
    elif hasattr(model, "gradient_checkpointing_enable"):     # transformers models
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gpt") and hasattr(model.gpt, "set_gradient_checkpointing"):  # GPTClassifier
        model.gpt.set_gradient_checkpointing(True)
    else:
        raise ValueError(f"{type(model).__name__} has no gradient-checkpointing switch; pass "
                         f"checkpointing=False or a minigpt/transformers model.")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, upcast: bool = True,
                   chunk: Optional[int] = None, ignore_index: int = -100, **_: Any) -> torch.Tensor:
    """transformers' ForCausalLMLoss (labels padded by one and shifted, mean over the counted tokens)
    with the upcast optional (``upcast=False``: cross_entropy on the logits' own dtype) and, with
    ``chunk``, over chunks of that many tokens, as torchtune's CEWithChunkedOutputLoss and litgpt's
    chunked_cross_entropy do: each chunk upcast and summed alone, so only one chunk's fp32 copy exists
    at a time (autograd still saves every chunk's log-softmax)."""
    shift = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()    # (B, T)
    flat, targets = logits.view(-1, vocab_size), shift.view(-1).to(logits.device)           # (N, V), (N,)
    if chunk is None:
        return nn.functional.cross_entropy(flat.float() if upcast else flat, targets, ignore_index=ignore_index)
    losses = [nn.functional.cross_entropy(x.float() if upcast else x, t, ignore_index=ignore_index,
                                          reduction="sum") for x, t in zip(flat.split(chunk), targets.split(chunk))]
    return torch.stack(losses).sum() / (targets != ignore_index).sum()


def set_causal_lm_loss(model: nn.Module, loss_dtype: Optional[str] = None, chunk: Optional[int] = None) -> None:
    """Make a transformers causal LM compute its loss in fp32 (``"fp32"``, its default) or in the
    logits' dtype (``"compute"``), over chunks of ``chunk`` tokens (None: all at once), through its
    ``loss_function`` hook."""
    if loss_dtype is not None:
        _check_choice("loss_dtype", loss_dtype, ("fp32", "compute"))
    name = type(model).__name__
    if not hasattr(model, "loss_function") or not ("CausalLM" in name or name.endswith("LMHeadModel")):
        raise ValueError(f"loss_dtype and loss_chunk apply to transformers causal LMs (their loss_function), not "
                         f"to a {type(model).__name__}; drop them.")
    up = loss_dtype != "compute"
    model.loss_function = lambda logits, labels, vocab_size, **kw: causal_lm_loss(logits, labels, vocab_size, up,
                                                                                  chunk, **kw)


def logical_parameter_count(model: nn.Module) -> int:
    """Parameters as the model has them logically: an NF4 weight (minigpt.nf4.NF4Linear) counts its
    in x out elements, not its packed 4-bit storage (which is buffers, not parameters), so QLoRA and
    LoRA of the same model report the same count."""
    from ..nf4 import NF4Linear
    return (sum(p.numel() for p in model.parameters())
            + sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear)))


class Session:
    """A model, optimizer and batch ready to step, in one of the three modes.

    Shared by measure_step and memory_timeline so both run exactly the same step.
    """

    def __init__(self, model_or_factory: ModelOrFactory, batch: Any, optimizer: OptimizerSpec = "adamw",
                 precision: str = "fp32", checkpointing: bool = False, mode: str = "cpu",
                 semantics: str = "cpu", keep_outputs: bool = True, set_to_none: bool = True,
                 accumulation: int = 1, optimizer_impl: str = "default", keep_adapters: bool = False,
                 loss_dtype: Optional[str] = None, loss_chunk: Optional[int] = None):
        _check_choice("mode", mode, MODES)
        _check_choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
        if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"accumulation must be a positive integer (micro-batches per optimizer step), "
                             f"got {accumulation!r}.")
        self.set_to_none, self.accumulation = bool(set_to_none), accumulation
        _check_choice("semantics", semantics, SEMANTICS)
        _check_choice("precision", precision, PRECISIONS)
        if mode == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("mode='cuda' needs a CUDA GPU and a CUDA build of torch; on this machine "
                               "use mode='cpu' or mode='fake' (add semantics='cuda' to simulate a GPU).")
        if mode == "cuda":
            semantics = "cuda"  # the real thing, no simulation
        self.mode, self.semantics, self.precision = mode, semantics, precision
        self.checkpointing, self.keep_outputs = checkpointing, keep_outputs
        self.optimizer_name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")
        self.fake_mode = None
        if mode == "fake":
            from torch._subclasses.fake_tensor import FakeTensorMode
            # allow_non_fake_inputs: module-level constant tensors (e.g. the NF4 code table) are
            # converted to fake tensors when an op meets them
            self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)

        # --- the model
        is_module = isinstance(model_or_factory, nn.Module)
        if not is_module and not callable(model_or_factory):
            raise TypeError("model_or_factory must be an nn.Module or a callable that returns one.")
        with self._ctx():
            model = model_or_factory if is_module else model_or_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the factory returned {type(model).__name__}, not an nn.Module.")
        if mode == "fake":
            if is_module:  # a copy: the caller's module keeps its real (or meta) parameters
                model = copy.deepcopy(model)
            model = to_fake(model, self.fake_mode)
        elif any(p.is_meta for p in model.parameters()):
            raise ValueError("The model is on the meta device (no values): use mode='fake', or build it "
                             "on a real device for mode='cpu'/'cuda'.")
        if mode == "cuda":
            model = model.to("cuda")
        if precision in ("bf16", "fp16"):
            cast_model(model, _DTYPES[precision], self.fake_mode, keep_adapters)
        if checkpointing:
            enable_checkpointing(model)
        if loss_dtype is not None or loss_chunk is not None:
            set_causal_lm_loss(model, loss_dtype, loss_chunk)
        model.train()
        self.model = model
        self.device = torch.device("cuda" if mode == "cuda" else "cpu")

        # --- the batch (float inputs follow a pure low-precision model's dtype)
        def prep(t):
            if not isinstance(t, torch.Tensor):
                return t
            if precision in ("bf16", "fp16") and t.is_floating_point():
                t = t.to(_DTYPES[precision])
            if mode == "fake":
                return self.fake_mode.from_tensor(t)
            return t.to(self.device)
        self.batch = tree_map(prep, batch)

        # --- the optimizer: CUDA's default is foreach=True (see cuda_rules.FOREACH_OPTIMIZER)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("The model has no trainable parameters (requires_grad=True); unfreeze "
                             "some, e.g. apply LoRA, before measuring a training step.")
        foreach = cuda_rules.optimizer_foreach(semantics) if mode != "cuda" else None
        if optimizer_impl in ("for-loop", "foreach"):     # an explicit choice overrides the device's
            foreach = optimizer_impl == "foreach"
        with self._ctx():
            self.opt = make_optimizer(optimizer, self.trainable, foreach=foreach, fused=optimizer_impl == "fused")
        self.n_params = logical_parameter_count(model)
        self.n_trainable = sum(p.numel() for p in self.trainable)

    def _ctx(self):
        return self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()

    def _step_ctx(self):
        """Fake mode: what the model code would decide from values it cannot read on fake tensors.

        transformers (masking_utils.find_packed_sequence_indices) reads the position ids that a
        model without a KV cache makes itself (``arange`` per row) to detect packed sequences; on
        fake tensors it cannot, assumes packing and materialises a (B, 1, T, T) mask that a real
        run never builds (SDPA then gets a mask instead of ``is_causal``). When the batch brings no
        position ids of its own, the model's are one sequence per row: say so.
        """
        stack = contextlib.ExitStack()
        mu = sys.modules.get("transformers.masking_utils")
        has_pos = isinstance(self.batch, dict) and "position_ids" in self.batch
        if self.fake_mode is not None and mu is not None and not has_pos \
                and hasattr(mu, "find_packed_sequence_indices"):
            orig = mu.find_packed_sequence_indices
            mu.find_packed_sequence_indices = lambda position_ids: None
            stack.callback(setattr, mu, "find_packed_sequence_indices", orig)
        return stack

    def _scalars(self):
        """Fake mode: torch.optim.Adafactor reads two scalars per tensor with ``.item()`` (the step and
        the norm of the parameter and of its update) to scale its update; fake tensors have no values,
        and the values move no memory: read them as 1.0 during the step."""
        if self.fake_mode is None or not isinstance(self.opt, torch.optim.Adafactor):
            return contextlib.nullcontext()
        from torch._subclasses.fake_tensor import FakeTensor
        stack = contextlib.ExitStack()
        item = torch.Tensor.item
        torch.Tensor.item = lambda t: 1.0 if isinstance(t, FakeTensor) else item(t)
        stack.callback(setattr, torch.Tensor, "item", item)
        return stack

    def _autocast(self):
        if self.precision in ("amp-fp16", "amp-bf16"):
            return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])
        return contextlib.nullcontext()

    def step(self, tracker: Optional[TensorTracker] = None) -> None:
        """zero_grad(set_to_none), then ``accumulation`` times forward and backward (the loss divided
        by ``accumulation``, gradients summed into .grad), then the optimizer step.

        With a tracker, the forward/backward/optimizer phases are marked on it, and the optimizer
        state is (re-)registered after the step (it is created inside the first step()).
        """
        def phase(name):
            if tracker is not None:
                tracker.set_phase(name)

        rules = (cuda_rules.simulate(self.precision) if self.semantics == "cuda" and self.mode != "cuda"
                 else contextlib.nullcontext())
        with self._ctx(), rules, self._step_ctx():
            self.opt.zero_grad(set_to_none=self.set_to_none)
            with (tracker if tracker is not None else contextlib.nullcontext()):
                for _ in range(self.accumulation):
                    phase("forward")
                    with self._autocast():
                        out = call_model(self.model, self.batch)
                        loss = loss_of(out)
                        if self.accumulation > 1:
                            loss = loss / self.accumulation
                    if not self.keep_outputs:
                        del out
                    phase("backward")
                    loss.backward()
                    del loss
                    if self.keep_outputs:
                        del out
                phase("optimizer")
                with self._scalars():
                    self.opt.step()
                if tracker is not None:
                    tracker.register_optimizer(self.opt)
                phase("end")


def measure_step(model_or_factory: ModelOrFactory, batch: Any, optimizer: OptimizerSpec = "adamw",
                 precision: str = "fp32", checkpointing: bool = False, mode: str = "cpu",
                 semantics: str = "cpu", *, keep_outputs: bool = True,
                 events: Optional[list] = None, set_to_none: bool = True,
                 accumulation: int = 1, optimizer_impl: str = "default",
                 keep_adapters: bool = False, loss_dtype: Optional[str] = None,
                 loss_chunk: Optional[int] = None) -> MemoryReport:
    """Peak memory of one training step, split into buckets (see buckets.py).

    Args:
        model_or_factory: an ``nn.Module`` or a zero-argument callable that builds one. The step
            changes the model's weights and adds optimizer state: pass a factory (or a copy) to keep
            a model untouched. For ``mode="fake"`` a factory is called inside ``FakeTensorMode`` and
            a module is copied first; a model built on ``meta`` is given fake parameters of the same
            shapes.
        batch: a dict of keyword arguments or a tuple of positional arguments for the model (or a
            single tensor). The loss is the output's ``.loss``, else the second item of a returned
            tuple, else the mean of a plain tensor output.
        optimizer: "adamw" (default), "adam", "sgd" (momentum 0.9), "sgd-nomomentum", "adafactor",
            "rmsprop", "adagrad", or a callable taking the trainable parameters.
        precision: "fp32"; "amp-fp16"/"amp-bf16" (``torch.autocast``, fp32 weights); "bf16"/"fp16"
            (pure: weights, gradients and optimizer state in that dtype).
        checkpointing: gradient checkpointing (minigpt and transformers models).
        mode: "cpu" (real step, live-tensor tracker), "fake" (fake tensors, no memory used) or
            "cuda" (real step on the GPU, measured by the caching allocator).
        semantics: "cpu" (what CPU kernels hold) or "cuda" (CPU/fake run with the rules of
            cuda_rules.py: what a CUDA run would hold; labelled "simulated CUDA").
        keep_outputs: hold the model output (e.g. logits) until backward ends, as
            ``logits, loss = model(x, y); loss.backward()`` does. False frees it after the loss.
        set_to_none: ``optimizer.zero_grad(set_to_none=...)``. False keeps the zeroed gradients
            allocated through the next forward and backward (autograd then adds into them).
        accumulation: gradient accumulation: ``batch`` is one micro-batch, run this many times
            (forward and backward, loss / accumulation) before the optimizer step; from the
            second micro-batch on, the gradients are alive through forward and backward.
        optimizer_impl: "default" (the device's: for-loop on CPU, foreach on CUDA), "for-loop",
            "foreach" or "fused" (torch's implementations of Adam/AdamW; fused keeps its step
            counters on the device).
        keep_adapters: precision "bf16"/"fp16" casts the model but LoRA's A and B keep their dtype
            (RunSpec.adapter_dtype "fp32" on a 16-bit model, peft's default).
        events: a list to receive the step's allocator events (tracker ``record_events``: the
            registered states first, then the step), for ``allocator.replay``.

    What step is measured: this function first takes one *untracked* warm-up step (forward,
    backward, optimizer step), so the optimizer state exists, as in step 2 of real training. Then
    ``zero_grad(set_to_none=True)`` frees the warm-up gradients, as real loops do before forward,
    and the measured step runs: forward, backward, ``optimizer.step()``. The peak is the largest
    sum of live storages (CPU/fake) or ``max_memory_allocated`` (CUDA) between the start of that
    forward and the end of that step; the gradients are still alive at its end.

    Optimizer state, exactly: AdamW keeps two moments per trainable parameter (8 bytes per fp32
    parameter, 4 per bf16 one) and a float32 scalar ``step`` per parameter *tensor* (4 bytes each on
    CPU). On CUDA a non-capturable, non-fused AdamW keeps ``step`` on the host (0 GPU bytes; the
    "cuda" semantics books it outside the buckets); with ``capturable=True`` or ``fused=True`` it is a
    4-byte device scalar per tensor. SGD with momentum keeps one buffer per parameter.

    CUDA: ``torch.cuda.max_memory_allocated()`` counts bytes in blocks handed to tensors (rounded
    up to 512 bytes); ``max_memory_reserved()`` counts what the caching allocator holds from the
    driver, including cached free blocks and fragmentation, so it is larger and closer to what
    nvidia-smi shows (which adds the CUDA context, a few hundred MiB). Both are reported.
    """
    s = Session(model_or_factory, batch, optimizer, precision, checkpointing, mode, semantics, keep_outputs,
                set_to_none, accumulation, optimizer_impl, keep_adapters, loss_dtype,
                loss_chunk)
    s.step()  # the untracked warm-up step: optimizer state now exists
    if mode == "cuda":
        # the warm-up's cyclic garbage out of the caching allocator's count; the tracker of the CPU
        # and fake modes counts only the storages it registers or sees made, so there a full
        # collection (~0.15 s with transformers imported) would change nothing
        gc.collect()
    tracker = TensorTracker(semantics=s.semantics, gpu_only=(mode == "cuda"),
                            record_events=events is not None)
    tracker.register_module(s.model)
    tracker.register_optimizer(s.opt)
    tracker.register(s.batch, "temporaries", data=True)
    start = tracker.snapshot()
    reserved = None
    if mode == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    s.opt.zero_grad(set_to_none=s.set_to_none)
    tracker.reset_peak()
    t0 = time.perf_counter()
    s.step(tracker)
    seconds = time.perf_counter() - t0
    if events is not None:
        events.extend(tracker.events)
    notes = []
    tracker_peak = None
    peak = tracker.peak
    if mode == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
        tracker_peak = tracker.peak
        notes.append("peak = torch.cuda.max_memory_allocated() over the step; the bucket split is the "
                     "tracker's at its own peak.")
    if s.semantics == "cuda" and mode != "cuda":
        notes.append("simulated CUDA: " + "; ".join(cuda_rules.rules_applied(s.precision)))
    phases = {p: {"peak": tracker.phase_peaks[p][0], "buckets": tracker.phase_peaks[p][1]}
              for p in STEP_PHASES if p in tracker.phase_peaks}
    return MemoryReport(
        peak=peak, buckets=dict(tracker.peak_buckets), phases=phases, peak_phase=tracker.peak_phase,
        mode=mode, semantics=s.semantics, label=label_for(mode, s.semantics), precision=precision,
        optimizer=s.optimizer_name, checkpointing=checkpointing, start=start, n_params=s.n_params,
        n_trainable=s.n_trainable, reserved=reserved, tracker_peak=tracker_peak, notes=notes,
        seconds=seconds)
