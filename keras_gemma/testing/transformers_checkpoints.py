"""Tiny random transformers checkpoints for tests (needs torch + transformers)."""

import json
import os

import numpy as np

from keras_gemma.formats.transformers_config import transformers_config_from_backbone


def make_transformers_model(config, seed=0, scale=1.0, embedding_scale=1.0):
    """A transformers Gemma causal LM for our `config`, weights re-drawn.

    Every weight is re-drawn so each term matters: norm weights around 0 with
    spread 0.5 (so `1 + w` is far from 1), projections with variance `1/fan_in`
    times `scale`, embeddings N(0, `embedding_scale`**2). A small
    `embedding_scale` (0.05) makes greedy continuations depend on the context
    instead of repeating one token, which generation tests need.
    """
    import torch
    import transformers

    hf_config = transformers_config_from_backbone(config)
    model_type = hf_config.pop("model_type")
    hf_config.pop("architectures")
    hf_config.pop("torch_dtype")
    config_class = {
        "gemma": transformers.GemmaConfig,
        "gemma2": transformers.Gemma2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
        "gemma4_text": transformers.Gemma4TextConfig,
    }[model_type]
    model_class = {
        "gemma": transformers.GemmaForCausalLM,
        "gemma2": transformers.Gemma2ForCausalLM,
        "gemma3_text": transformers.Gemma3ForCausalLM,
        "gemma4_text": transformers.Gemma4ForCausalLM,
    }[model_type]
    hf = config_class(**hf_config)
    hf._attn_implementation = "eager"
    if model_type == "gemma4_text":
        hf._experts_implementation = "eager"  # the plain per-expert loop, any width
    model = model_class(hf).eval()
    generator = np.random.default_rng(seed)
    # Gemma 4 norms multiply by `w` (not `1 + w`): their weights (and layer scalars) are drawn
    # around 1, spread 0.25: at 0.5 some fall near 0 and float32 HF drifts 5e-4 from float64.
    norm_center, norm_spread = (1.0, 0.25) if model_type == "gemma4_text" else (0.0, 0.5)
    with torch.no_grad():
        for name, parameter in list(model.named_parameters()) + list(model.named_buffers()):
            shape = tuple(parameter.shape)
            if "rotary_emb" in name or name.endswith("embed_scale"):
                continue  # computed buffers, not weights
            if name.endswith(("norm.weight", "layer_scalar", "router.scale", "per_expert_scale")):
                values = generator.normal(norm_center, norm_spread, shape)
            elif "embed_tokens" in name:
                values = generator.normal(0.0, embedding_scale, shape)
            else:
                values = generator.normal(0.0, scale / np.sqrt(shape[-1]), shape)
            parameter.copy_(torch.tensor(values, dtype=parameter.dtype))
    return model


def save_transformers_checkpoint(model, directory, max_shard_size=None, tokenizer_proto=None):
    """`save_pretrained` to `directory` (sharded when `max_shard_size` is given)."""
    kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(directory, **kwargs)
    if tokenizer_proto is not None:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(tokenizer_proto)
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def transformers_logits(model, token_ids, padding_mask):
    """Float32 NumPy logits of a transformers model."""
    import torch

    with torch.no_grad():
        output = model(
            input_ids=torch.tensor(np.asarray(token_ids), dtype=torch.long),
            attention_mask=torch.tensor(np.asarray(padding_mask), dtype=torch.long),
        )
    return output.logits.float().numpy()
