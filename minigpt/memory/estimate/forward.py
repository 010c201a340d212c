"""One forward pass per family (MiniGPT, BERT/RoBERTa, LLaMA blocks) walked symbolically: what each op
allocates and what autograd saves for backward, with checkpointing."""
from __future__ import annotations
from dataclasses import dataclass, field
from .layers import _Walk
from .spec import EstimateError
from .walk import _Ctx, _T


# ------------------------------------------------------------------------ the families
def _block_minigpt(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f, kv = s.d, s.ffn, s.kv_dim
    a, m = f"blocks.{i}.attn.", f"blocks.{i}.mlp."
    ln_w = c.full
    norm = w.layernorm if s.norm == "layernorm" else w.rmsnorm_minigpt
    h = norm(x, ln_w, f"blocks.{i}.ln_1")
    w.arg_anchor(h)                     # the attention's argument, referenced until it returns
    q = w.linear(h, a + "q_proj", d, d)
    k = w.linear(h, a + "k_proj", d, kv)
    v = w.linear(h, a + "v_proj", d, kv)
    if s.positions == 0:  # rotary (apply_rope): new q and k, promoted to the tables' dtype
        r_el = c.wb
        q, k = w.new_like(q, max(q.el, r_el)), w.new_like(k, max(k.el, r_el))
    y = w.attention(q, k, v, True, c.attention, "minigpt", q_contiguous=s.positions == 0)
    y = w.dropout(w.linear(y, a + "o_proj", d, d), c.p_hidden)
    w.anchors.pop()
    x = w.add(x, y)                                           # residual
    w.anchors.append(x)
    h = norm(x, ln_w, f"blocks.{i}.ln_2")
    w.arg_anchor(h)                     # the MLP's argument
    if s.mlp == "swiglu":
        g = w.act(w.linear(h, m + "gate_proj", d, f), "silu")
        u = w.linear(h, m + "up_proj", d, f)
        hid = w.mul(g, u)
    else:
        hid = w.act(w.linear(h, m + "up_proj", d, f), "gelu")
    y = w.dropout(w.linear(hid, m + "down_proj", f, d), c.p_hidden)
    w.anchors.pop()
    out = w.add(x, y)
    w.anchors.pop()
    return out


def _block_bert(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f = s.d, s.ffn
    p = f"{s.family}.encoder.layer.{i}."
    q = w.linear(x, p + "attention.self.query", d, d)
    k = w.linear(x, p + "attention.self.key", d, d)
    v = w.linear(x, p + "attention.self.value", d, d)
    y = w.attention(q, k, v, False, c.attention, "bert")
    y = w.dropout(w.linear(y, p + "attention.output.dense", d, d), c.p_hidden)
    x = w.layernorm(w.add(y, x), c.full, p + "attention.output.LayerNorm")
    w.anchors.append(x)                     # RobertaOutput's input_tensor, for the last add
    hid = w.act(w.linear(x, p + "intermediate.dense", d, f), "gelu")
    w.anchors.append(hid)                   # feed_forward_chunk's intermediate_output
    y = w.dropout(w.linear(hid, p + "output.dense", f, d), c.p_hidden)
    w.anchors.append(y)                     # the local hidden_states until LayerNorm returns
    out = w.layernorm(w.add(y, x), c.full, p + "output.LayerNorm")
    del w.anchors[-3:]
    return out


def _block_llama(w: _Walk, x: _T, i: int) -> _T:
    c, s = w.c, w.c.spec
    d, f, kv = s.d, s.ffn, s.kv_dim
    a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    h = w.rmsnorm_hf(x, c.full, f"model.layers.{i}.input_layernorm")
    w.arg_anchor(h)                     # the attention's argument
    q = w.linear(h, a + "q_proj", d, d)
    k = w.linear(h, a + "k_proj", d, kv)
    v = w.linear(h, a + "v_proj", d, kv)
    # apply_rotary_pos_emb: q * cos + rotate_half(q) * sin; the muls save cos and sin (shared,
    # counted once). cos and sin have the residual stream's dtype, so under autocast the rotated
    # q and k are fp32 (type promotion), and attention casts them back to 16 bits.
    r_el = c.wb
    q, k = w.new_like(q, max(q.el, r_el)), w.new_like(k, max(k.el, r_el))
    # (no KV cache: zoo builds LLaMA for training with use_cache=False, as fine-tuning configs do)
    # repeat_kv copies: eager always; SDPA too when a padding mask goes in (transformers passes
    # enable_gqa to SDPA only without a mask: integrations/sdpa_attention.py use_gqa_in_sdpa)
    if s.n_kv_head != s.n_head and (c.attention == "eager" or c.padding):
        k, v = w.new_like(k, numel=q.numel), w.new_like(v, numel=q.numel)
    y = w.attention(q, k, v, True, c.attention, "llama")
    y = w.linear(y, a + "o_proj", d, d)
    w.anchors.pop()
    x = w.add(x, y)
    w.anchors.append(x)                     # the residual
    h = w.rmsnorm_hf(x, c.full, f"model.layers.{i}.post_attention_layernorm")
    w.arg_anchor(h)                         # the MLP's argument
    g = w.act(w.linear(h, m + "gate_proj", d, f), "silu")
    u = w.linear(h, m + "up_proj", d, f)
    y = w.linear(w.mul(g, u), m + "down_proj", f, d)
    w.anchors.pop()
    out = w.add(x, y)
    w.anchors.pop()
    return out


@dataclass
class _Forward:
    """The results of the forward walk (bytes)."""
    blocks: list               # activations saved by each block (without checkpointing)
    held: list                 # weight copies each block keeps for backward (autocast casts)
    pre: int                   # activations saved before the first block (embeddings)
    post: int                  # after the last block (final norm, head, loss)
    held_post: int             # weight copies kept by the head
    cache: int                 # autocast cache at the end of forward (casts of trainable weights)
    logits: int                # the model output, alive until backward ends
    loss_transient: int        # the fp32 copy of the logits the loss makes (autocast)
    residual: int              # one (B, T, d) residual-stream tensor
    dequant: int               # NF4 decode transient (largest layer)
    ops: list = field(default_factory=list)
    terms: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    ckpt_inputs: list = field(default_factory=list)   # checkpointing: block inputs kept (bytes)
    cache_block: dict = field(default_factory=dict)   # autocast cache made inside each block
    ckpt_sids: list = field(default_factory=list)     # storage of each checkpointed block's input
    held_keys: dict = field(default_factory=dict)
    cache_keys: dict = field(default_factory=dict)
    fwd_peak: int = 0           # saved + cache + in flight, at the worst op of the forward pass
    fwd_peak_parts: tuple = (0, 0)   # (saved, weight copies) at that op
    kept: int = 0               # held by the model output until backward ends, not saved
    recompute_peak: dict = field(default_factory=dict)

    @property
    def copies_end_forward(self) -> int:
        """Weight copies alive when the forward pass ends: the autocast cache plus the copies of
        frozen weights kept for backward (not cached)."""
        held = {} if self.ckpt_inputs else self.held_keys
        return self.cache + sum(b for k, b in held.items() if k not in self.cache_keys)

    @property
    def activations(self) -> int:
        """Activations at the end of the forward pass."""
        if self.ckpt_inputs:
            return self.pre + sum(self.ckpt_inputs) + self.post
        return self.pre + sum(self.blocks) + self.post

    @property
    def held_total(self) -> int:
        return (0 if self.ckpt_inputs else sum(self.held)) + self.held_post


def _recompute_peaks(trace: dict) -> dict:
    """Per block, the largest total while checkpointing recomputes it. Non-reentrant
    checkpointing stops early: ops after the last one that saves a tensor are not rerun."""
    out = {}
    for blk, steps in trace.items():
        last = max((i for i, (_, saves, _) in enumerate(steps) if saves), default=-1)
        if last < 0:
            out[blk] = 0
            continue
        # the last saving op counts only up to its pack (see _Walk.record)
        out[blk] = max([b for b, _, _ in steps[:last]] + [steps[last][2]])
    return out


def _input_grad_leaf(w: "_Walk", x: _T, full: bool, emb_grad: bool) -> None:
    """enable_input_require_grads() on frozen embeddings: the hook calls requires_grad_() on the
    embedding output, a tensor without history, which makes it a *leaf* that requires grad. The
    graph's AccumulateGrad node references it until backward frees the graph (measured: it is
    alive at the start of backward)."""
    if emb_grad and not full:
        w.kept.append(x)


def forward_walk(ctx: _Ctx) -> _Forward:
    """Walk the model's forward pass once, symbolically, and return what is saved where."""
    s = ctx.spec
    w = _Walk(ctx)
    N, d, V = ctx.N, s.d, s.vocab
    full = ctx.full
    r_el = ctx.wb                     # residual stream dtype: the weights' (fp32 under AMP)
    # transformers' gradient_checkpointing_enable() calls enable_input_require_grads(): the
    # embedding output requires grad even when the embeddings are frozen (LoRA)
    emb_grad = full or (ctx.checkpointing and s.is_hf)
    # ---- embeddings
    if s.family == "minigpt":
        x = w.embedding("wte.weight", N, s.vocab * d, full, emb_grad)
        if s.positions:
            if full:   # the embedding's backward needs its indices (arange positions)
                w.save(_T(ctx.T, 8, False), "embedding indices")
            pos = w.embedding("wpe.weight", ctx.T, s.positions * d, full, False)
            x = w.add(x, pos)
        else:        # rotary tables cos, sin (T, hd/2), saved by apply_rope's muls
            w.save(_T(ctx.T * s.head_dim // 2, r_el, False), "rotary cos/sin")
            w.save(_T(ctx.T * s.head_dim // 2, r_el, False), "rotary cos/sin")
            w.record("rope_tables", [], [_T(0, 0, False)])
        x = w.dropout(x, ctx.p_hidden)
    elif s.family in ("roberta", "bert"):
        e = f"{s.family}.embeddings."
        if full:
            w.save(_T(N, 8, False), "embedding indices")         # position ids (from input ids)
            w.save(_T(N, 8, False), "embedding indices")         # token type ids (buffer, expanded)
        x = w.embedding(e + "word_embeddings.weight", N, s.vocab * d, full, emb_grad)
        _input_grad_leaf(w, x, full, emb_grad)
        x = w.add(x, w.embedding(e + "token_type_embeddings.weight", N, s.type_vocab * d, full, False))
        x = w.add(x, w.embedding(e + "position_embeddings.weight", N, s.positions * d, full, False))
        x = w.layernorm(x, full, e + "LayerNorm")
        x = w.dropout(x, ctx.p_hidden)
    else:
        x = w.embedding("model.embed_tokens.weight", N, s.vocab * d, full, emb_grad)
        _input_grad_leaf(w, x, full, emb_grad)
        hd = s.head_dim
        # rotary cos, sin (1, T, hd) in the activation dtype (computed in no_grad, saved by the muls)
        w.save(_T(ctx.T * hd, r_el, False), "rotary cos/sin")
        w.save(_T(ctx.T * hd, r_el, False), "rotary cos/sin")
        w.record("rope_tables", [], [_T(0, 0, False)])
    if s.is_hf:   # transformers keeps the embedding output in a local variable all along
        w.anchors.append(x)
    if ctx.padding:
        if s.family == "minigpt":
            raise EstimateError("padding applies to transformers models (llama-7b, roberta-base, ...); a minigpt "
                                "model takes no attention mask, so drop --padding.")
        # the model's 4D mask (B, 1, T, T), held through forward: bool for SDPA, the weights' dtype for eager
        w.anchors.append(_T(ctx.B * ctx.T * ctx.T, 1 if ctx.attention == "sdpa" else r_el, False))
    pre = w.total()
    block_fn = {"minigpt": _block_minigpt, "roberta": _block_bert, "bert": _block_bert,
                "llama": _block_llama}[s.family]
    blocks, held, ckpt_inputs, ckpt_sids = [], [], [], []
    for i in range(s.n_layer):
        before, before_h = w.total(), sum(w.held.values())
        w.block = i
        if ctx.checkpointing:
            ckpt_inputs.append(x.nbytes)
            ckpt_sids.append(x.sid)
        w.anchors.append(x)                 # the caller holds the block's input
        w.block_start, w.anchor_base, w.block_input = w.total(), len(w.anchors), x.sid
        w.block_input_pre_saved = x.sid in w.saved
        w.block_held = sum(b for k, b in w.held.items() if k not in w.cache)
        x = block_fn(w, x, i)
        w.anchors.pop()
        blocks.append(w.total() - before)
        held.append(sum(w.held.values()) - before_h)
    w.block = -1
    after, after_h = w.total(), sum(w.held.values())
    # ---- head and loss
    loss_transient = 0
    if s.task == "lm":
        if s.family == "minigpt":
            h = (w.layernorm if s.norm == "layernorm" else w.rmsnorm_minigpt)(x, full, "ln_f")
            wkey = "wte.weight" if s.tie else "lm_head.weight"
        else:
            h = w.rmsnorm_hf(x, full, "model.norm")
            wkey = "lm_head.weight"
        logits = w._plain(h, "lm_head", d, V, N, full, wkey=wkey)
        if (ctx.loss_dtype is not None or ctx.loss_chunk is not None) and s.family != "llama":
            raise EstimateError("loss_dtype and loss_chunk apply to transformers causal LMs (llama-7b, ...); drop "
                                "--loss-dtype and --loss-chunk for a minigpt model.")
        if s.family == "llama":
            # transformers' ForCausalLMLoss: logits.float() (loss_dtype "compute": the logits as they
            # are), labels padded and shifted by one: the shifted copy (N int64) is saved by nll_loss
            if ctx.loss_chunk is not None:
                w.chunked_loss(logits, V, ctx.loss_chunk, ctx.loss_dtype != "compute")
            else:
                w.loss(logits if ctx.loss_dtype == "compute" else w.cast(logits, 4), V)
            if logits.grad:
                w.save(_T(N, 8, False), "loss (log-softmax)")
                w.record("labels", [], [])
            upcast = ctx.loss_dtype != "compute" or ctx.amp     # (autocast runs the loss in fp32 anyway)
            rows = N if ctx.loss_chunk is None else min(N, ctx.loss_chunk)   # one chunk's copy at a time
            loss_transient = rows * V * 4 if logits.el != 4 and upcast else 0
        else:
            w.loss(logits, V)
            loss_transient = N * V * 4 if ctx.amp else 0
    else:
        if ctx.loss_dtype is not None or ctx.loss_chunk is not None:
            raise EstimateError("loss_dtype and loss_chunk apply to causal-LM heads; a classifier's loss is over a "
                                "few labels (drop --loss-dtype and --loss-chunk).")
        pooled = x.slice(ctx.B * d)   # features[:, 0, :]: a view of the last hidden states
        w.record("slice", [x], [pooled], passthrough=True)
        if s.family == "roberta":
            y = w.dropout(pooled, ctx.p_hidden)
            y = w.act(w.linear(y, "classifier.dense", d, d), "tanh")
            y = w.dropout(y, ctx.p_hidden)
            logits = w.linear(y, "classifier.out_proj", d, s.n_labels)
        else:
            y = w.act(w.linear(pooled, "bert.pooler.dense", d, d), "tanh")
            y = w.dropout(y, ctx.p_hidden)
            logits = w.linear(y, "classifier", d, s.n_labels)
        w.loss(logits, s.n_labels)
    return _Forward(blocks=blocks, held=held, pre=pre, post=w.total() - after,
                    held_post=sum(w.held.values()) - after_h, cache=sum(w.cache.values()),
                    logits=logits.nbytes, loss_transient=loss_transient, residual=N * d * r_el,
                    dequant=w.dequant, ops=w.ops, terms=dict(w.terms), log=w.log,
                    ckpt_inputs=ckpt_inputs, ckpt_sids=ckpt_sids, cache_block=dict(w.cache_block), held_keys=dict(w.held),
                    cache_keys=dict(w.cache), fwd_peak=w.fwd_peak, fwd_peak_parts=w.fwd_peak_parts,
                    recompute_peak=_recompute_peaks(w.recompute_trace),
                    kept=sum({t.sid: t.nbytes for t in w.kept
                              if t.sid not in w.saved and t.sid not in ckpt_sids}.values()))
