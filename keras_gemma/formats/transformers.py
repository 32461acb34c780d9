"""Hugging Face transformers checkpoints (`gemma`, `gemma2`, `gemma3_text`) in and out.

HF facts used here (transformers 5): projection weights are `[out, in]`;
`rope_parameters` is flat for Gemma 1/2 and keyed by layer type for Gemma 3;
older configs use `rope_theta`, `rope_scaling` and `rope_local_base_freq`.
"""

import json
import os

import numpy as np

from keras_gemma.layers.decoder_block import FULL_ATTENTION
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION

SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SUPPORTED_ROPE_TYPES = ("default", "linear")
# HF spellings of GeGLU's GELU that mean the tanh approximation. Plain "gelu"
# in the original Gemma 1 configs also meant it (transformers PR #29402).
TANH_GELU_NAMES = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast", "gelu")
# Prefixes of the text decoder in HF checkpoints: text-only models, and the
# language model inside Gemma 3 multimodal checkpoints (old and new layout).
WEIGHT_PREFIXES = ("model.", "language_model.model.", "model.language_model.", "")


def read_config(directory):
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No `config.json` in {directory!r}: a transformers checkpoint needs "
            "`config.json` and `model.safetensors` (or sharded safetensors with "
            f"`{SAFETENSORS_INDEX}`)."
        )
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{path}` is not valid JSON: {error}") from None


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


def backbone_config_from_transformers(hf_config):
    """Maps a transformers `config.json` dict to `GemmaBackbone` arguments."""
    model_type = hf_config.get("model_type")
    if model_type == "gemma3" and "text_config" in hf_config:
        hf_config = dict(hf_config["text_config"], model_type="gemma3_text")
        model_type = "gemma3_text"
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Unsupported transformers `model_type` {model_type!r}. Supported: "
            f"{SUPPORTED_MODEL_TYPES[:3]} (and Gemma 3 multimodal `gemma3`, text part)."
        )
    if not hf_config.get("tie_word_embeddings", True):
        raise ValueError("Gemma checkpoints tie input and output embeddings; this config sets `tie_word_embeddings=false`.")
    if hf_config.get("attention_bias", False):
        raise ValueError("Gemma has no attention biases; this config sets `attention_bias=true`.")
    activation = hf_config.get("hidden_activation") or hf_config.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in TANH_GELU_NAMES:
        raise ValueError(
            f"Unsupported `hidden_activation` {activation!r}: Gemma uses tanh-approximate GELU "
            f"({TANH_GELU_NAMES[:2]})."
        )

    num_layers = hf_config["num_hidden_layers"]
    num_query_heads = hf_config["num_attention_heads"]
    hidden_dim = hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim") or hidden_dim // num_query_heads
    is_gemma1 = model_type == "gemma"
    is_gemma3 = model_type == "gemma3_text"

    layer_types = hf_config.get("layer_types")
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
    if isinstance(rope_parameters, dict) and FULL_ATTENTION in rope_parameters:
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
    local_theta = local_theta or hf_config.get("rope_local_base_freq") or (
        10_000.0 if is_gemma3 else global_theta
    )
    if has_sliding and local_factor != 1.0:
        raise ValueError(
            f"RoPE scaling on sliding-window layers (factor {local_factor}) is not "
            "supported: Gemma scales only its full-attention layers."
        )

    query_pre_attn_scalar = hf_config.get("query_pre_attn_scalar")
    if is_gemma1 or query_pre_attn_scalar is None:
        query_pre_attn_scalar = head_dim

    return {
        "vocabulary_size": hf_config["vocab_size"],
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": hf_config.get("num_key_value_heads", num_query_heads),
        "hidden_dim": hidden_dim,
        "intermediate_dim": hf_config["intermediate_size"],
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


class SafetensorsReader:
    """Lazy access to the tensors of a single or sharded safetensors checkpoint."""

    def __init__(self, directory):
        from safetensors import safe_open

        index_path = os.path.join(directory, SAFETENSORS_INDEX)
        single_path = os.path.join(directory, SAFETENSORS_FILE)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single_path):
            files = [SAFETENSORS_FILE]
            weight_map = None
        else:
            raise FileNotFoundError(
                f"No weights in {directory!r}: expected `{SAFETENSORS_FILE}` or "
                f"`{SAFETENSORS_INDEX}` with its shards."
            )
        self._handles = {}
        self.locations = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Shard `{name}` listed in `{SAFETENSORS_INDEX}` is missing from {directory!r}.")
            try:
                handle = safe_open(path, framework="numpy")
            except Exception as error:  # safetensors raises its own error types.
                raise ValueError(f"Cannot read `{path}`: {error}") from None
            self._handles[name] = handle
            for key in handle.keys():
                self.locations[key] = name

    def keys(self):
        return self.locations.keys()

    def get(self, key):
        handle = self._handles[self.locations[key]]
        try:
            return handle.get_tensor(key)
        except TypeError:
            # bfloat16 has no NumPy dtype: read raw bits through the PyTorch-free path.
            return _read_bfloat16(handle, key)


def _read_bfloat16(handle, key):
    import ml_dtypes  # Installed with keras and jax; tensorflow ships it too.

    raw = handle.get_slice(key)
    shape = raw.get_shape()
    data = np.frombuffer(raw[:].tobytes(), dtype=ml_dtypes.bfloat16)
    return data.reshape(shape)


def _strip_prefix(keys):
    for prefix in WEIGHT_PREFIXES:
        if f"{prefix}embed_tokens.weight" in keys:
            return prefix
    raise ValueError(
        "No `embed_tokens.weight` found in the checkpoint: this does not look like "
        "a Gemma transformers checkpoint."
    )


def transformers_weight_map(config):
    """Pairs (HF name without prefix, our variable path, conversion) for a config."""
    entries = [("embed_tokens.weight", "token_embedding/embeddings", "copy")]
    for index in range(config["num_layers"]):
        hf = f"layers.{index}."
        ours = f"decoder_block_{index}/"
        entries += [
            (hf + "input_layernorm.weight", ours + "pre_attention_norm/scale", "copy"),
            (hf + "self_attn.q_proj.weight", ours + "attention/query/kernel", "query"),
            (hf + "self_attn.k_proj.weight", ours + "attention/key/kernel", "key_value"),
            (hf + "self_attn.v_proj.weight", ours + "attention/value/kernel", "key_value"),
            (hf + "self_attn.o_proj.weight", ours + "attention/attention_output/kernel", "output"),
            (hf + "mlp.gate_proj.weight", ours + "feed_forward/ffw_gating/kernel", "transpose"),
            (hf + "mlp.up_proj.weight", ours + "feed_forward/ffw_gating_2/kernel", "transpose"),
            (hf + "mlp.down_proj.weight", ours + "feed_forward/ffw_linear/kernel", "transpose"),
        ]
        if config["use_post_attention_norm"]:
            entries += [
                (hf + "post_attention_layernorm.weight", ours + "post_attention_norm/scale", "copy"),
                (hf + "pre_feedforward_layernorm.weight", ours + "pre_ffw_norm/scale", "copy"),
            ]
        else:
            # Gemma 1 names its pre-FFW norm `post_attention_layernorm`.
            entries.append((hf + "post_attention_layernorm.weight", ours + "pre_ffw_norm/scale", "copy"))
        if config["use_post_ffw_norm"]:
            entries.append((hf + "post_feedforward_layernorm.weight", ours + "post_ffw_norm/scale", "copy"))
        if config["use_query_key_norm"]:
            entries += [
                (hf + "self_attn.q_norm.weight", ours + "attention/query_norm/scale", "copy"),
                (hf + "self_attn.k_norm.weight", ours + "attention/key_norm/scale", "copy"),
            ]
    entries.append(("norm.weight", "final_normalization/scale", "copy"))
    return entries


def to_keras_layout(array, conversion, config):
    """HF `[out, in]` tensors to our kernel layouts."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    if conversion == "copy":
        return array
    if conversion == "transpose":
        return array.T
    if conversion in ("query", "key_value"):
        heads = config["num_query_heads" if conversion == "query" else "num_key_value_heads"]
        # (heads * h, d) -> (heads, h, d) -> (heads, d, h)
        return array.reshape(heads, head_dim, hidden).transpose(0, 2, 1)
    if conversion == "output":
        # (d, n * h) -> (n * h, d) -> (n, h, d)
        return array.T.reshape(config["num_query_heads"], head_dim, hidden)
    raise ValueError(conversion)


def to_transformers_layout(array, conversion, config):
    """Inverse of `to_keras_layout`."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    if conversion == "copy":
        return array
    if conversion == "transpose":
        return array.T
    if conversion in ("query", "key_value"):
        heads = array.shape[0]
        return array.transpose(0, 2, 1).reshape(heads * head_dim, hidden)
    if conversion == "output":
        return array.reshape(-1, hidden).T
    raise ValueError(conversion)


def assign_weights(backbone, get_tensor, source):
    """Fills `backbone` from `get_tensor(hf_name)`; every variable must be covered.

    Each tensor's shape is checked before it is assigned: a checkpoint that does
    not match the config fails with the tensor's name. Callers build a fresh
    backbone for this, so a failure never leaves a half-loaded model in use.
    """
    config = backbone.get_config()
    variables = {variable.path: variable for variable in backbone.weights}
    entries = transformers_weight_map(config)
    covered = {path for _, path, _ in entries}
    missing = sorted(set(variables) - covered)
    if missing:
        raise ValueError(f"Internal: no transformers weight mapped to {missing}")
    for hf_name, path, conversion in entries:
        variable = variables[path]
        tensor = get_tensor(hf_name)
        expected = _transformers_shape(tuple(variable.shape), conversion)
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"Tensor `{hf_name}` in {source} has shape {tuple(tensor.shape)}, but the "
                f"config needs {expected} (our `{path}`). The weights do not match `config.json`."
            )
        variable.assign(to_keras_layout(tensor, conversion, config))


def _transformers_shape(shape, conversion):
    """The HF `[out, in]` shape of one of our variables' shapes."""
    if conversion == "copy":
        return shape
    if conversion == "transpose":
        return shape[::-1]
    if conversion in ("query", "key_value"):
        heads, hidden, head_dim = shape
        return (heads * head_dim, hidden)
    heads, head_dim, hidden = shape  # "output"
    return (hidden, heads * head_dim)


def load_backbone(directory, dtype=None):
    """A `GemmaBackbone` from a local transformers checkpoint directory."""
    from keras_gemma.models.gemma_backbone import GemmaBackbone

    hf_config = read_config(directory)
    try:
        config = backbone_config_from_transformers(hf_config)
    except ValueError as error:
        raise ValueError(f"{os.path.join(directory, 'config.json')}: {error}") from None
    reader = SafetensorsReader(directory)
    prefix = _strip_prefix(set(reader.keys()))
    if hf_config.get("model_type") == "gemma3" and prefix == "model.":
        prefix = "model.language_model."

    def get_tensor(name):
        key = prefix + name
        if key not in reader.locations:
            raise ValueError(f"Tensor `{key}` is missing from the checkpoint in {directory!r}.")
        return reader.get(key)

    from keras_gemma.layers.initial_weights import weights_loaded_later

    # Built in the target dtype, then filled one tensor at a time: a
    # bfloat16 load never holds a float32 copy of the model.
    with weights_loaded_later():
        backbone = GemmaBackbone(**config, dtype=dtype)
    assign_weights(backbone, get_tensor, repr(directory))
    return backbone


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
        return dict(common, model_type="gemma", architectures=["GemmaForCausalLM"], rope_parameters=global_rope)
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
        return dict(common, **extra, model_type="gemma2", architectures=["Gemma2ForCausalLM"], rope_parameters=global_rope)
    return dict(
        common,
        **extra,
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM"],
        rope_parameters={
            FULL_ATTENTION: global_rope,
            SLIDING_ATTENTION: {"rope_type": "default", "rope_theta": config["local_rope_wavelength"]},
        },
    )


# === Export ===

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def _stop_token_ids(tokenizer):
    """`<eos>` and, when the vocabulary has one, `<end_of_turn>` (HF's IT stop set)."""
    if tokenizer is None:
        return [1]
    ids = [1 if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)]
    if tokenizer.end_of_turn_token_id is not None:
        ids.append(int(tokenizer.end_of_turn_token_id))
    return ids


def _write_export(backbone, tokenizer, directory):
    """Writes config, safetensors weights, generation config and tokenizer into `directory`."""
    import keras
    from safetensors.numpy import save_file

    config = backbone.get_config()
    hf_config = transformers_config_from_backbone(config)
    variables = {variable.path: variable for variable in backbone.weights}
    tensors = {}
    dtypes = set()
    for hf_name, path, conversion in transformers_weight_map(config):
        array = keras.ops.convert_to_numpy(variables[path].value)
        dtypes.add(str(array.dtype))
        tensors["model." + hf_name] = np.ascontiguousarray(to_transformers_layout(array, conversion, config))
    if dtypes == {"bfloat16"}:
        hf_config["torch_dtype"] = hf_config["dtype"] = "bfloat16"
    elif dtypes == {"float16"}:
        hf_config["torch_dtype"] = hf_config["dtype"] = "float16"
    else:
        hf_config["dtype"] = hf_config["torch_dtype"]
    if tokenizer is not None:
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, key)
            if value is not None:
                hf_config[key] = int(value)
    save_file(tensors, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    generation = {
        "bos_token_id": hf_config["bos_token_id"],
        "eos_token_id": _stop_token_ids(tokenizer),
        "pad_token_id": hf_config["pad_token_id"],
    }
    with open(os.path.join(directory, GENERATION_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)
    if tokenizer is not None:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(tokenizer.proto)
        special = {}
        for key, name in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("pad_token", "pad_token_id"),
            ("unk_token", "unk_token_id"),
        ):
            value = getattr(tokenizer, name)
            if value is not None:
                special[key] = tokenizer.id_to_token(value)
        tokenizer_config = {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": hf_config["max_position_embeddings"],
            "padding_side": "left",
            **special,
        }
        with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(tokenizer_config, f, indent=2)


def export_backbone(backbone, directory, tokenizer=None):
    """Writes `backbone` (and optionally its tokenizer) as a transformers checkpoint.

    The directory gets `config.json` (model type `gemma`, `gemma2` or
    `gemma3_text`, chosen from the config), `model.safetensors` in the
    weights' dtype, `generation_config.json` and, with a tokenizer,
    `tokenizer.model` plus `tokenizer_config.json`. Written atomically: a
    failure leaves an existing directory as it was.
    """
    from keras_gemma.formats.keras_preset import atomic_directory_write

    transformers_config_from_backbone(backbone.get_config())  # Fails early for configs HF cannot express.
    atomic_directory_write(directory, lambda staging: _write_export(backbone, tokenizer, staging))


def export_causal_lm(causal_lm, directory):
    """`export_backbone` for a `GemmaCausalLM`, with its preprocessor's tokenizer."""
    tokenizer = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor is not None else None
    export_backbone(causal_lm.backbone, directory, tokenizer=tokenizer)
