"""Layer names of real models, as the watcher names them (weights only),
for the tests of grouping and of the tab at that size."""

LLAMA_ROLES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)


def llama_layers(blocks: int) -> list[str]:
    """The layers of Hugging Face's LlamaForCausalLM with ``blocks`` decoder
    layers, in model order (80 blocks, LLaMA-70B: 723 layers)."""
    inner = [f"model.layers.{i}.{role}" for i in range(blocks) for role in LLAMA_ROLES]
    return ["model.embed_tokens", *inner, "model.norm", "lm_head"]
