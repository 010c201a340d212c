"""What the grader runs inside a learner's kernel after the notebook, and in its own process.

This file is never imported by a notebook's kernel: the grader sends its *text* as one extra cell
once the notebook's cells have run (course/probes.py), exec'd into a fresh namespace, so nothing
the notebook patched in a module changes it. The grader exec's the same text in its own process to
evaluate the solution's code on the same inputs, so both sides draw the same inputs from the seed.

Nothing here is trusted on the kernel's side: the kernel can only lie about its own outputs (and
about the facts it reports on its own objects), which can lose marks but never add any, since a
mark needs the grader's reference, computed from the solution, which the sandbox hides.
"""
from __future__ import annotations

import builtins
import dis
import hashlib
import math
import random
import sys
import types
from typing import Any

PACKAGES = ("minigpt", "course")
CHECK_MODULES = ("course.checks", "course.compare", "course.hints")
_PLUMBING = {"RESUME", "CACHE", "NOP", "PUSH_NULL", "PRECALL", "KW_NAMES", "COPY_FREE_VARS", "MAKE_CELL"}
_LOADS = {"LOAD_FAST", "LOAD_GLOBAL", "LOAD_ATTR", "LOAD_METHOD", "LOAD_CONST", "LOAD_DEREF", "RETURN_VALUE",
          "RETURN_CONST"}
_CALLS = {"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW"}


# --- facts about an object -------------------------------------------------------------------------
def _code_parts(code: types.CodeType) -> list[Any]:
    consts = [_code_parts(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, list(code.co_names), list(code.co_varnames)]


def code_fingerprint(code: types.CodeType | dict[str, types.CodeType]) -> str:
    """A hash of compiled code (a function's, or {name: code} of a class's methods): equal for the
    same source compiled by the same Python, whatever file or cell it came from."""
    parts = (sorted((k, _code_parts(c)) for k, c in code.items()) if isinstance(code, dict)
             else _code_parts(code))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def fingerprint(obj: Any) -> str | None:
    """code_fingerprint of a function, or of every method of a class; None for anything else."""
    if isinstance(obj, type):
        fns = {k: getattr(v, "__func__", v) for k, v in vars(obj).items()}
        return code_fingerprint({k: f.__code__ for k, f in fns.items()
                                 if isinstance(getattr(f, "__code__", None), types.CodeType)})
    if isinstance(getattr(obj, "__code__", None), types.CodeType):
        return code_fingerprint(obj.__code__)
    return None


def _package_names(obj: Any) -> list[str]:
    """The package objects (minigpt.*, course.*) that ``obj`` is, by identity."""
    out = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod_name.split(".")[0] not in PACKAGES:
            continue
        for attr, value in list(vars(mod).items()):
            if value is obj and not attr.startswith("__"):
                out.append(f"{mod_name}.{attr}")
    return sorted(set(out))[:3]


def _in_package(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] in PACKAGES:
        return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return None


def wrapped_call(fn: Any) -> str | None:
    """The package function a function's whole body calls once (``return minigpt.x.f(a, b)``), else None."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return None
    ins = [i for i in dis.get_instructions(code) if i.opname not in _PLUMBING]
    if sum(i.opname in _CALLS for i in ins) != 1 or any(i.opname not in _LOADS | _CALLS for i in ins):
        return None
    chain: list[str] = []
    for i in ins:
        if i.opname == "LOAD_GLOBAL" and not chain:
            chain.append(str(i.argval))
        elif i.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
            chain.append(str(i.argval))
        elif chain:
            break
    if not chain:
        return None
    target = fn.__globals__.get(chain[0], getattr(builtins, chain[0], None))
    for attr in chain[1:]:
        target = getattr(target, attr, None)
    return _in_package(target)


def facts(obj: Any) -> dict[str, Any]:
    """Where an exercise object comes from: what the grader needs for the flags of part 3."""
    code = getattr(obj, "__code__", None)
    bases = [_in_package(b) for b in getattr(obj, "__mro__", ())[1:]] if isinstance(obj, type) else []
    return {"fingerprint": fingerprint(obj), "module": getattr(obj, "__module__", None),
            "file": getattr(code, "co_filename", None), "is_package_object": _package_names(obj),
            "wraps": wrapped_call(obj), "package_bases": [b for b in bases if b]}


def check_functions() -> dict[str, str | None]:
    """{module.name: fingerprint} of every function and method of the modules behind course.checks,
    as the kernel has them now: a replaced ``checks.check`` shows as a different fingerprint."""
    out: dict[str, str | None] = {}
    for mod_name in CHECK_MODULES:
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        for attr, value in sorted(vars(mod).items()):
            if attr.startswith("__") or isinstance(value, types.ModuleType):
                continue
            if callable(value) and not isinstance(value, type) or (isinstance(value, type)
                                                                   and value.__module__ == mod_name):
                out[f"{mod_name}.{attr}"] = fingerprint(getattr(value, "__wrapped__", value))
    return out


# --- values ---------------------------------------------------------------------------------------
def to_json(x: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a result; tensors keep dtype, shape and every value (probes are small)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if depth > 6:
        return repr(x)[:200]
    if hasattr(x, "detach") and hasattr(x, "dtype"):
        t = x.detach().cpu()
        values = t.double().reshape(-1).tolist() if t.is_floating_point() else t.reshape(-1).tolist()
        return {"tensor": [to_json(v, depth + 1) for v in values], "dtype": str(t.dtype), "shape": list(t.shape)}
    if isinstance(x, dict):
        return {str(k): to_json(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v, depth + 1) for v in x]
    if hasattr(x, "item"):
        return to_json(x.item(), depth + 1)
    return repr(x)[:200]


def draw_inputs(expr: str, seed: int) -> list[Any]:
    """The inputs of one probe: ``expr`` evaluated with ``r``, a random.Random seeded by the grader."""
    return list(eval(expr, {"r": random.Random(seed), "range": range}))  # noqa: S307 (the grader's own table)


def evaluate(ns: dict[str, Any], probes: dict[str, Any], seed: int, with_facts: bool) -> dict[str, Any]:
    """Each probe's results on its inputs: ``{check: {"results": [...]} | {"missing": name}}``; with
    ``with_facts`` (the learner's kernel), also the facts of each object and of the checks' functions."""
    out: dict[str, Any] = {}
    for i, (check, spec) in enumerate(sorted(probes.items())):
        names = spec["obj"]
        missing = [n for n in names if n not in ns]
        entry: dict[str, Any] = {}
        if missing:
            entry["missing"] = missing[0]
        else:
            objs = [ns[n] for n in names]
            f = objs[0] if len(objs) == 1 else tuple(objs)
            if with_facts:
                entry["facts"] = {n: facts(o) for n, o in zip(names, objs)}
            results = []
            for args in draw_inputs(spec["inputs"], seed + i):
                try:
                    env = {**globals(), "f": f, "args": args}
                    results.append({"value": to_json(eval(spec["call"], env))})  # noqa: S307
                except Exception as exc:  # the learner's code raised: that input fails
                    results.append({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"})
            entry["results"] = results
        out[check] = entry
    report: dict[str, Any] = {"probes": out}
    if with_facts:
        report["check_functions"] = check_functions()
        checks_name = ns.get("checks")
        report["checks_name_is_module"] = (None if checks_name is None
                                           else checks_name is sys.modules.get("course.checks"))
    return report


# --- the harness a probe's ``call`` uses (tensors are built here, from the seed, on both sides) ------
def _torch() -> Any:
    import torch
    return torch


def randn(seed: int, *shape: int) -> Any:
    torch = _torch()
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tensor(values: Any, dtype: str = "float32") -> Any:
    torch = _torch()
    return torch.tensor(values, dtype=getattr(torch, dtype))


def _linear(d_in: int, d_out: int, seed: int) -> Any:
    torch = _torch()
    layer = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.copy_(randn(seed, d_out, d_in))
        layer.bias.copy_(randn(seed + 1, d_out))
    return layer


def lora_layer(cls: Any, d_in: int, d_out: int, r: int, alpha: float, seed: int) -> dict[str, Any]:
    """A layer of the learner's class with A and B set from the seed: its output, and what trains."""
    torch = _torch()
    layer = cls(_linear(d_in, d_out, seed), r, alpha)
    with torch.no_grad():
        layer.A.copy_(randn(seed + 2, r, d_in))
        layer.B.copy_(randn(seed + 3, d_out, r))
        out = layer(randn(seed + 4, 3, d_in))
    return {"out": out, "trainable": sorted([n, list(p.shape)] for n, p in layer.named_parameters()
                                            if p.requires_grad)}


def lora_fresh(cls: Any, d_in: int, d_out: int, r: int, alpha: float, seed: int) -> bool:
    """Whether a fresh layer's output equals its base's, exactly."""
    torch = _torch()
    base, x = _linear(d_in, d_out, seed), randn(seed + 4, 3, d_in)
    with torch.no_grad():
        return bool(torch.equal(cls(base, r, alpha)(x), base(x)))


def lora_merge(fns: Any, d_in: int, d_out: int, r: int, scaling: float, seed: int) -> dict[str, Any]:
    delta_weight, merge_into = fns
    A, B, linear = randn(seed, r, d_in), randn(seed + 1, d_out, r), _linear(d_in, d_out, seed + 2)
    delta = delta_weight(A, B, scaling)
    merge_into(linear, A, B, scaling)
    return {"delta": delta, "merged": linear.weight, "tracked": linear.weight.grad_fn is not None}


def lora_unmerge(fns: Any, d_in: int, d_out: int, r: int, scaling: float, seed: int) -> Any:
    merge_into, unmerge_from = fns
    A, B, linear = randn(seed, r, d_in), randn(seed + 1, d_out, r), _linear(d_in, d_out, seed + 2)
    merge_into(linear, A, B, scaling)
    unmerge_from(linear, A, B, scaling)
    return linear.weight


def _toy_model(n_blocks: int, d: int, seed: int) -> Any:
    """The shape of a MiniGPT for the exercises that walk one: blocks[i].attn.{q,k,v,o}_proj, blocks[i].mlp."""
    torch = _torch()
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(11, d)
    blocks = []
    for i in range(n_blocks):
        block, attn = torch.nn.Module(), torch.nn.Module()
        for j, name in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            setattr(attn, name, _linear(d, d, seed + 10 * i + j))
        block.attn, block.mlp = attn, _linear(d, 2 * d, seed + 10 * i + 7)
        blocks.append(block)
    model.blocks = torch.nn.ModuleList(blocks)
    model.head = torch.nn.Linear(d, 11, bias=False)
    model.head.weight = model.embed.weight            # tied, as in MiniGPT
    return model


def lora_by_hand(fn: Any, n_blocks: int, d: int, r: int, alpha: float, seed: int) -> dict[str, Any]:
    model = fn(_toy_model(n_blocks, d, seed), r, alpha)
    return {"trainable": sorted([n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad),
            "wrapped": [[type(getattr(b.attn, t)).__name__ for t in ("q_proj", "k_proj", "v_proj", "o_proj")]
                        for b in model.blocks]}


def _freeze_some(model: Any, seed: int) -> Any:
    rng = random.Random(seed)
    for p in model.parameters():
        p.requires_grad_(rng.random() < 0.5)
    return model


def adamw_bytes(fn: Any, n_blocks: int, d: int, seed: int) -> list[Any]:
    """The learner's AdamW-state bytes of a toy model with a tied head and random frozen tensors, in
    fp32 and in bf16 (bytes per element matter), and with everything frozen."""
    model = _freeze_some(_toy_model(n_blocks, d, seed), seed)
    frozen = _toy_model(n_blocks, d, seed).requires_grad_(False)
    return [fn(model), fn(model.to(_torch().bfloat16)), fn(frozen)]


def checkpoint_facts(fns: Any, n_blocks: int, d: int, seed: int) -> dict[str, Any]:
    trainable_state, payload_bytes = fns
    model = _freeze_some(_toy_model(n_blocks, d, seed), seed)
    state = trainable_state(model)
    return {"names": sorted(state), "tracked": any(t.requires_grad for t in state.values()),
            "bytes": payload_bytes(state), "fp16_bytes": payload_bytes({k: v.half() for k, v in state.items()})}


def quantize(fn: Any, n_blocks: int, blocksize: int, seed: int) -> Any:
    torch = _torch()
    levels = torch.sort(torch.cat([torch.rand(14, generator=torch.Generator().manual_seed(seed)) * 2 - 1,
                                   torch.tensor([0.0, 1.0])])).values
    levels[0] = -1.0
    return fn(randn(seed + 1, n_blocks, blocksize) * 3, levels, blocksize)


def _toy_classifier(n_blocks: int, d: int, seed: int) -> Any:
    """A classifier's storage kinds for lab 04's exercise 5: an embedding table, a buffer, Linear layers
    with and without bias, LayerNorms, and a head named ``classifier``."""
    torch = _torch()
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(13, d)
    model.register_buffer("position_ids", torch.arange(7 + seed % 5))
    model.blocks = torch.nn.ModuleList(
        torch.nn.Sequential(_linear(d, 2 * d, seed + i), torch.nn.LayerNorm(2 * d), torch.nn.Linear(2 * d, d, bias=False))
        for i in range(n_blocks))
    model.classifier = _linear(d, 2, seed + 99)
    return model


def frozen_bytes(fn: Any, n_blocks: int, d: int, seed: int) -> int:
    return fn(_toy_classifier(n_blocks, d, seed))
