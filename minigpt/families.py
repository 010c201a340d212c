"""The linear layers of each model family the course knows, in one table.

``minigpt.lora`` counts LoRA parameters from it and ``minigpt.memory.estimate`` sizes weights and
activations from it, so the two cannot disagree about which layers a model has. Names are the
qualified module names each model registers (MiniGPT's GPT; transformers 5.23's
RobertaForSequenceClassification, BertForSequenceClassification and LlamaForCausalLM, whose
modules MistralForCausalLM and Qwen2ForCausalLM share).
"""
from __future__ import annotations

FAMILIES = ("minigpt", "roberta", "bert", "llama")
# The output layer a causal LM ties to its embeddings: peft never adapts it.
OUTPUT_LAYER = "lm_head"

Linear = tuple[str, int, int, bool]   # (qualified name, in_features, out_features, has bias)


def linear_layers(family: str, *, n_layer: int, d: int, ffn: int, kv_dim: int, vocab: int = 0,
                  n_labels: int = 2, swiglu: bool = False, bias: bool = True, q_dim: int | None = None,
                  o_bias: bool | None = None) -> list[Linear]:
    """Every Linear layer of a model of ``family``, in the order the model registers them.

    d: hidden width; ffn: MLP width; kv_dim: width of k and v (grouped-query attention); q_dim: width
    of q (heads x head_dim, default d); bias: of MiniGPT's layers and LLaMA's attention projections;
    o_bias: of LLaMA's o_proj when it differs (Mistral and Qwen2 are LLaMA-shaped: family "llama";
    Qwen2 has biases on q, k, v only: bias=True, o_bias=False).
    """
    q = d if q_dim is None else q_dim
    ob = bias if o_bias is None else o_bias
    out: list[Linear] = []
    if family == "minigpt":
        for i in range(n_layer):
            a, m = f"blocks.{i}.attn.", f"blocks.{i}.mlp."
            out += [(a + "q_proj", d, q, bias), (a + "k_proj", d, kv_dim, bias), (a + "v_proj", d, kv_dim, bias),
                    (a + "o_proj", q, d, bias)]
            if swiglu:
                out.append((m + "gate_proj", d, ffn, bias))
            out += [(m + "up_proj", d, ffn, bias), (m + "down_proj", ffn, d, bias)]
        out.append((OUTPUT_LAYER, d, vocab, False))
    elif family in ("roberta", "bert"):
        for i in range(n_layer):
            p = f"{family}.encoder.layer.{i}."
            out += [(p + "attention.self.query", d, d, True), (p + "attention.self.key", d, d, True),
                    (p + "attention.self.value", d, d, True), (p + "attention.output.dense", d, d, True),
                    (p + "intermediate.dense", d, ffn, True), (p + "output.dense", ffn, d, True)]
        if family == "roberta":   # RobertaClassificationHead; no pooler
            out += [("classifier.dense", d, d, True), ("classifier.out_proj", d, n_labels, True)]
        else:                     # BERT pools the first token, then one linear
            out += [("bert.pooler.dense", d, d, True), ("classifier", d, n_labels, True)]
    elif family == "llama":
        for i in range(n_layer):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            out += [(a + "q_proj", d, q, bias), (a + "k_proj", d, kv_dim, bias), (a + "v_proj", d, kv_dim, bias),
                    (a + "o_proj", q, d, ob), (m + "gate_proj", d, ffn, False), (m + "up_proj", d, ffn, False),
                    (m + "down_proj", ffn, d, False)]
        out.append((OUTPUT_LAYER, d, vocab, False))
    else:
        raise ValueError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}.")
    return out
