"""Predict the memory of one training step in closed form, bucket by bucket, without running it.

    est = estimate("llama-7b", method="qlora", rank=8, targets="all-linear", precision="amp-bf16",
                   batch=1, seq=512)   # or estimate(run) with run = RunSpec(...) (run.py), the same spec
    print(est.table())       # MiB or GiB (binary units; the table says which)
    est.to_dict()            # integer bytes: the buckets of buckets.py, "peak", and the configuration

The buckets mean what they mean in the tracker (buckets.py, tracker.py): an estimate and a
measurement of the same setup can be compared line by line (``python -m minigpt.memory compare``).

Model states (weights, gradients, optimizer state) per parameter tensor of numel n
-----------------------------------------------------------------------------------
=============  =========  =========  =====================================  ================
precision      weights    gradients  AdamW state                            weight copies
=============  =========  =========  =====================================  ================
fp32           4n         4n         8n (+4 B step counter per tensor)      0
amp-fp16/bf16  4n         4n         8n                                     2n per Linear weight
bf16 / fp16    2n         2n         4n (moments in the parameter dtype)    0
fp16-master    2n         2n         4n master copy + 8n moments = 12n      0
=============  =========  =========  =====================================  ================

So full fine-tuning costs 16 bytes per parameter in fp16-master (the accounting of Rajbhandari
et al. 2020, "ZeRO", section 3.1: 2 + 2 + K with K = 12) and 16 bytes *persistent* in PyTorch AMP
(4 + 4 + 8), plus 2 bytes per Linear weight for the autocast copies that live through the step:
18 at the peak. The step counters of ``torch.optim.AdamW`` are float32 scalars on the host when
the parameters are on a GPU (0 GPU bytes, semantics="cuda") and 4 bytes each on a CPU run.

* SGD with momentum: one buffer in the parameter dtype (4n in fp32), no counter.
* 8-bit AdamW (bitsandbytes 0.50.2 ``Optimizer2State``): for a tensor with n >= 4096 elements,
  two uint8 states (2n) plus two float32 absmax per block of 256 (8 * ceil(n / 256)); smaller
  tensors keep two float32 states (8n); plus the two 256-entry float32 code tables (2 KiB, shared).
* Adafactor (``torch.optim.Adafactor``): factored second moments, a row vector (rows) and a
  column vector (cols) per matrix, a full vector per 1-D tensor, in the parameter dtype, and a
  float32 step per tensor (on the host, as AdamW's, under semantics="cuda").
* Paged AdamW (bitsandbytes ``PagedAdamW``): float32 states, but every tensor of >= 100,000
  elements is allocated with ``cudaMallocManaged`` (unified memory): the driver pages it to host
  RAM when the GPU runs short, so at the peak its GPU-resident bytes are about 0. Only the states
  of small tensors count here; the paged bytes are reported in ``Estimate.paged_bytes``.
* LoRA: only A (r x in) and B (out x r) of each adapted layer are trainable (fp32 adapters, as
  peft's ``autocast_adapter_dtype`` default and minigpt.lora, or ``adapter_dtype`` bf16/fp16: 2n,
  and under autocast no cached 16-bit copies of A and B); the base is frozen (weights_frozen).
* QLoRA: every Linear of the base except the LM head and the classifier head is stored in NF4
  (minigpt.nf4, bitsandbytes' format): ceil(n/2) bytes of 4-bit codes + 4 * ceil(n/64) bytes of
  float32 absmax; with double quantisation the absmax are uint8 (ceil(n/64) bytes) plus float32
  scales per block of 256 absmax (4 * ceil(n / 64 / 256)) and one float32 offset (4 bytes).
* Sharding over G GPUs (ZeRO, Rajbhandari et al. 2020; FSDP's FULL_SHARD = stage 3): stage 1
  divides the optimizer state by G, stage 2 also the gradients, stage 3 also the weights. Stage 3
  gathers one block's weights at a time (two with prefetch): 2 blocks of weights are added to
  weight_copies. Activations are per GPU (each GPU runs its own batch) and are not divided.

Activations: what autograd saves, per transformer block
-------------------------------------------------------
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
section 4.1) count, for a GPT block in 16-bit with dropout and non-fused attention,
``s*b*h*(34 + 5*a*s/h)`` bytes (s = sequence, b = batch, h = width, a = heads): 2 bytes for
every saved tensor element, 1 byte for every dropout mask element. We derive the same count for
each architecture from the model code, op by op, and add what real kernels do differently.
With N = b*s tokens, d = width, f = MLP width, H heads, e = bytes of a matmul output (4 fp32,
2 under autocast or in pure bf16/fp16), r = bytes of the residual stream (4 fp32 and AMP, 2 pure):

MiniGPT block (pre-norm, GELU MLP, minigpt/model.py), full fine-tuning, fused attention, p = 0,
with b*H*s logsumexp floats of the fused kernel (tests check these against the tracker):

    fp32:  N*d*(4 ln_1 input + 4 q/k/v input + 12 q, k, v + 4 attention output (read by o_proj
               in place) + 4 ln_2 input + 4 up input) + N*f*(4 GELU input + 4 down input)
               + 2 LayerNorms * 2 * 4N (mean, rstd) + 4*b*H*s
         = 32*N*d + 8*N*f + 16*N + 4*b*H*s          (= 64 N d + ... with f = 4d)
    AMP:   the residual stream (LayerNorm inputs) stays fp32; every Linear saves its own 16-bit
           cast of its input (q, k and v one each):
           N*d*(4 + 6 + 6 + 2 + 4 + 2) + N*f*(2 + 2) + 16*N + 4*b*H*s
         = 24*N*d + 4*N*f + 16*N + 4*b*H*s          (= 40 N d + ... with f = 4d)

In pure fp16 with eager attention and dropout on CUDA the same walk gives Korthikanti's
34*s*b*h + 5*a*s^2*b exactly, plus the LayerNorm statistics and the bool causal mask
(tests/memory/test_estimate.py). Eager attention adds the (b, H, s, s) probabilities and copies
of q, k, v made for the batched matmuls; dropout p > 0 adds a mask per dropout: 1 byte per
element on CUDA (``native_dropout``), the input's dtype on CPU (semantics="cpu"), where SDPA with
dropout also falls back to ATen's math path (three s x s fp32 tensors). On CUDA, flash /
memory-efficient attention never store the s x s matrix and apply dropout from a seed.

LoRA and QLoRA change what is saved: a frozen Linear saves no input (its weight gets no
gradient) but, when its input needs a gradient, keeps its weight, which under autocast is a
16-bit *copy* held until backward (weight_copies, 2 bytes per frozen Linear weight). Each adapter
saves the 16-bit cast of its input (N*in*2, fp32 adapters under autocast; the input itself in fp32)
and its rank-r intermediate (N*r*e). Block 0 of a LoRA model saves less: its input (frozen
embeddings) needs no gradient. QLoRA's NF4 layers save nothing: the weight is decoded again in
backward (6 bytes per weight of the layer while decoding: int32 codes + fp32 levels, transient).
transformers' LLaMA is built for training with ``use_cache=False`` (minigpt.memory.zoo), as
fine-tuning configs do: no KV cache is kept.

Gradient checkpointing (per block, ``torch.utils.checkpoint``, non-reentrant) keeps each block's
input (N*d*r) and recomputes one block at a time in backward.

How the estimate is computed. The formulas above are not typed in one by one: ``forward_walk``
walks each architecture's forward pass op by op on *symbolic* tensors (element count, bytes per
element, requires_grad; no torch, no memory), applying to each op the rule of what autograd saves
and what autocast casts; the activations are the sum of the saved shapes. ``replay_step`` then
replays the step in order -- forward (saved tensors, the autocast cache, tensors in flight),
backward in reverse (each op allocates its inputs' and parameters' gradients, then frees its
output's gradient and what it saved; checkpointed blocks are recomputed when backward reaches
them), optimizer step (foreach or for-loop temporaries) -- and the peak is the largest total met.
Model states are exact sums over the parameter tensors. Everything is arithmetic on shapes:
LLaMA-70B takes a few seconds on a laptop.

The package, one concept per module: ``run`` (RunSpec: the run, its arguments checked once),
``spec`` (the model and its parameters), ``states`` (weights,
gradients, optimizer state), ``walk`` and ``layers`` (the symbolic forward ops), ``forward`` (one
forward pass per family), ``replay`` (backward and the optimizer step), ``report`` (Estimate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from ..buckets import fmt_bytes

from .forward import forward_walk
from .replay import batch_bytes, replay_step
from .run import ADAPTER_DTYPES, RunSpec, accumulation_steps, check_int64
from .report import LABEL, Estimate
from .spec import (ADAPTER_METHODS, ATTENTIONS, BNB_8BIT_BLOCK, BNB_MIN_8BIT_SIZE, BNB_PAGED_MIN_NUMEL, METHODS, OPTIMIZER_IMPLS, OPTIMIZERS,
                   PRECISIONS, SEMANTICS, ZERO_STAGES, EstimateError, ModelSpec, PTensor, closed_form_reason,
                   head_plan, is_config_source, linear_layers, lora_plan, model_names, n_parameters, parameter_inventory,
                   resolve_config, resolve_model, resolve_targets, spec_from_config, zoo_source)
from .sharding import SHARDINGS, shard_states  # noqa: F401  (SHARDINGS: the CLI's choices)
from .states import _param_bytes, _shard, model_states, nf4_bytes
from .layers import sdpa_kernel
from .walk import _Ctx

__all__ = ["ADAPTER_DTYPES", "ADAPTER_METHODS", "RunSpec", "ResolvedModel", "estimate_run", "resolve_run_model", "ATTENTIONS", "BNB_8BIT_BLOCK", "BNB_MIN_8BIT_SIZE", "BNB_PAGED_MIN_NUMEL", "METHODS", "head_plan", "OPTIMIZER_IMPLS", "OPTIMIZERS",
           "PRECISIONS", "SEMANTICS", "ZERO_STAGES", "LABEL", "Estimate", "EstimateError", "ModelSpec", "PTensor",
           "accumulation_steps", "asdict_shallow", "batch_bytes", "estimate", "forward_walk", "korthikanti_bytes", "linear_layers",
           "lora_plan", "model_names", "model_states", "n_parameters", "nf4_bytes", "parameter_inventory",
           "replay_step", "resolve_model", "resolve_targets", "spec_from_config"]


def _max_seq(spec: ModelSpec) -> Optional[int]:
    if spec.family == "minigpt":
        return spec.config.block_size
    if spec.family == "roberta":
        return spec.positions - 2        # positions start after the padding index (1)
    if spec.family == "bert":
        return spec.positions
    # rotary: no table to run out of, but the model was trained up to max_position_embeddings;
    # beyond it only with RoPE scaling configured
    cfg = getattr(spec, "config", None)
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if cfg is None or rope.get("rope_type", "default") != "default":   # (transformers 5: "default" = unscaled)
        return None
    return getattr(cfg, "max_position_embeddings", None)


@dataclass
class ResolvedModel:
    """The model of a run, resolved once per call (estimate, measure and compare share it)."""
    name: str
    spec: Optional[ModelSpec]    # None: the closed form does not describe it (``why``), it is traced
    src: Any = None              # hf_models.Resolved (a config) or the zoo source, for the --json spec
    why: Optional[str] = None
    config: bool = False         # given as a config.json / directory / dict / PretrainedConfig


def resolve_run_model(run: RunSpec) -> ResolvedModel:
    """Read ``run.model`` with its overrides and dropout: a config, a zoo name or a config object."""
    model, overrides, dropout = run.model, run.overrides, run.dropout
    if is_config_source(model):          # a config.json, a model directory, a dict, a PretrainedConfig
        src = resolve_config(model, overrides, dropout)
        why = closed_form_reason(src.config, run.seq)
        return ResolvedModel(src.name, None if why else spec_from_config(src.config, src.name), src, why, True)
    if isinstance(model, str):
        from .. import zoo
        fam, key = zoo._resolve(model)
        ov = dict(overrides)
        if dropout is not None:
            if fam == "minigpt":
                ov["dropout"] = float(dropout)
            elif zoo.HF_CONFIGS[key]["kind"] == "llama":
                ov["attention_dropout"] = float(dropout)
            else:
                ov["hidden_dropout_prob"] = ov["attention_probs_dropout_prob"] = float(dropout)
        if fam == "minigpt":
            ov["attention"] = run.attention
        spec = resolve_model(model, **ov)
        return ResolvedModel(model, spec, zoo_source(model, spec, overrides))
    if overrides:
        raise EstimateError("config overrides only work with a model name; change the config object instead.")
    spec = resolve_model(model)
    if dropout is not None:
        spec = ModelSpec(**{**asdict_shallow(spec), "hidden_dropout": 0.0 if spec.family == "llama" else float(dropout),
                            "attn_dropout": float(dropout)})
    return ResolvedModel(getattr(model, "model_type", None) or type(model).__name__, spec)


def estimate(model: Union[RunSpec, str, Any] = "small", *args: Any, **kwargs: Any) -> Estimate:
    """Predict the peak memory of one training step, bucket by bucket, from shapes alone.

    ``estimate(run)`` takes a RunSpec; ``estimate("llama-7b", method="lora", ...)`` takes its fields
    (in this order positionally: model, method, rank, alpha, targets, double_quant, precision,
    optimizer, attention, dropout, batch, seq, checkpointing, semantics, gpus, zero, head_trainable,
    sharding, rank_index, lora_dropout, gpu, micro_batch, set_to_none, optimizer_impl) and builds one;
    other names are config overrides (n_layer=2, num_hidden_layers=2). ``estimate(run, seq=4096)``
    changes a field of ``run``.

    Args (the fields of RunSpec):
        model: a name of minigpt.memory.zoo (tiny, small, minigpt-85m, roberta-base, bert-large,
            llama-7b/13b/70b, minigpt:<preset>), a GPTConfig, or any transformers model given by a
            config.json path, a model directory, a dict with model_type or a PretrainedConfig
            (minigpt.memory.hf_models; configs/ ships some). ``overrides`` change config fields (e.g.
            n_layer=2, num_hidden_layers=2). LLaMA, Mistral, Qwen2, BERT and RoBERTa are sized in closed
            form; any other architecture is traced on fake tensors (estimate/traced.py) and the
            Estimate's label and its one note say so.
        method: "full", "lora", "qlora" (NF4 base, minigpt.nf4 = bitsandbytes' format) or "head"
                (everything frozen but a classification model's head: a linear probe).
        rank, alpha, targets: LoRA rank, scale (bytes do not depend on it) and target layers,
            "all-linear" or names; the shorthand q, k, v, o is resolved per architecture.
            Sequence-classification heads are trained in full (peft's task_type="SEQ_CLS").
        adapter_dtype: "fp32", "bf16" or "fp16" adapters (minigpt.lora's adapter_dtype); None: fp32,
            cast with the model in pure 16-bit precisions; "fp32" there keeps them fp32 (peft's
            ``autocast_adapter_dtype=True`` on a bf16/fp16 model).
        double_quant: QLoRA double quantisation of the NF4 scales.
        precision: "fp32", "amp-fp16", "amp-bf16" (torch.autocast, fp32 weights), "bf16", "fp16"
            (pure: weights, gradients, optimizer state in 16 bits) or "fp16-master" (16-bit
            weights and gradients, fp32 master weights in the optimizer).
        optimizer: "adamw", "sgd" (momentum), "adamw-8bit", "paged-adamw", "paged-adamw-8bit",
            "adafactor" (torch.optim.Adafactor: factored second moments, one row and one column
            vector per matrix, a full vector per 1-D tensor).
        attention: "sdpa" (fused kernel) or "eager" (materialises the T x T scores).
        dropout: probability for every dropout of the model; None keeps the model's default
            (MiniGPT 0, BERT/RoBERTa 0.1, LLaMA 0).
        lora_dropout: dropout on each adapter's input (peft's ``lora_dropout``; 0 by default, as
            in minigpt.lora and peft); it does not change the model's own dropout.
        batch, seq: batch size and sequence length (per GPU).
        micro_batch: gradient accumulation: each forward/backward sees ``micro_batch`` rows and
            ``batch // micro_batch`` of them are summed before the optimizer step (None: no
            accumulation). From the second micro-batch on the gradients are alive through forward
            and backward, so the peak is that micro-batch's.
        optimizer_impl: torch's AdamW implementation: "default" (for-loop on CPU, foreach on CUDA),
            "for-loop", "foreach" (a temporary as large as all trainable parameters at the step) or
            "fused" (no temporaries; its step counters live on the device).
        set_to_none: ``zero_grad(set_to_none=...)``; False keeps zeroed gradients allocated through
            forward and backward (the same effect on the peak as accumulation).
        checkpointing: gradient checkpointing of every block.
        semantics: "cuda" (what CUDA kernels hold: bool dropout masks, flash attention, CUDA's
            autocast lists, foreach optimizers, step counters on the host) or "cpu".
        gpus, zero: data-parallel GPUs and ZeRO stage (0 none; 1 optimizer state, 2 + gradients,
            3 + weights sharded; FSDP FULL_SHARD = 3).
        sharding, rank_index: how the states are split (sharding.py): "flat" (DeepSpeed-style even
            split), "fsdp2" (PyTorch FSDP2, zero=3: per-parameter dim-0 shards, padded) or "ddp"
            (DistributedDataParallel with gradient buckets; zero=1 adds ZeroRedundancyOptimizer);
            the last two differ by rank: ``rank_index`` says which rank to predict.
        gpu: a card (a gpus.GpuSpec or a name of gpus.gpu: "t4", "a100-80gb", ...): SDPA then uses the
            kernel that card dispatches (gpus.sdpa_backend: memory-efficient on a T4 or V100 in fp16),
            and bf16 is refused on cards without it. None: flash for 16-bit inputs (any sm_80+ card).
    """
    run = RunSpec.from_kwargs(model, *args, **kwargs)
    return estimate_run(run, resolve_run_model(run))


def estimate_run(run: RunSpec, m: ResolvedModel) -> Estimate:
    """The estimate of ``run`` whose model ``m`` is already resolved (resolve_run_model)."""
    card = run.card()
    if m.why:                            # no formula for it: trace the step on fake tensors instead
        from .traced import traced_estimate
        return traced_estimate(m.src, m.why, run, card)     # (its trace checks the config's knobs)
    if m.config:
        from .traced import check_config_knobs
        check_config_knobs(m.src, run)
    spec, src, name = m.spec, m.src, m.name
    method, precision, optimizer, rank = run.method, run.precision, run.optimizer, run.rank
    semantics, gpus, zero, sharding, batch, seq = run.semantics, run.gpus, run.zero, run.sharding, run.batch, run.seq
    step_batch, accumulation = run.step_batch, run.accumulation
    limit = _max_seq(spec)
    if limit is not None and seq > limit:
        raise EstimateError(f"seq={seq} is longer than {spec.name}'s {limit} positions; use seq <= {limit}"
                            + (" (or a config with rope_scaling)." if spec.family == "llama" else "."))
    tg = resolve_targets(spec, run.targets) if method in ADAPTER_METHODS else ()
    states = model_states(spec, method, precision, optimizer, rank, tg, run.double_quant, semantics,
                          run.head_trainable, run.adapter_bytes())
    if run.optimizer_impl == "fused" and states.host:   # fused AdamW keeps its step counters on the device
        states.optimizer, states.host = states.optimizer + states.host, 0
    shapes = {n: (i, o) for n, i, o, _ in linear_layers(spec)}
    for n in states.adapted:
        fin, fout = shapes[n]
        if rank > min(fin, fout):
            raise EstimateError(f"rank={rank} is too large for layer {n!r} ({fin} -> {fout}); use rank <= {min(fin, fout)}.")
    ctx = _Ctx(spec, step_batch, seq, precision, semantics, run.attention, spec.hidden_dropout, spec.attn_dropout,
               method, rank, frozenset(states.adapted), frozenset(n for n, _, _ in states.nf4_linear),
               states.head_modules, run.checkpointing, float(run.lora_dropout), card, run.adapter_bytes(),
               run.loss_dtype, run.loss_chunk, run.padding)
    fw = forward_walk(ctx)

    # sharding (ZeRO): divide the model states each GPU keeps
    notes: list[str] = []
    grad_scale = 1
    gather = 0
    plan = shard_states(spec, states, precision, optimizer, semantics, gpus, zero, sharding, run.rank_index,
                        _param_bytes(precision))
    if sharding == "flat":
        if zero >= 1:
            states.optimizer = _shard(states.optimizer, gpus)
        if zero >= 2:
            grad_scale = gpus
            states.gradients = _shard(states.gradients, gpus)
        if zero >= 3:
            states.weights_trainable = _shard(states.weights_trainable, gpus)
            states.weights_frozen = _shard(states.weights_frozen, gpus)
            block_w = sum(t.numel for t in parameter_inventory(spec) if ".0." in t.name and not t.kind.startswith("buffer"))
            gather = 2 * block_w * _param_bytes(precision)
            notes.append("ZeRO-3 gathers one block's weights at a time, two with prefetch: "
                         f"{fmt_bytes(gather)} in weight_copies.")
    elif plan is not None:
        notes.append(f"FSDP2 on rank {run.rank_index} of {gpus}: padded dim-0 shards; in backward one block "
                     "gathered, the next block's all-gather buffer and a reduce-scatter buffer beside it "
                     "(collective buffers are counted in temporaries).")
    else:
        notes.append(f"DDP on rank {run.rank_index} of {gpus}: the gradients are its all-reduce buckets, alive the "
                     "whole step" + (" (ZeroRedundancyOptimizer: this rank's whole parameters' state)."
                                     if zero == 1 else "."))
    if sharding != "flat" and method != "full":
        notes.append(f"sharding={sharding!r} was measured on CPU ranks for full fine-tuning only "
                     "(tests/memory/test_distributed.py); with adapters it follows the same rules, unmeasured.")
    peaks = replay_step(fw, ctx, states, optimizer, grad_scale=grad_scale,
                        opt_scale=gpus if (zero >= 1 and sharding == "flat") else 1,
                        extra_copies=gather, fsdp=plan, grads_alive=sharding == "ddp" or run.grads_alive,
                        optimizer_impl=run.optimizer_impl)
    comm = {}
    # padding: the batch's (B, T) int64 attention_mask, alive all step
    mask_batch = 8 * step_batch * seq if run.padding else 0
    for ph, (tot, b) in list(peaks.items()):
        if ph != "_where" and mask_batch:
            b["temporaries"] += mask_batch
            peaks[ph] = (tot + mask_batch, b)
        if ph != "_where" and "communication" in b:
            comm[ph] = b.pop("communication")
            b["temporaries"] += comm[ph]
    where = peaks.pop("_where", {})
    phase = max(peaks, key=lambda p: peaks[p][0])
    peak, split = peaks[phase]
    check_int64(max(peak, fw.activations), batch, seq)
    notes += _notes(run, states, card, ctx, spec)
    if where.get(phase):
        notes.append(f"peak at: {phase}, {where[phase]}.")
    lora = method in ADAPTER_METHODS
    config = dict(model=name, method=method, rank=rank if lora else None, alpha=run.alpha if lora else None,
                  targets=(tg if isinstance(tg, str) else ",".join(tg)) if lora else None,
                  double_quant=bool(run.double_quant), precision=precision, optimizer=optimizer,
                  attention=run.attention, dropout=spec.attn_dropout if run.dropout is None else float(run.dropout),
                  lora_dropout=float(run.lora_dropout) if lora else None,
                  adapter_dtype=run.adapter_label(),
                  optimizer_impl=run.optimizer_impl, loss_dtype=run.loss_dtype, loss_chunk=run.loss_chunk,
                  padding=bool(run.padding),
                  batch=batch, micro_batch=step_batch, accumulation=accumulation, set_to_none=bool(run.set_to_none),
                  seq=seq, checkpointing=bool(run.checkpointing), semantics=semantics, gpus=gpus, zero=zero,
                  sharding=sharding, rank_index=run.rank_index,
                  gpu=None if card is None else card.aliases[0], spec=src.describe() if src is not None else None)
    model_state = {"weights_trainable": states.weights_trainable, "weights_frozen": states.weights_frozen,
                   "gradients": states.gradients, "optimizer": states.optimizer}
    return Estimate(peak=peak, buckets=split, peak_phase=phase,
                    phases={p: {"peak": v[0], "buckets": v[1]} for p, v in peaks.items()},
                    model_state=model_state, activations=fw.activations, config=config,
                    n_params=states.n_params, n_trainable=states.n_trainable, paged_bytes=states.paged,
                    host_bytes=states.host, activation_terms=dict(fw.terms), notes=notes,
                    communication=comm.get(phase, 0))


def _notes(run: RunSpec, states, card, ctx: _Ctx, spec: ModelSpec) -> list[str]:
    """What the estimate assumed, in words (Estimate.notes)."""
    notes = []
    precision = run.precision
    if run.optimizer.startswith("paged"):
        notes.append(f"paged optimizer: {fmt_bytes(states.paged)} of state (tensors >= 100,000 elements) live "
                     "in CUDA unified memory and page out to host RAM under pressure; counted as 0 GPU bytes "
                     "at the peak (an upper bound adds them back).")
    if states.host and run.semantics == "cuda":
        notes.append(f"{'Adafactor' if run.optimizer == 'adafactor' else 'AdamW'} step counters ({states.host} B) "
                     f"live on the host ({'torch.optim.Adafactor' if run.optimizer == 'adafactor' else 'non-capturable AdamW'}).")
    if precision == "fp16-master":
        notes.append("fp16-master: fp16 weights and gradients, fp32 master weights counted in optimizer "
                     "(the ZeRO paper's K = 12 bytes per parameter for Adam).")
    if precision.startswith("amp") and run.method == "full":
        notes.append("autocast keeps a 16-bit copy of every Linear weight through the step (weight_copies): "
                     "16 persistent bytes per parameter + 2 at the peak.")
    if card is not None and run.attention == "sdpa" and run.semantics == "cuda":
        el = 2 if precision != "fp32" else 4
        notes.append(f"SDPA on the {card.name} ({card.sm_name}): {sdpa_kernel(ctx, el, spec.attn_dropout)} kernel "
                     "(gpus.sdpa_backend)" + (" -- a wheel with cuDNN > 9.15.0 runs cuDNN attention here instead "
                                              "(pytorch/pytorch#162073), which is not modelled." if card.sm[0] in (9, 10)
                                              and el == 2 else "."))
    if run.accumulation > 1:
        notes.append(f"gradient accumulation: {run.accumulation} micro-batches of {run.step_batch}; from the second on "
                     "the gradients are alive through forward and backward (autograd adds into them).")
    elif not run.set_to_none:
        notes.append("zero_grad(set_to_none=False): the zeroed gradients stay allocated through forward and "
                     "backward (autograd adds into them).")
    notes += loss_notes(run)
    if run.padding:
        notes.append("padding: the attention_mask (B, T) int64 is in the batch; with SDPA each layer saves its own "
                     "(B, 1, T, T) copy of the mask in the attention's dtype (and on CUDA a mask rules out flash: "
                     "the memory-efficient kernel runs; its fp32 workspace for a masked 16-bit backward, cuda_rules rule 5, "
                     "is not counted); eager attention saves no more than without it.")
        if spec.n_kv_head != spec.n_head and run.attention == "sdpa":
            notes.append(f"padding with grouped K/V heads ({spec.n_kv_head} for {spec.n_head}): with a mask transformers "
                         "repeats K and V for SDPA (no enable_gqa), and autograd saves the repeated copies.")
    return notes


def loss_notes(run: RunSpec) -> list[str]:
    """What the loss knobs do, and where loss_dtype changes nothing (measured on fake tensors and the
    CPU tracker)."""
    notes = []
    if run.loss_chunk is not None:
        notes.append(f"loss over chunks of {run.loss_chunk} tokens: every chunk's log-softmax is still saved for "
                     "backward; the fp32 copy of the logits (forward) and its gradient (backward) exist one chunk "
                     "at a time, and backward gathers the chunks' gradients into one of the logits' size.")
    if run.loss_dtype == "compute" and run.precision.startswith("amp"):
        return notes + ["loss_dtype='compute' changes nothing under autocast: its policy runs the loss in fp32 "
                        "anyway (CPU: cross_entropy is on the fp32 list, CUDA: log_softmax), from the same 16-bit "
                        "logits."]
    if run.loss_dtype is not None and run.precision == "fp32":
        return notes + [f"loss_dtype={run.loss_dtype!r} changes nothing with precision='fp32': the logits are fp32 "
                        "already."]
    return notes


def asdict_shallow(spec: ModelSpec) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def korthikanti_bytes(s: int, b: int, h: int, a: int, layers: int = 1) -> int:
    """Korthikanti et al. 2022, eq. 1: activation bytes of ``layers`` GPT blocks in 16-bit with
    dropout and non-fused attention, s*b*h*(34 + 5*a*s/h) per block."""
    return layers * (34 * s * b * h + 5 * a * s * s * b)
