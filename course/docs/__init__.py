"""Every computed figure of the theory files, produced from the package and written into the Markdown.

One module per source of figures: ``theory01`` … ``theory04`` (the figures and tables each theory file
introduces), ``lab05`` (lab 05's results that file 03 cites), ``drills`` (the drill solutions'
arithmetic); they compute from ``facts`` (dtype sizes, regimes, counts, NF4 bits), ``specs`` and
``traces`` (fake-tensor traces and their cache) and format with ``fmt``. ``render`` rewrites the
files: ``python -m course.docs`` (``make docs``).

Where the figures come from:

* parameter counts: ``minigpt.model.parameter_count`` (and ``zoo.build(..., device="meta")``);
* LoRA counts: ``minigpt.lora.lora_parameter_count``;
* NF4 bytes: ``minigpt.nf4.nf4_nbytes`` (and ``quantize_nf4`` on a real tensor, in the tests);
* bytes per parameter: the dtype sizes torch reports (``element_size()``), per precision regime;
* memory of a training step: ``minigpt.memory.measure_step(mode="fake", semantics="cuda")``
  ("traced on fake tensors with simulated CUDA semantics"; checkpointing with ``semantics="cpu"``,
  labelled so); the closed-form tables (ZeRO, alignment) are "estimated" from the counts above.
"""
from .facts import (ADAM_MOMENTS, BF16, BIG, DQ_BLOCK, FP16, FP32, GPUS, MODELS, NF4_BLOCK, Regime,
                    alignment_bytes, n_lora, n_params, nf4_bits, regimes)
from .lab05 import _mechanisms
from .render import LANGS, REGION, TABLES, check, doc_files, figures, main, regenerate_text, render, write
from .specs import (ADAPT, LLAMA, MINI, ROBERTA_B, ROBERTA_LORA, ROBERTA_SCALE, ROBERTA_SHORT, all_trace_specs,
                    roberta)
from ..traces import TRACE_CODE, TraceSpec, TraceStore, _final_grads, code_files, run_trace, store, trace

__all__ = ["ADAM_MOMENTS", "BF16", "BIG", "DQ_BLOCK", "FP16", "FP32", "GPUS", "MODELS", "NF4_BLOCK", "Regime",
           "alignment_bytes", "n_lora", "n_params", "nf4_bits", "regimes", "LANGS", "REGION", "TABLES", "check",
           "doc_files", "figures", "main", "regenerate_text", "render", "write", "ADAPT", "LLAMA", "MINI",
           "ROBERTA_B", "ROBERTA_LORA", "ROBERTA_SCALE", "ROBERTA_SHORT", "all_trace_specs", "roberta",
           "TRACE_CODE", "TraceSpec", "TraceStore", "code_files", "run_trace", "store", "trace",
           "_final_grads", "_mechanisms"]
