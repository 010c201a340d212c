"""The layers of the symbolic walk: linear (plain, NF4, with a LoRA adapter), the norms, attention
(fused or eager) and the loss: what each allocates in forward and saves for backward."""
from __future__ import annotations

from typing import Optional

from .spec import EstimateError
from .walk import _T, _Chunk, _WalkCore


class _Walk(_WalkCore):
    """The walk with its layer ops (the tensor bookkeeping is in _WalkCore)."""

    def linear(self, x: _T, name: str, fin: int, fout: int) -> _T:
        """nn.Linear / LoRALinear / NF4Linear (+ LoRA) on x (..., fin)."""
        c = self.c
        rows = x.numel // fin
        if name in c.nf4:
            y = self._nf4(x, name, fin, fout, rows)
        else:
            y = self._plain(x, name, fin, fout, rows, self.trainable(name))
        if name in c.adapted:
            y = self._lora(x, y, name, fin, fout, rows)
        return y

    def _plain(self, x: _T, name: str, fin: int, fout: int, rows: int, w_grad: bool,
               wkey: Optional[str] = None) -> _T:
        """F.linear. It saves its input when the weight needs a gradient and the weight when the
        input does. Under autocast the input and the weight are cast to 16 bits first; the cast
        of a weight that requires grad is cached until the forward pass ends."""
        c = self.c
        wkey = wkey or name + ".weight"
        bias = self.bias.get(name, False)
        grad_out = x.grad or w_grad
        pg = []
        if w_grad:
            pg.append(self.pgrad(wkey, fin * fout, 2 if c.amp else None))
            if bias:
                pg.append(self.pgrad(name + ".bias", fout, 2 if c.amp else None))
        if c.amp:
            xin = self.cast(x, 2)
            wcopy = 2 * fin * fout
            if w_grad:      # autocast caches the cast of a leaf that requires grad
                self.to_cache(wkey, wcopy)
                self.to_cache(name + ".bias", 2 * fout if bias else 0)
            if x.grad:      # grad_input = grad_out @ W needs W: the 16-bit copy is kept
                self.hold(wkey, wcopy)
            if w_grad:
                self.save(xin, "linear inputs")
            # neither cached nor kept (a frozen weight, an input that needs no grad: a linear
            # probe's encoder): the casts of W and b live while the op runs, then are freed
            transient = 0 if (w_grad or x.grad) else wcopy + (2 * fout if bias else 0)
            y = _T(rows * fout, 2, grad_out)
            self.record("linear", [xin], [y], pg, unpacks=grad_out, cast_copies=transient)
            return y
        if w_grad:
            self.save(x, "linear inputs")
        y = _T(rows * fout, c.lp, grad_out)
        self.record("linear", [x], [y], pg, unpacks=grad_out)   # (a frozen W is saved for x's grad)
        return y

    def _nf4(self, x: _T, name: str, fin: int, fout: int, rows: int) -> _T:
        """minigpt.nf4.NF4Linear: cast x to the compute dtype, decode W (transient), F.linear in a
        custom autograd Function that saves nothing, cast the output back to x's dtype. Backward
        decodes W again."""
        c = self.c
        cd = c.lp
        n = fin * fout
        # decode transients (minigpt.nf4.dequantize_nf4): int32 codes (2 B/weight) and the float32
        # levels they index (4 B) -> 6 B/weight at the worst moment; from 2**20 weights on (an even
        # number of packed bytes) the bytes are read in pairs: an int32 index per two bytes (1 B/weight),
        # the levels (4 B) and the 65,536-row table of four levels (1 MiB, built afresh under a
        # tracker or fake tensors) -> 5 B/weight + 1 MiB. The decoded weight (the levels scaled in
        # place, 4 B, or its 16-bit cast) lives through the matmul. Forward and backward.
        # A 16-bit compute dtype adds the moment the fp32 weight is cast: 4 + 2 B/weight.
        n_bytes = (n + 1) // 2
        dq = 5 * n + 2 ** 20 if (2 * n_bytes >= 2 ** 20 and n_bytes % 2 == 0) else 6 * n
        if cd != 4:
            dq = max(dq, (4 + cd) * n)
        self.dequant = max(self.dequant, dq)
        xc = self.cast(x, cd)
        y = _T(rows * fout, cd, x.grad)
        # the decoded weight (n elements in the compute dtype) is the matmul's input: it is alive
        # while the output is written (forward: y; backward: grad_out @ W, the input's gradient);
        # the decode peak is over before that output exists
        self.record("nf4_linear", [xc], [y], work=n * cd, fwd_work=max(dq, n * cd + y.nbytes),
                    alive=[x], work_before=dq)
        return self.cast(y, x.el)

    def _lora(self, x: _T, y: _T, name: str, fin: int, fout: int, rows: int) -> _T:
        """minigpt.lora.LoRALinear: y + s * B(A(x)), adapters in the adapter dtype."""
        c = self.c
        r = c.rank
        ab = c.ab   # adapter dtype (fp32, cast with a pure 16-bit model, or adapter_dtype's)
        # the module's argument x, the base layer's output y and x.to(A.dtype) (the forward's
        # local variables) are referenced until LoRALinear.forward returns
        outer = self._keep
        self._keep = [*(outer or ()), x, y]
        xa = self.cast(x, ab)              # x.to(A.dtype): an fp32 copy of a 16-bit x (not saved)
        self._keep.append(xa)
        # lora_dropout(x): every adapter makes its own dropped copy (and its mask), even q and v
        # that read the same x, and A's matmul saves that copy instead of x
        xa = self.dropout(xa, c.lora_p)
        ka, kb = name + ".A", name + ".B"
        if c.amp:
            xl = self.cast(xa, 2)          # autocast: the 16-bit copy the matmul saves
            cast = ab == 4                 # autocast casts (and caches) fp32 leaves only: 16-bit adapters are used as they are
            if cast:
                self.to_cache(ka, 2 * r * fin)
                self.to_cache(kb, 2 * r * fout)
            self.save(xl, "LoRA inputs")
            if x.grad and cast:            # casts of A and B saved for the input's gradient
                self.hold(ka, 2 * r * fin)
            h = _T(rows * r, 2, True)
            self.record("lora_A", [xl], [h], [(ka, r * fin, 2, ab)])
            self.save(h, "LoRA rank-r")
            if cast:
                self.hold(kb, 2 * r * fout)
            delta = _T(rows * fout, 2, True)
            self.record("lora_B", [h], [delta], [(kb, r * fout, 2, ab)])
        else:
            self.save(xa, "LoRA inputs")
            h = _T(rows * r, ab, True)
            self.record("lora_A", [xa], [h], [(ka, r * fin, ab, ab)])
            self.save(h, "LoRA rank-r")
            delta = _T(rows * fout, ab, True)
            self.record("lora_B", [h], [delta], [(kb, r * fout, ab, ab)])
        scaled = _T(delta.numel, delta.el, True)
        self.record("scale", [delta], [scaled])          # * scaling: saves nothing
        out = self.add(y, scaled)                        # result + delta promotes
        out = self.cast(out, y.el)
        self._keep = outer
        return out

    def layernorm(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """native_layer_norm saves its input, mean and rstd (one per row) when anything needs a
        gradient. CUDA autocast runs it in fp32 (a cast copy of a 16-bit input)."""
        c = self.c
        d = c.spec.d
        rows = x.numel // d
        if c.cuda and c.amp:
            x = self.cast(x, 4)
        grad = x.grad or w_grad
        # mean and rstd: the CPU kernel keeps them in the input dtype (the CUDA kernel in fp32:
        # 2 bytes more per row in pure 16-bit; the simulated CUDA run uses the CPU kernel)
        stat = x.el
        if grad:
            self.save(x, "norm inputs")
            self.save_bytes(rows * stat, "norm stats")    # mean
            self.save_bytes(rows * stat, "norm stats")    # rstd
        y = _T(x.numel, x.el, grad)
        # the kernel writes mean and rstd either way: unsaved, they are outputs freed on return
        stats = [] if grad else [_T(rows, stat, False), _T(rows, stat, False)]
        pg = [self.pgrad(key + ".weight", d), self.pgrad(key + ".bias", d)] if w_grad else []
        if w_grad and not (c.spec.bias or c.spec.is_hf):
            pg = pg[:1]
        self.record("layernorm", [x], [y, *stats], pg, unpacks=grad)
        return y

    def rmsnorm_hf(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """LlamaRMSNorm: x.to(fp32); pow(2).mean; x * rsqrt(var + eps); weight * .to(input dtype)."""
        d = self.c.spec.d
        rows = x.numel // d
        grad = x.grad or w_grad
        x32 = self.cast(x, 4)
        if x.grad:
            self.save(x32, "norm inputs")           # pow and mul save the fp32 input
            self.save(_T(rows, 4, True), "norm stats")   # rsqrt saves its output
        h = _T(x.numel, 4, grad)
        self.record("rms", [x32], [h], work=x32.nbytes)   # backward: grads through pow, mul
        hc = self.cast(h, x.el)
        if w_grad:
            self.save(hc, "norm outputs")           # weight * h saves h for the weight's grad
        y = _T(x.numel, x.el, grad)
        self.record("rms_weight", [hc], [y], [self.pgrad(key + ".weight", d)] if w_grad else [],
                    unpacks=grad)
        return y

    def rmsnorm_minigpt(self, x: _T, w_grad: bool, key: str = "") -> _T:
        """F.rms_norm (ATen's composite): x32 = x.float(); x32 * rsqrt(mean(x32^2) + eps) * w in
        fp32, then cast to x's dtype. Saves x32 and rsqrt (for x), x32 * rsqrt (for w)."""
        d = self.c.spec.d
        rows = x.numel // d
        grad = x.grad or w_grad
        x32 = self.cast(x, 4)
        if x.grad:
            self.save(x32, "norm inputs")
            self.save(_T(rows, 4, True), "norm stats")
        h = _T(x.numel, 4, grad)
        self.record("rms", [x32], [h], work=x32.nbytes)
        if w_grad:
            self.save(h, "norm outputs")
        y = _T(x.numel, 4, grad)
        self.record("rms_weight", [h], [y], [self.pgrad(key + ".weight", d)] if w_grad else [],
                    unpacks=grad)
        return self.cast(y, x.el)

    def attention(self, q: _T, k: _T, v: _T, causal: bool, kind: str, family: str,
                  q_contiguous: bool = False) -> _T:
        """Scaled dot-product attention on (B, H, T, hd) views; returns the (B, T, d) output."""
        c = self.c
        B, T, H = c.B, c.T, c.spec.n_head
        hd = c.spec.head_dim
        grad = q.grad or k.grad or v.grad
        p = c.p_attn
        if kind == "sdpa":
            if c.amp:  # SDPA is on both autocast lists: 16-bit q, k, v
                q, k, v = self.cast(q, 2), self.cast(k, 2), self.cast(v, 2)
            el = q.el
            # padding: each call converts the (B, 1, T, T) bool mask to q's dtype and saves its own copy
            mask = _T(B * T * T, el, False) if c.padding else None
            if c.spec.n_kv_head != H and family == "minigpt":   # repeat_interleave copies
                k, v = self.new_like(k, numel=q.numel), self.new_like(v, numel=q.numel)
            if c.cuda:
                # cuda_rules.CudaLikeSDPA: flash or memory-efficient, as the card dispatches
                flash = sdpa_kernel(c, el, p) == "flash"
                lse_T = T if flash else -(-T // 32) * 32
                out = _T(B * T * H * hd, el, grad)
                if grad:
                    for t in (q, k, v, out):
                        self.save(t, "attention q, k, v, out")
                    self.save(_T(B * H * lse_T, 4, False), "attention logsumexp")
                    if mask is not None:
                        self.save(mask, "attention padding mask")
                if flash:   # softmax_d (B, H, T128) and dq_accum (B, T128, H, hd32) in fp32
                    T128 = -(-T // 128) * 128
                    hd_r = -(-hd // (32 if hd <= 128 else 64)) * (32 if hd <= 128 else 64)
                    work = 4 * B * H * T128 + 4 * B * T128 * H * hd_r
                else:       # delta (B, H, T) fp32
                    work = 4 * B * H * T
                work += out.nbytes      # grad_out.contiguous() of the transposed gradient
                self.record("sdpa", [q, k, v], [out], work=work)
                return out
            if p == 0:
                # CPU flash kernel. Its output takes q's memory layout: (B, T, H, hd) when q is the
                # transposed view of a Linear output (then .transpose(1, 2).contiguous() copies
                # nothing), (B, H, T, hd) when q is a new contiguous tensor (MiniGPT's rotary cat)
                out = _T(B * T * H * hd, el, grad)
                if grad:
                    for t in (q, k, v, out):
                        self.save(t, "attention q, k, v, out")
                    self.save(_T(B * H * T, 4, False), "attention logsumexp")
                    if mask is not None:
                        self.save(mask, "attention padding mask")
                self.record("sdpa", [q, k, v], [out])
                return self.new_like(out) if q_contiguous else out
            # CPU math path (dropout): computed in fp32 even for 16-bit inputs (ATen upcasts on
            # CPU); q, k^T and v copied for bmm, then probabilities, dropout noise, dropped probs
            # (ATen's _scaled_dot_product_attention_math, C++: q * sqrt(s), k * sqrt(s) and the
            # raw scores stay referenced until it returns)
            q4, k4, v4 = self.cast(q, 4), self.cast(k, 4), self.cast(v, 4)
            qs, ks = self.new_like(q4), self.new_like(k4)
            self._keep = [qs, ks]
            o = self._matmuls(qs, ks, v4, 4, 4, 4, p, False, 4, causal, math=True)
            o = self.cast(o, el)
            self._keep = None
            return o
        # eager: written out. Under autocast the matmuls run in 16 bits.
        el = 2 if c.amp else q.el
        probs_el = 4 if (c.cuda and c.amp) else el   # CUDA autocast: softmax in fp32
        if c.amp and c.padding:
            probs_el = 4    # CPU autocast: the 16-bit scores + the fp32 padding mask promote to fp32
        if family == "llama":
            probs_el = 4                               # softmax(..., dtype=float32)
        if causal and family == "minigpt" and grad:
            self.save(_T(T * T, 1, False), "attention causal mask")   # ~mask, saved by masked_fill
        pv_el = el if (family == "llama" or c.amp) else probs_el
        qq, kk, vv = (self.cast(q, 2), self.cast(k, 2), self.cast(v, 2)) if c.amp else (q, k, v)
        return self._matmuls(qq, kk, vv, el, probs_el, pv_el, p, family == "llama", q.el, causal)

    def _matmuls(self, q: _T, k: _T, v: _T, el: int, probs_el: int, pv_el: int, p: float,
                 llama: bool, q_el: int, causal: bool, math: bool = False,
                 contiguous_kv: bool = False) -> _T:
        """softmax(q k^T) v with batched matmuls on (B*H, T, hd) copies of q, k^T, v.
        matmul(a, b) saves a if b needs a gradient and b if a does; softmax saves its output;
        dropout its mask (CPU: noise of the probabilities' dtype). ``pv_el``: the probabilities
        as the second matmul reads them (cast back to 16 bits under autocast)."""
        c = self.c
        B, T, H, hd = c.B, c.T, c.spec.n_head, c.spec.head_dim
        s_grad = q.grad or k.grad
        qc = self.new_like(q, el)      # q, k^T reshaped (copied) for bmm
        kc = k if (contiguous_kv and k.el == el) else self.new_like(k, el, numel=q.numel)
        if k.grad:
            self.save(qc, "attention q, k, v copies")
        if q.grad:
            self.save(kc, "attention q, k, v copies")
        scores = _T(B * H * T * T, el, s_grad)
        self.record("bmm", [qc, kc], [scores])
        if math:
            self._keep.append(scores)
        scores = self.new_like(scores)                   # * scale, + mask / masked_fill
        if causal:
            scores = self.new_like(scores)
        probs = _T(B * H * T * T, probs_el, s_grad)
        if s_grad:
            self.save(probs, "attention probabilities")          # softmax output
        self.record("softmax", [scores], [probs])
        if llama:
            probs = self.cast(probs, q_el)          # .to(query.dtype): fp32 q under autocast (rotary)
        pa = self.cast(self.dropout(probs, p), pv_el)
        vc = v if (contiguous_kv and v.el == el) else self.new_like(v, el, numel=q.numel)
        if v.grad:
            self.save(pa, "attention probabilities")             # probabilities read by @ v
        if pa.grad:
            self.save(vc, "attention q, k, v copies")
        o = _T(B * T * H * hd, el, pa.grad or vc.grad)
        self.record("bmm", [pa, vc], [o])
        if math:
            return o
        return self.new_like(o)                                   # transpose(1, 2).contiguous()

    def loss(self, logits: _T, V: int) -> _T:
        """cross_entropy over (rows, V) logits. Autocast runs it in fp32 (CPU: cross_entropy_loss
        is on the fp32 list; CUDA: log_softmax is): log_softmax's fp32 output is saved, and
        nll_loss saves a 0-dim total_weight."""
        el = 4 if self.c.amp else logits.el
        x = self.cast(logits, el)
        lsm = _T(logits.numel, el, logits.grad)
        if logits.grad:
            self.save(lsm, "loss (log-softmax)")
        self.record("log_softmax", [x], [lsm])
        if logits.grad:
            self.save_bytes(el, "loss (log-softmax)")      # nll_loss's total_weight
        loss = _T(1, el, logits.grad)
        self.record("nll_loss", [lsm], [loss])
        return loss

    def chunked_loss(self, logits: _T, V: int, chunk: int, upcast: bool) -> _T:
        """The cross-entropy over chunks of ``chunk`` rows of the (rows, V) logits (measure.causal_lm_loss):
        split (views), each chunk upcast (``upcast``) and summed alone, the chunk losses stacked and
        summed. Each chunk's log-softmax is saved, its fp32 copy is gone before the next chunk."""
        rows = logits.numel // V
        sizes = [min(chunk, rows - i) for i in range(0, rows, chunk)]
        chunks = [_Chunk.of(logits, n * V) for n in sizes]
        self.record("split", [logits], chunks)
        losses = [self.loss(self.cast(x, 4) if upcast else x, V) for x in chunks]
        loss = _T(1, losses[0].el, logits.grad)
        self.record("nll_loss", losses, [loss])       # (stack, sum, / count: the loss the replay starts from)
        return loss


def sdpa_kernel(c, el: int, p: float) -> str:
    """The CUDA SDPA kernel of rule 5 for inputs of ``el`` bytes: cuda_rules.kernel_for on ctx.card
    (no card: flash for 16-bit without a mask, memory-efficient for fp32 or with padding's mask)."""
    if c.card is None:
        return "flash" if el == 2 and not c.padding else "efficient"
    import torch
    from ..cuda_rules import kernel_for
    dtype = torch.float32 if el == 4 else torch.float16 if "fp16" in c.precision else torch.bfloat16
    try:
        return kernel_for(c.card, dtype, c.spec.head_dim, has_mask=c.padding, dropout=p)
    except ValueError as e:
        raise EstimateError(str(e)) from None
