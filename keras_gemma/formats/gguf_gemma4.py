"""Gemma 4 GGUF files (`general.architecture` "gemma4"), seen as an HF `gemma4_text` checkpoint.

Facts from llama.cpp's converter (`conversion/gemma.py`, `Gemma4Model`, llama.cpp 11434) and
its reader (`src/models/gemma4.cpp`), checked on files that converter wrote from tiny
`Gemma4ForCausalLM` checkpoints (`tests/formats/gguf_gemma4_test.py`):

- Every tensor is stored as HF has it: no norm is shifted (`norm_shift` is 0: Gemma 4 norms
  multiply by `w`), nothing is permuted; the experts stay fused as HF's `gate_up_proj`
  `[e, 2f, d]` (`ffn_gate_up_exps`, gate rows first). llama.cpp also reads them as separate
  `ffn_gate_exps` / `ffn_up_exps`, which are joined back here.
- Renamed: `router.scale` -> `ffn_gate_inp.scale`, `router.per_expert_scale` ->
  `ffn_down_exps.scale`, `layer_scalar` -> `layer_output_scale`, the per-layer-input (PLE)
  tensors -> Gemma 3n's names (`inp_gate`, `proj`, `post_norm`, `per_layer_*`).
- KV-sharing layers keep no key/value weights; the converter copies any stale ones a
  checkpoint carries, and llama.cpp ignores them, as they are ignored here.
- A full layer without `attn_v` takes its keys as values (HF `attention_k_eq_v`).
- Per-layer values are arrays: `attention.head_count_kv`, `feed_forward_length` (doubled on
  the KV-sharing layers with `use_double_wide_mlp`), `attention.sliding_window_pattern`
  (True for sliding layers). `attention.key_length` is the full layers' head dim,
  `attention.key_length_swa` the sliding layers'.
- Proportional RoPE on full layers is `rope_freqs` (one factor per rotary pair: 1 for the
  rotated pairs, 1e30 for the rest); `rope.dimension_count` is the whole head dim.
- Attention scale 1.0 and the token embedding scale sqrt(hidden) are hard-coded in llama.cpp;
  GGUF holds no key for them.
"""

import numpy as np

from keras_gemma.formats.gguf_header import BLOCK_TENSORS
from keras_gemma.formats.gguf_header import GEMMA2_BLOCK_NORMS

ARCHITECTURE = "gemma4"
MODEL_TYPE = "gemma4_text"
SLIDING, FULL = "sliding_attention", "full_attention"

# GGUF tensor name (inside `blk.N.`) -> HF name (inside `model.layers.N.`): Gemma 2/3's
# attention, MLP and four norms, and Gemma 4's own.
_BLOCK_TENSORS = {
    **BLOCK_TENSORS,
    **GEMMA2_BLOCK_NORMS,
    "layer_output_scale.weight": "layer_scalar",
    "inp_gate.weight": "per_layer_input_gate.weight",
    "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
    "ffn_gate_inp.weight": "router.proj.weight",
    "ffn_gate_inp.scale": "router.scale",
    "ffn_down_exps.scale": "router.per_expert_scale",
    "ffn_gate_up_exps.weight": "experts.gate_up_proj",
    "ffn_down_exps.weight": "experts.down_proj",
}
_SPLIT_EXPERTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight")  # HF `gate_up_proj`, in order
_KEY_VALUE_TENSORS = ("attn_k.weight", "attn_v.weight", "attn_k_norm.weight")
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # Absent: the embeddings are tied.
    "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
}
_ROPE_FREQS = "rope_freqs.weight"
_UNROTATED_FACTOR = 1e29  # The converter writes 1e30; anything this large stops the rotation.


def tensor_entries(metadata, tensor_infos):
    """`({HF name: (TensorInfo or parts, False)}, rope factors or None)` of a Gemma 4 file.

    Nothing is shifted (the `False`: no `1 + w` to undo). Stale key/value tensors of
    KV-sharing layers are left out; `rope_freqs` is returned apart, for the config.

    Args:
        metadata: the file's `gguf_header.Metadata`.
        tensor_infos: its `gguf_header.TensorInfo`s.
    """
    path = metadata.path
    num_layers = metadata.positive_int("block_count")
    first_shared = num_layers - _shared_layers(metadata, num_layers)
    entries, split_experts, rope_factors = {}, {}, None
    for tensor in tensor_infos:
        name = tensor.name
        hf_name = _GLOBAL_TENSORS.get(name)
        if name == _ROPE_FREQS:
            rope_factors = tensor
            continue
        if name.startswith("blk.") and name.count(".") >= 2:
            _, index, suffix = name.split(".", 2)
            if index.isdigit():
                layer = int(index)
                if suffix in _KEY_VALUE_TENSORS and layer >= first_shared:
                    continue  # A KV-sharing layer's stale key/value weights (llama.cpp: unused).
                if suffix in _SPLIT_EXPERTS:
                    split_experts.setdefault(layer, {})[suffix] = tensor
                    continue
                hf_suffix = _BLOCK_TENSORS.get(suffix)
                hf_name = hf_suffix and f"model.layers.{layer}.{hf_suffix}"
        if hf_name is None:
            hint = ""
            if name.endswith("attn_qkv.weight"):
                hint = (
                    " (a fused query/key/value projection, which this reader does not split: "
                    "convert the checkpoint again without `--fuse-qkv`)"
                )
            raise ValueError(
                f"GGUF file {path!r} has tensor {name!r}, which a gemma4 text model does not "
                f"have{hint}. keras_gemma reads the tensors that llama.cpp's "
                "`convert_hf_to_gguf.py` writes for Gemma 4 text checkpoints."
            )
        entries[hf_name] = (tensor, False)
    for layer, parts in sorted(split_experts.items()):
        hf_name = f"model.layers.{layer}.experts.gate_up_proj"
        if len(parts) != 2 or hf_name in entries:
            raise ValueError(
                f"GGUF file {path!r} has {sorted(parts)} for layer {layer}'s experts"
                f"{' beside ffn_gate_up_exps.weight' if hf_name in entries else ''}; separate "
                f"expert weights are both {list(_SPLIT_EXPERTS)}, in place of the fused one."
            )
        entries[hf_name] = (
            tuple(parts[suffix] for suffix in _SPLIT_EXPERTS),
            False,
        )
    factors = None
    if rope_factors is not None:
        from gguf import quants

        factors = np.asarray(quants.dequantize(rope_factors.data, rope_factors.quant_type))
        factors = factors.astype(np.float32).reshape(-1)
    return entries, factors


def _shared_layers(metadata, num_layers):
    shared = int(metadata.get("attention.shared_kv_layers", 0) or 0)
    if shared < 0 or shared > max(num_layers - 2, 0):
        raise ValueError(
            f"GGUF file {metadata.path!r} has 'gemma4.attention.shared_kv_layers' = {shared} for "
            f"{num_layers} layers; at least two layers must keep their own keys and values."
        )
    return shared


def transformers_config(metadata, shapes, rope_factors):
    """The HF `gemma4_text` config.json dict of a Gemma 4 file (without the vocabulary fields).

    Args:
        metadata: the file's `gguf_header.Metadata`.
        shapes: `{HF name: shape}` of its tensors (`tensor_entries`).
        rope_factors: its `rope_freqs` values, or None.
    """
    path, num_layers = metadata.path, metadata.positive_int("block_count")
    layer_types = _layer_types(metadata, num_layers)
    shared = _shared_layers(metadata, num_layers)
    first_shared = num_layers - shared
    if shared and layer_types[first_shared - 2 : first_shared] != [SLIDING, FULL]:
        # llama.cpp reuses layer `first - 2` for sliding and `first - 1` for full layers
        # (`llama-model.cpp`, the KV reuse callback); HF the last earlier one of each type.
        raise ValueError(
            f"GGUF file {path!r} shares keys and values from layer {first_shared} on, but "
            f"layers {first_shared - 2} and {first_shared - 1} are not sliding then full: "
            "llama.cpp and transformers would attend different layers."
        )
    num_heads = _same_on_every_layer(
        metadata, "attention.head_count", num_layers, "query head counts"
    )
    hidden_size = metadata.positive_int("embedding_length")
    global_head_dim = metadata.positive_int("attention.key_length")
    head_dim = metadata.positive_int("attention.key_length_swa", global_head_dim)
    for key, expected in (
        ("attention.value_length", global_head_dim),
        ("attention.value_length_swa", head_dim),
        ("rope.dimension_count", global_head_dim),
        ("rope.dimension_count_swa", head_dim),
    ):
        value = metadata.positive_int(key, expected)
        if value != expected:
            raise ValueError(
                f"GGUF file {path!r} has 'gemma4.{key}' = {value}, but Gemma 4 needs "
                f"{expected} (the head dim): other value sizes or partial RoPE written this way "
                "are not supported."
            )
    kv_heads = metadata.per_layer("attention.head_count_kv", num_layers, num_heads)
    sliding_kv = {kv_heads[i] for i, kind in enumerate(layer_types) if kind == SLIDING}
    full_kv = {kv_heads[i] for i, kind in enumerate(layer_types) if kind == FULL}
    if len(sliding_kv) > 1 or len(full_kv) > 1:
        raise ValueError(
            f"GGUF file {path!r} has key/value head counts {kv_heads}; Gemma 4 has one count "
            "for the sliding layers and one for the full layers."
        )
    num_kv_heads = min(sliding_kv or full_kv)
    num_global_kv_heads = min(full_kv or sliding_kv)
    keys_as_values = _keys_as_values(path, shapes, layer_types, first_shared)
    if num_global_kv_heads != num_kv_heads and not keys_as_values:
        raise ValueError(
            f"GGUF file {path!r} gives its full layers {num_global_kv_heads} key/value heads "
            f"and its sliding layers {num_kv_heads}; transformers' gemma4_text allows that only "
            "when full layers take their keys as values (no `attn_v`)."
        )
    intermediate_size, double_wide = _feed_forward(metadata, num_layers, first_shared)
    experts = _experts(metadata, shapes, num_layers)
    final_cap = metadata.get("final_logit_softcapping")
    return {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": MODEL_TYPE,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "num_global_key_value_heads": num_global_kv_heads,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": metadata.float32("attention.layer_norm_rms_epsilon", 1e-6),
        "max_position_embeddings": metadata.positive_int("context_length"),
        "layer_types": layer_types,
        "sliding_window": metadata.positive_int("attention.sliding_window"),
        "final_logit_softcapping": None if final_cap is None else float(final_cap),
        "rope_parameters": _rope_parameters(metadata, global_head_dim, rope_factors),
        "attention_k_eq_v": keys_as_values,
        "hidden_size_per_layer_input": int(metadata.get("embedding_length_per_layer_input", 0)),
        "vocab_size_per_layer_input": shapes["model.embed_tokens.weight"][0],
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": double_wide,
        **experts,
        "tie_word_embeddings": "lm_head.weight" not in shapes,
        "attention_bias": False,
    }


def _layer_types(metadata, num_layers):
    pattern = metadata.get("attention.sliding_window_pattern")
    if isinstance(pattern, np.ndarray):
        pattern = pattern.tolist()
    if not isinstance(pattern, list) or len(pattern) != num_layers:
        raise ValueError(
            f"GGUF file {metadata.path!r} needs 'gemma4.attention.sliding_window_pattern' as "
            f"{num_layers} booleans, one per layer of 'gemma4.block_count' = {num_layers} (True "
            f"for sliding layers); it has {pattern!r}. The file is damaged or was written wrongly."
        )
    layer_types = [SLIDING if sliding else FULL for sliding in pattern]
    if layer_types[-1] != FULL:
        raise ValueError(
            f"GGUF file {metadata.path!r} makes its last layer a sliding-window layer; "
            "Gemma 4's last layer attends in full (transformers forces it)."
        )
    return layer_types


def _keys_as_values(path, shapes, layer_types, first_shared):
    """True when the full layers that own keys have no value projection (`attn_v`)."""
    kinds = {
        (kind, f"model.layers.{index}.self_attn.v_proj.weight" in shapes)
        for index, kind in enumerate(layer_types[:first_shared])
    }  # (layer type, has values)
    if (SLIDING, False) in kinds or {(FULL, False), (FULL, True)} <= kinds:
        raise ValueError(
            f"GGUF file {path!r} lacks `attn_v` on some layers that own keys: Gemma 4 takes keys "
            "as values on every full layer or none, and never on sliding layers. A tensor "
            "is missing from the file."
        )
    return (FULL, False) in kinds


def _feed_forward(metadata, num_layers, first_shared):
    """`(intermediate_size, use_double_wide_mlp)` from the per-layer feed-forward widths."""
    widths = metadata.per_layer("feed_forward_length", num_layers)
    width = widths[0]
    for double_wide in (False, True):
        wide = 2 * width if double_wide else width
        if widths == [width] * first_shared + [wide] * (num_layers - first_shared):
            return width, double_wide and first_shared < num_layers
    raise ValueError(
        f"GGUF file {metadata.path!r} has feed-forward widths {widths}; Gemma 4 has one width, "
        "doubled on the KV-sharing layers with `use_double_wide_mlp`."
    )


def _experts(metadata, shapes, num_layers):
    routers = [f"model.layers.{i}.router.proj.weight" in shapes for i in range(num_layers)]
    if not any(routers):
        return {
            "enable_moe_block": False,
            "num_experts": None,
            "top_k_experts": None,
            "moe_intermediate_size": None,
        }
    if not all(routers):
        raise ValueError(
            f"GGUF file {metadata.path!r} has a mixture of experts (`ffn_gate_inp`) on layers "
            f"{[i for i, has in enumerate(routers) if has]} only; Gemma 4 has it on every "
            "layer or none. A tensor is missing from the file."
        )
    width = _same_on_every_layer(
        metadata, "expert_feed_forward_length", num_layers, "expert widths"
    )
    return {
        "enable_moe_block": True,
        "num_experts": metadata.positive_int("expert_count"),
        "top_k_experts": metadata.positive_int("expert_used_count"),
        "moe_intermediate_size": width,
    }


def _same_on_every_layer(metadata, key, num_layers, what):
    """The value of the per-layer `key`, which Gemma 4 keeps the same on every layer."""
    values = set(metadata.per_layer(key, num_layers))
    if len(values) != 1:
        raise ValueError(
            f"GGUF file {metadata.path!r} has {what} {sorted(values)} across layers; "
            "Gemma 4 has one for every layer."
        )
    return values.pop()


def _rope_parameters(metadata, global_head_dim, rope_factors):
    """HF `rope_parameters`: proportional partial RoPE on full layers, read from `rope_freqs`."""
    path = metadata.path
    partial = 1.0
    if rope_factors is not None:
        not_one = np.flatnonzero(rope_factors != 1.0)
        rotated = int(not_one[0]) if not_one.size else rope_factors.size  # leading 1s
        if (
            rope_factors.shape != (global_head_dim // 2,)
            or not rotated
            or not np.all(rope_factors[rotated:] >= _UNROTATED_FACTOR)
        ):
            raise ValueError(
                f"GGUF file {path!r} has `rope_freqs` {rope_factors.tolist()}: Gemma 4 files hold "
                f"{global_head_dim // 2} factors, 1 for the rotated pairs then 1e30 "
                "(proportional RoPE); other RoPE frequency factors are not supported."
            )
        partial = 2 * rotated / global_head_dim
    # llama.cpp's defaults when the keys are absent (`llama-model.cpp`, `llama-hparams.h`).
    full = {
        "rope_type": "proportional",
        "partial_rotary_factor": partial,
        "rope_theta": float(metadata.get("rope.freq_base", 10_000.0)),
    }
    scaling = metadata.get("rope.scaling.type", "linear")
    factor = float(metadata.get("rope.scaling.factor", 0.0) or 1.0)
    if scaling not in ("none", "linear"):
        raise ValueError(
            f"GGUF file {path!r} has 'gemma4.rope.scaling.type' = {scaling!r}; only 'linear' "
            "(or 'none') RoPE scaling is supported."
        )
    if scaling == "linear" and factor != 1.0:
        full["factor"] = factor  # llama.cpp scales full layers only (`get_rope_freq_scale`).
    sliding = {
        "rope_type": "default",
        "rope_theta": float(metadata.get("rope.freq_base_swa", 10_000.0)),
    }
    return {FULL: full, SLIDING: sliding}
