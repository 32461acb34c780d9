"""Tiny GGUF files written the way llama.cpp lays them out, for tests."""

import numpy as np


def write_tiny_gguf(path, architecture="gemma2", num_layers=4, extra=None, tensor_shapes=None):
    """Writes a small float32 Gemma GGUF the way llama.cpp lays one out.

    Args:
        path: str. The file to write.
        architecture: "gemma", "gemma2" or "gemma3".
        num_layers: int.
        extra: optional `{key: value}` metadata under the architecture's prefix,
            added or replacing the values written (`{"attention.head_count": 0}`).
        tensor_shapes: optional `{GGUF tensor name: shape}` replacing the
            shapes written, for files whose tensors contradict their metadata.

    Returns:
        `{GGUF tensor name: float32 array}` as written.
    """
    import gguf

    hidden, heads, kv_heads, head_dim, ffn = 8, 2, 1, 4, 16
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)] + ["▁a", "ab"]
    types = [3, 3, 3, 3, 3] + [6] * 256 + [1, 1]
    writer = gguf.GGUFWriter(path, architecture)
    metadata = {
        "context_length": 128,
        "embedding_length": hidden,
        "block_count": num_layers,
        "feed_forward_length": ffn,
        "attention.head_count": heads,
        "attention.head_count_kv": kv_heads,
        "attention.key_length": head_dim,
        "attention.layer_norm_rms_epsilon": 1e-6,
    }
    metadata.update(extra or {})
    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(f"{architecture}.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"{architecture}.{key}", value)
        else:
            writer.add_uint32(f"{architecture}.{key}", value)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * (len(tokens) - 2) + [-0.0, -1.0])
    writer.add_token_types(types)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 2)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 3)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 0)
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    block = {
        "attn_q.weight": (heads * head_dim, hidden),
        "attn_k.weight": (kv_heads * head_dim, hidden),
        "attn_v.weight": (kv_heads * head_dim, hidden),
        "attn_output.weight": (hidden, heads * head_dim),
        "attn_norm.weight": (hidden,),
        "ffn_norm.weight": (hidden,),
        "ffn_gate.weight": (ffn, hidden),
        "ffn_up.weight": (ffn, hidden),
        "ffn_down.weight": (hidden, ffn),
    }
    if architecture != "gemma":
        block["post_attention_norm.weight"] = (hidden,)
        block["post_ffw_norm.weight"] = (hidden,)
    for i in range(num_layers):
        tensors.update({f"blk.{i}.{name}": shape for name, shape in block.items()})
    tensors.update(tensor_shapes or {})
    arrays = {}
    for name, shape in tensors.items():
        arrays[name] = rng.normal(size=shape).astype(np.float32)
        writer.add_tensor(name, arrays[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arrays
