"""Which exercise each check tests, and how the grader probes it (course/probes.py runs this).

One entry per exercise check, by the solution notebook's name (without .ipynb):

* ``obj``: the names the learner's exercise defines (one, or several that the check tests together;
  ``f`` in ``call`` is the object, or the tuple of them);
* ``inputs``: a Python expression giving a list of argument tuples, drawn with ``r`` (a
  ``random.Random`` seeded at grading time, so the inputs are in no notebook's text);
* ``call``: an expression in ``f`` and ``args`` (and the harness of course/probe_kernel.py, which
  builds tensors and small models from a seed on both sides);
* ``compare``: "equal", or "close" with ``rtol``/``atol`` (per number, tensors included);
* ``given``: names the solution's exercise cell reads from the notebook, fixed by the lab's text;
* ``note``: said in grade.md, e.g. why a value is compared without fresh inputs.

A check the grader cannot probe goes in NOTEBOOK_DECIDED with its reason: its mark comes from the
in-notebook check and grade.md says "decided in the notebook". docs/AUTHORING.md: adding a probe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Probe:
    obj: tuple[str, ...]
    inputs: str = "[()]"
    call: str = "f(*args)"
    compare: str = "equal"
    rtol: float = 0.0
    atol: float = 0.0
    given: dict[str, Any] = field(default_factory=dict)
    note: str = ""


VALUE_NOTE = "a value, not a function: compared with the solution's own value, no fresh inputs to draw"
_LAYER = "[(r.randint(3, 12), r.randint(3, 12), r.randint(1, 3), r.choice([1.0, 4.0, 16.0]), r.randint(0, 10**6)) " \
         "for _ in range(3)]"
_MERGE = "[(r.randint(3, 10), r.randint(3, 10), r.randint(1, 3), r.choice([0.5, 2.0, 4.0]), r.randint(0, 10**6)) " \
         "for _ in range(3)]"
_TOY = "[(r.randint(1, 3), r.choice([4, 8]), r.randint(0, 10**6)) for _ in range(3)]"
_CLOSE = {"compare": "close", "rtol": 1e-4, "atol": 1e-5}

PROBES: dict[str, dict[str, Probe]] = {
    "01-lora-from-scratch": {
        "ex1-lora-layer": Probe(("MyLoRALinear",), _LAYER, "lora_layer(f, *args)", **_CLOSE),
        "ex1-zero-init-no-op": Probe(("MyLoRALinear",), _LAYER, "lora_fresh(f, *args)"),
        "ex2-param-count": Probe(("lora_params", "qv_lora_params"),
                                 "[(r.randint(1, 5000), r.randint(1, 5000), r.randint(1, 64), r.randint(1, 48)) "
                                 "for _ in range(4)]", "[f[0](*args[:3]), f[1](args[3], args[0], args[2])]"),
        "ex3-merge": Probe(("delta_weight", "merge_into"), _MERGE, "lora_merge(f, *args)", **_CLOSE),
        "ex3-unmerge": Probe(("merge_into", "unmerge_from"), _MERGE, "lora_unmerge(f, *args)", **_CLOSE),
        "ex4-matches-peft": Probe(("add_lora_by_hand",), "[(r.randint(1, 3), r.choice([4, 8]), r.randint(1, 3), "
                                  "r.choice([2.0, 8.0]), r.randint(0, 10**6)) for _ in range(2)]",
                                  "lora_by_hand(f, *args)"),
    },
    "02-finetune-full-vs-lora": {
        "ex1-lora-trainable": Probe(("lora_trainable",), "[(r.randint(1, 48), r.randint(1, 4096), "
                                    "r.randint(1, 64), r.randint(1, 20)) for _ in range(4)]"),
        "ex2-optimizer-state": Probe(("adamw_state_bytes",), _TOY, "adamw_bytes(f, *args)"),
        "ex3-adapter-checkpoint": Probe(("trainable_state", "payload_bytes"), _TOY, "checkpoint_facts(f, *args)"),
    },
    "03-memory-footprint": {
        "ex1-full-finetune": Probe(("full_finetune_bytes",), "[(r.randint(1, 10**9), r.randint(1, 500)) "
                                   "for _ in range(4)]"),
        "ex2-lora-states": Probe(("lora_bytes",), "[(r.randint(1, 10**9), [(r.randint(1, 4096), r.randint(1, 4096)) "
                                 "for _ in range(r.randint(1, 6))], r.randint(1, 64)) for _ in range(4)]"),
        "ex3-block-activations": Probe(("block_activation_bytes",), "[(r.randint(1, 16), r.randint(1, 2048), "
                                       "r.randint(1, 2048), r.randint(1, 8192), r.randint(1, 32)) for _ in range(4)]"),
        "ex4-fsdp2-shard": Probe(("fsdp2_shard_bytes",), "[(rows, r.randint(1, 4096), w, r.randrange(w), "
                                 "r.choice([2, 4])) for rows, w in [(r.randint(1, 5000), r.randint(1, 8)) "
                                 "for _ in range(6)]]"),
    },
    "04-nf4-and-qlora": {
        "ex1-normal-map": Probe(("normal_map",), "[(r.uniform(0.95, 0.995),) for _ in range(3)]",
                                compare="close", rtol=1e-5, atol=1e-5),
        "ex2-quantize-pack": Probe(("quantize_pack",), "[(r.randint(1, 4), r.choice([16, 32, 64]), "
                                   "r.randint(0, 10**6)) for _ in range(3)]", "quantize(f, *args)", **_CLOSE),
        "ex3-storage-bytes": Probe(("nf4_storage_bytes",), "[(r.randint(1, 10**7), r.choice([32, 64, 128]), "
                                   "r.random() < 0.5, r.choice([128, 256])) for _ in range(5)]"),
        "ex4-minilm-frozen-bytes": Probe(("qlora_frozen_bytes",), "[(r.randint(1, 3), r.choice([8, 24, 100]), "
                                         "r.randint(0, 10**6)) for _ in range(3)]", "frozen_bytes(f, *args)"),
    },
    "05-the-fp16-lora-puzzle": {
        "ex1-padded-lengths": Probe(("padded_batch_lengths",), "[([r.randint(1, 512) for _ in range(r.randint(1, 20))],"
                                    " r.randint(1, 6)) for _ in range(4)]",
                                    "[int(v) for v in f(tensor(args[0], 'int64'), args[1])]"),
        "ex2-depends-on-length": Probe(("depends_on_length",), call="f", note=VALUE_NOTE),
        "ex3-scores-bytes": Probe(("scores_bytes",), "[(r.randint(1, 64), r.randint(1, 64), r.randint(1, 4096), "
                                  "r.choice([1, 2, 4])) for _ in range(4)]"),
        "ex4-fp32-adapter-bytes": Probe(("fp32_adapter_extra_bytes",), "[(r.randint(1, 64), r.randint(1, 4096), "
                                        "r.randint(1, 8192), r.randint(1, 64), r.randint(1, 96)) for _ in range(4)]"),
    },
    # the fixture labs of tests/fixtures/notebooks (the grading tests' small course)
    "01-fixture-lora-count": {
        "ex1-lora-params": Probe(("lora_params",), "[(r.randint(1, 8192), r.randint(1, 8192), r.randint(1, 128)) "
                                 "for _ in range(4)]"),
        "ex2-adapter-bytes": Probe(("adapter_bytes",), call="f", given={"n_params": 65536}, note=VALUE_NOTE),
        "ex3-qv-params": Probe(("qv_params",), "[(r.randint(1, 96), r.randint(1, 8192), r.randint(1, 128)) "
                               "for _ in range(4)]"),
    },
    "02-fixture-gib": {
        "ex1-gib": Probe(("gib",), "[(r.randint(0, 2**45),) for _ in range(4)]", compare="close", rtol=1e-9),
        "ex2-gb": Probe(("gb",), "[(r.randint(0, 2**45),) for _ in range(4)]", compare="close", rtol=1e-9),
        "ex3-fits": Probe(("fits",), "[(int(g * 2**30) + r.choice([-1, 0, 1]) * r.randint(0, 10**6), g) "
                          "for g in [r.choice([8, 12, 16, 24, 40, 80]) for _ in range(6)]]"),
    },
}

# check -> why the grader cannot decide it with fresh inputs (the in-notebook check decides it)
NOTEBOOK_DECIDED: dict[str, dict[str, str]] = {}
