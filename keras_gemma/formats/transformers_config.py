"""Hugging Face transformers `config.json` <-> `GemmaBackbone` config, both ways.

HF facts used here (transformers 5): `rope_parameters` is flat for Gemma 1/2
and keyed by layer type for Gemma 3; older configs use `rope_theta`,
`rope_scaling` and `rope_local_base_freq`.
"""

import os

from keras_gemma.formats.files import read_json
from keras_gemma.layers.architecture import GEMMA4_DEFAULTS
from keras_gemma.layers.architecture import resolve_gemma4_fields
from keras_gemma.layers.decoder_block import FULL_ATTENTION
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION

SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3", "gemma4_text", "gemma4")
SAFETENSORS_INDEX = "model.safetensors.index.json"
SUPPORTED_ROPE_TYPES = ("default", "linear")
# HF spellings of GeGLU's GELU that mean the tanh approximation. Plain "gelu"
# in the original Gemma 1 configs also meant it (transformers PR #29402).
TANH_GELU_NAMES = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast", "gelu")


def read_config(directory):
    """The `config.json` dict of a transformers checkpoint directory."""
    return read_json(
        os.path.join(directory, "config.json"),
        missing_message=(
            f"No `config.json` in {directory!r}: a transformers checkpoint needs "
            "`config.json` and `model.safetensors` (or sharded safetensors with "
            f"`{SAFETENSORS_INDEX}`)."
        ),
    )


def _required(hf_config, key, positive=True):
    """`hf_config[key]`; a `ValueError` naming the key when absent (or not a positive int)."""
    if key not in hf_config:
        raise ValueError(f"`config.json` lacks `{key}`, which a Gemma config needs.")
    value = hf_config[key]
    if positive and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{key}` in `config.json` must be a positive integer; it is {value!r}.")
    return value


def _rope_settings(parameters, where):
    """(theta, linear factor) from one HF rope dict."""
    if parameters is None:
        return None, 1.0
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"Unsupported RoPE type {rope_type!r} in {where}. Gemma checkpoints use "
            f"one of {SUPPORTED_ROPE_TYPES}."
        )
    factor = float(parameters.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return parameters.get("rope_theta"), factor


# `Gemma4TextConfig` defaults for keys a config.json may leave out (transformers 5.24).
_GEMMA4_DEFAULTS = {
    "sliding_window": 512,
    "global_head_dim": 512,
    "hidden_size_per_layer_input": 256,
    "vocab_size_per_layer_input": 262144,
    "rope_parameters": {
        SLIDING_ATTENTION: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL_ATTENTION: {
            "rope_type": "proportional",
            "partial_rotary_factor": 0.25,
            "rope_theta": 1_000_000.0,
        },
    },
}


def _gemma4_fields(hf_config):
    """The Gemma 4 (`gemma4_text`) part of our config: HF `Gemma4TextConfig` semantics."""
    hf_config = dict(_GEMMA4_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None})
    if hf_config.get("use_bidirectional_attention") == "all":
        raise ValueError("`use_bidirectional_attention='all'` (non-causal text) is not supported.")
    layer_types = list(hf_config["layer_types"])
    layer_types[-1] = FULL_ATTENTION  # HF forces the last layer to full attention.
    full = hf_config["rope_parameters"][FULL_ATTENTION]
    sliding = hf_config["rope_parameters"][SLIDING_ATTENTION]
    if full.get("rope_type") not in ("default", "proportional") or sliding.get("rope_type") not in (
        "default",
        None,
    ):
        raise ValueError(f"Unsupported Gemma 4 `rope_parameters`: {hf_config['rope_parameters']}")
    partial = full.get("partial_rotary_factor", 1.0) if full["rope_type"] == "proportional" else 1.0
    per_layer = hf_config["hidden_size_per_layer_input"] or 0
    if per_layer and hf_config["vocab_size_per_layer_input"] != hf_config["vocab_size"]:
        raise ValueError(
            "`vocab_size_per_layer_input` must equal `vocab_size` (Gemma 4). Received: "
            f"{hf_config['vocab_size_per_layer_input']} and {hf_config['vocab_size']}"
        )
    keys_as_values = bool(hf_config.get("attention_k_eq_v", False))
    kv_heads = hf_config["num_key_value_heads"]
    # HF: `num_global_key_value_heads` applies only with `attention_k_eq_v`.
    global_kv_heads = (
        (hf_config.get("num_global_key_value_heads") or kv_heads) if keys_as_values else kv_heads
    )
    global_head_dim = hf_config["global_head_dim"]
    per_layer_config = hf_config.get("per_layer_config")
    if per_layer_config is not None:
        # transformers 5.24 saves the full layers' overrides (only those differing from the
        # sliding layers' values) in place of the two keys above.
        full_layers = {str(i) for i, kind in enumerate(layer_types) if kind == FULL_ATTENTION}
        overrides = list(per_layer_config.values()) or [{}]
        if (per_layer_config and set(per_layer_config) != full_layers) or any(
            o != overrides[0] for o in overrides
        ):
            raise ValueError(
                "`per_layer_config` must give every full-attention layer, and only those, the "
                f"same overrides. Received: {per_layer_config}"
            )
        global_head_dim = overrides[0].get("head_dim", hf_config["head_dim"])
        global_kv_heads = overrides[0].get("num_key_value_heads", kv_heads)
    experts = hf_config["num_experts"] if hf_config.get("enable_moe_block") else 0
    return {
        "layer_types": layer_types,
        "sliding_window_size": hf_config["sliding_window"],
        "query_pre_attn_scalar": 1.0,  # HF Gemma4TextAttention: `scaling = 1.0`.
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": hf_config.get("final_logit_softcapping"),
        "use_post_attention_norm": True,
        "use_post_ffw_norm": True,
        "use_query_key_norm": True,
        "rope_wavelength": float(full["rope_theta"]),
        "local_rope_wavelength": float(sliding["rope_theta"]),
        "rope_scaling_factor": float(full.get("factor", 1.0)),
        "global_head_dim": global_head_dim,
        "num_global_key_value_heads": global_kv_heads,
        "global_keys_as_values": keys_as_values,
        "global_partial_rotary_factor": float(partial),
        "normalization_scale": "scale",
        "use_value_norm": True,
        "use_layer_scalar": True,
        "per_layer_input_dim": per_layer,
        "num_kv_shared_layers": hf_config.get("num_kv_shared_layers", 0),
        "use_double_wide_mlp": bool(hf_config.get("use_double_wide_mlp", False)),
        "num_experts": experts,
        "num_experts_per_token": hf_config.get("top_k_experts") if experts else None,
        "expert_intermediate_dim": hf_config.get("moe_intermediate_size") if experts else None,
    }


def backbone_config_from_transformers(hf_config):
    """Maps a transformers `config.json` dict to `GemmaBackbone` arguments."""
    model_type = hf_config.get("model_type")
    if model_type in ("gemma3", "gemma4") and "text_config" in hf_config:
        # Multimodal checkpoints: the text part (vision/audio configs are not read).
        model_type += "_text"
        hf_config = dict(hf_config["text_config"], model_type=model_type)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Unsupported transformers `model_type` {model_type!r}. Supported: "
            f"{SUPPORTED_MODEL_TYPES[:3] + ('gemma4_text',)} (and the text part of the "
            "multimodal `gemma3` and `gemma4`)."
        )
    if not hf_config.get("tie_word_embeddings", True):
        raise ValueError(
            "Gemma checkpoints tie input and output embeddings; "
            "this config sets `tie_word_embeddings=false`."
        )
    if hf_config.get("attention_bias", False):
        raise ValueError("Gemma has no attention biases; this config sets `attention_bias=true`.")
    activation = (
        hf_config.get("hidden_activation") or hf_config.get("hidden_act") or "gelu_pytorch_tanh"
    )
    if activation not in TANH_GELU_NAMES:
        raise ValueError(
            f"Unsupported `hidden_activation` {activation!r}: Gemma uses tanh-approximate GELU "
            f"({TANH_GELU_NAMES[:2]})."
        )

    num_layers = _required(hf_config, "num_hidden_layers")
    num_query_heads = _required(hf_config, "num_attention_heads")
    hidden_dim = _required(hf_config, "hidden_size")
    head_dim = hf_config.get("head_dim") or hidden_dim // num_query_heads
    is_gemma1 = model_type == "gemma"
    is_gemma3 = model_type == "gemma3_text"

    layer_types = hf_config.get("layer_types")
    if layer_types is None and model_type == "gemma4_text":
        layer_types = [  # `Gemma4TextConfig` default: 5 sliding, then 1 full.
            SLIDING_ATTENTION if (index + 1) % 6 else FULL_ATTENTION for index in range(num_layers)
        ]
        hf_config = dict(hf_config, layer_types=layer_types)
    if layer_types is None:
        if is_gemma1:
            layer_types = [FULL_ATTENTION] * num_layers
        else:
            pattern = hf_config.get("sliding_window_pattern", 6 if is_gemma3 else 2)
            layer_types = [
                SLIDING_ATTENTION if (index + 1) % pattern else FULL_ATTENTION
                for index in range(num_layers)
            ]
    layer_types = list(layer_types)
    has_sliding = SLIDING_ATTENTION in layer_types
    sliding_window = hf_config.get("sliding_window") if has_sliding else None

    # RoPE: global (full attention) and local (sliding) bases and scaling.
    rope_parameters = hf_config.get("rope_parameters")
    legacy_scaling = hf_config.get("rope_scaling")
    if model_type == "gemma4_text":
        global_theta, local_theta, factor, local_factor = 1.0, 1.0, 1.0, 1.0  # `_gemma4_fields`
    elif isinstance(rope_parameters, dict) and FULL_ATTENTION in rope_parameters:
        global_theta, factor = _rope_settings(
            rope_parameters[FULL_ATTENTION], "rope_parameters.full_attention"
        )
        local_theta, local_factor = _rope_settings(
            rope_parameters.get(SLIDING_ATTENTION), "rope_parameters.sliding_attention"
        )
    else:
        global_theta, factor = _rope_settings(rope_parameters, "rope_parameters")
        if legacy_scaling is not None:
            _, factor = _rope_settings(legacy_scaling, "rope_scaling")
        local_theta, local_factor = None, 1.0
        if not is_gemma3:
            # Gemma 1/2 use one RoPE for every layer.
            local_theta, local_factor = global_theta, factor
    default_global = 1_000_000.0 if is_gemma3 else 10_000.0
    global_theta = global_theta or hf_config.get("rope_theta") or default_global
    local_theta = (
        local_theta
        or hf_config.get("rope_local_base_freq")
        or (10_000.0 if is_gemma3 else global_theta)
    )
    if has_sliding and local_factor != 1.0:
        raise ValueError(
            f"RoPE scaling on sliding-window layers (factor {local_factor}) is not "
            "supported: Gemma scales only its full-attention layers."
        )

    query_pre_attn_scalar = hf_config.get("query_pre_attn_scalar")
    if is_gemma1 or query_pre_attn_scalar is None:
        query_pre_attn_scalar = head_dim

    config = {
        "vocabulary_size": _required(hf_config, "vocab_size"),
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": hf_config.get("num_key_value_heads", num_query_heads),
        "hidden_dim": hidden_dim,
        "intermediate_dim": _required(hf_config, "intermediate_size"),
        "head_dim": head_dim,
        "layer_types": layer_types,
        "sliding_window_size": sliding_window,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "attention_logit_soft_cap": None if is_gemma1 else hf_config.get("attn_logit_softcapping"),
        "final_logit_soft_cap": None if is_gemma1 else hf_config.get("final_logit_softcapping"),
        "use_post_attention_norm": not is_gemma1,
        "use_post_ffw_norm": not is_gemma1,
        "use_query_key_norm": is_gemma3,
        "rope_wavelength": float(global_theta),
        "local_rope_wavelength": float(local_theta),
        "rope_scaling_factor": float(factor),
        "layer_norm_epsilon": hf_config.get("rms_norm_eps", 1e-6),
        "dropout": 0.0,
    }
    if model_type == "gemma4_text":
        config.update(_gemma4_fields(hf_config))
    return config


def transformers_config_from_backbone(config):
    """A transformers `config.json` dict for a `GemmaBackbone` config.

    Picks the oldest model type that can express the config: `gemma` (no
    sliding layers, soft-caps or extra norms), `gemma2`, else `gemma3_text`.
    """
    layer_types = list(config["layer_types"])
    has_sliding = SLIDING_ATTENTION in layer_types
    is_gemma1 = not (
        has_sliding
        or config["use_post_attention_norm"]
        or config["use_post_ffw_norm"]
        or config["use_query_key_norm"]
        or config["attention_logit_soft_cap"]
        or config["final_logit_soft_cap"]
        or config["query_pre_attn_scalar"] != config["head_dim"]
    )
    is_gemma3 = config["use_query_key_norm"]
    if config.get("normalization_scale", "one_plus_scale") == "scale":
        return _gemma4_transformers_config(config)
    if not is_gemma1 and not (config["use_post_attention_norm"] and config["use_post_ffw_norm"]):
        raise ValueError(
            "This config mixes Gemma 1 and Gemma 2/3 features (post norms off with "
            "sliding layers, soft-caps or query/key norms); transformers has no model type for it."
        )
    common = {
        "vocab_size": config["vocabulary_size"],
        "hidden_size": config["hidden_dim"],
        "intermediate_size": config["intermediate_dim"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_query_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "head_dim": config["head_dim"],
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": config["layer_norm_epsilon"],
        "tie_word_embeddings": True,
        "attention_bias": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "max_position_embeddings": 131072 if is_gemma3 else 8192,
        "torch_dtype": "float32",
    }
    global_rope = {"rope_type": "default", "rope_theta": config["rope_wavelength"]}
    if config["rope_scaling_factor"] != 1.0:
        global_rope = {
            "rope_type": "linear",
            "factor": config["rope_scaling_factor"],
            "rope_theta": config["rope_wavelength"],
        }
    if is_gemma1:
        return dict(
            common,
            model_type="gemma",
            architectures=["GemmaForCausalLM"],
            rope_parameters=global_rope,
        )
    extra = {
        "layer_types": layer_types,
        "sliding_window": config["sliding_window_size"] or 4096,
        "query_pre_attn_scalar": config["query_pre_attn_scalar"],
        "attn_logit_softcapping": config["attention_logit_soft_cap"],
        "final_logit_softcapping": config["final_logit_soft_cap"],
    }
    if not is_gemma3:
        if config["local_rope_wavelength"] != config["rope_wavelength"] or (
            has_sliding and config["rope_scaling_factor"] != 1.0
        ):
            raise ValueError(
                "transformers' `gemma2` uses one RoPE for every layer; this config's "
                "sliding and full layers differ and cannot be exported as gemma2."
            )
        return dict(
            common,
            **extra,
            model_type="gemma2",
            architectures=["Gemma2ForCausalLM"],
            rope_parameters=global_rope,
        )
    return dict(
        common,
        **extra,
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM"],
        rope_parameters={
            FULL_ATTENTION: global_rope,
            SLIDING_ATTENTION: {
                "rope_type": "default",
                "rope_theta": config["local_rope_wavelength"],
            },
        },
    )


def _gemma4_transformers_config(config):
    """`gemma4_text` config.json for a Gemma 4 backbone config (inverse of `_gemma4_fields`)."""
    config = resolve_gemma4_fields(config, dict(GEMMA4_DEFAULTS, **config))
    expected = {
        "query_pre_attn_scalar": 1.0,
        "attention_logit_soft_cap": None,
        "use_post_attention_norm": True,
        "use_post_ffw_norm": True,
        "use_query_key_norm": True,
        "use_value_norm": True,
        "use_layer_scalar": True,
    }
    for name, value in expected.items():
        if config[name] != value:
            raise ValueError(
                f"transformers' `gemma4_text` needs `{name}={value!r}`; this config has "
                f"{config[name]!r}, so it cannot be exported."
            )
    keys_as_values = config["global_keys_as_values"]
    if not keys_as_values and config["num_global_key_value_heads"] != config["num_key_value_heads"]:
        raise ValueError(
            "transformers' `gemma4_text` gives full layers their own KV-head count only with "
            "`attention_k_eq_v`: set `global_keys_as_values=True` or equal KV-head counts."
        )
    experts = config["num_experts"]
    full_rope = {"rope_type": "proportional", "rope_theta": config["rope_wavelength"]}
    full_rope["partial_rotary_factor"] = config["global_partial_rotary_factor"]
    if config["rope_scaling_factor"] != 1.0:
        full_rope["factor"] = config["rope_scaling_factor"]
    return {
        "model_type": "gemma4_text",
        "architectures": ["Gemma4ForCausalLM"],
        "vocab_size": config["vocabulary_size"],
        "hidden_size": config["hidden_dim"],
        "intermediate_size": config["intermediate_dim"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_query_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "num_global_key_value_heads": config["num_global_key_value_heads"],
        "head_dim": config["head_dim"],
        "global_head_dim": config["global_head_dim"],
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": config["layer_norm_epsilon"],
        "tie_word_embeddings": True,
        "attention_bias": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "max_position_embeddings": 131072,
        "torch_dtype": "float32",
        "layer_types": list(config["layer_types"]),
        "sliding_window": config["sliding_window_size"] or 512,
        "final_logit_softcapping": config["final_logit_soft_cap"],
        "rope_parameters": {
            FULL_ATTENTION: full_rope,
            SLIDING_ATTENTION: {
                "rope_type": "default",
                "rope_theta": config["local_rope_wavelength"],
            },
        },
        "attention_k_eq_v": keys_as_values,
        "hidden_size_per_layer_input": config["per_layer_input_dim"],
        "vocab_size_per_layer_input": config["vocabulary_size"],
        "num_kv_shared_layers": config["num_kv_shared_layers"],
        "use_double_wide_mlp": config["use_double_wide_mlp"],
        "enable_moe_block": bool(experts),
        "num_experts": experts or None,
        "top_k_experts": config["num_experts_per_token"],
        "moe_intermediate_size": config["expert_intermediate_dim"],
    }
