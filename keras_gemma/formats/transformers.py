"""Hugging Face transformers checkpoints (`gemma`, `gemma2`, `gemma3_text`): the weights.

HF projection weights are `[out, in]`; `transformers_weight_map` pairs each
HF tensor with our variable path (`formats.variables`) and the layout change
between them. `read_checkpoint` returns a checkpoint directory as plain data:
our backbone config and a lazy `{variable path: array}` mapping in our
layout, every name and shape checked against the config before any tensor
is read. The configs are in `transformers_config`, the writer in
`transformers_export`.
"""

import collections.abc
import os

import numpy as np

from keras_gemma.formats.files import read_json
from keras_gemma.formats.transformers_config import SAFETENSORS_INDEX
from keras_gemma.formats.transformers_config import backbone_config_from_transformers
from keras_gemma.formats.transformers_config import read_config
from keras_gemma.formats.variables import variable_shapes

SAFETENSORS_FILE = "model.safetensors"
# Prefixes of the text decoder in HF checkpoints: text-only models, and the
# language model inside Gemma 3 multimodal checkpoints (old and new layout).
WEIGHT_PREFIXES = ("model.", "language_model.model.", "model.language_model.", "")
# Stored tensors that carry nothing a model needs: a copy of the tied
# embeddings and RoPE frequencies that old checkpoints saved.
UNUSED_TENSOR_SUFFIXES = ("lm_head.weight", "rotary_emb.inv_freq")


class SafetensorsReader:
    """Lazy access to the tensors of a single or sharded safetensors checkpoint."""

    def __init__(self, directory):
        from safetensors import safe_open

        index_path = os.path.join(directory, SAFETENSORS_INDEX)
        single_path = os.path.join(directory, SAFETENSORS_FILE)
        if os.path.isfile(index_path):
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(name, str) for name in weight_map.values()
            ):
                raise ValueError(
                    f"`{index_path}` needs a `weight_map` object ({{tensor name: shard file}}), "
                    f"not {type(weight_map).__name__}. The index is damaged: delete it to load "
                    f"a single `{SAFETENSORS_FILE}`, or restore it from the checkpoint."
                )
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
                raise FileNotFoundError(
                    f"Shard `{name}` listed in `{SAFETENSORS_INDEX}` is missing from {directory!r}."
                )
            try:
                handle = safe_open(path, framework="numpy")
            except Exception as error:  # safetensors raises its own error types.
                raise ValueError(f"Cannot read `{path}`: {error}") from None
            self._handles[name] = handle
            for key in handle.keys():
                self.locations[key] = name

    def keys(self):
        return self.locations.keys()

    def shape(self, key):
        """The stored shape of tensor `key`, read from the header only."""
        return tuple(self._handles[self.locations[key]].get_slice(key).get_shape())

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


# Our variable path inside `decoder_block_{i}/` -> (HF name inside `layers.{i}.`, conversion).
_BLOCK_WEIGHTS = {
    "pre_attention_norm/scale": ("input_layernorm.weight", "copy"),
    "attention/query/kernel": ("self_attn.q_proj.weight", "query"),
    "attention/key/kernel": ("self_attn.k_proj.weight", "key_value"),
    "attention/value/kernel": ("self_attn.v_proj.weight", "key_value"),
    "attention/query_norm/scale": ("self_attn.q_norm.weight", "copy"),
    "attention/key_norm/scale": ("self_attn.k_norm.weight", "copy"),
    "attention/attention_output/kernel": ("self_attn.o_proj.weight", "output"),
    "post_attention_norm/scale": ("post_attention_layernorm.weight", "copy"),
    "pre_ffw_norm/scale": ("pre_feedforward_layernorm.weight", "copy"),
    "feed_forward/ffw_gating/kernel": ("mlp.gate_proj.weight", "transpose"),
    "feed_forward/ffw_gating_2/kernel": ("mlp.up_proj.weight", "transpose"),
    "feed_forward/ffw_linear/kernel": ("mlp.down_proj.weight", "transpose"),
    "post_ffw_norm/scale": ("post_feedforward_layernorm.weight", "copy"),
    # Gemma 4.
    "layer_scalar": ("layer_scalar", "scalar"),
    "per_layer_input_gate/kernel": ("per_layer_input_gate.weight", "transpose"),
    "per_layer_projection/kernel": ("per_layer_projection.weight", "transpose"),
    "post_per_layer_input_norm/scale": ("post_per_layer_input_norm.weight", "copy"),
    "pre_expert_norm/scale": ("pre_feedforward_layernorm_2.weight", "copy"),
    "post_dense_ffw_norm/scale": ("post_feedforward_layernorm_1.weight", "copy"),
    "post_expert_norm/scale": ("post_feedforward_layernorm_2.weight", "copy"),
    "mixture_of_experts/router/kernel": ("router.proj.weight", "transpose"),
    "mixture_of_experts/router_scale": ("router.scale", "copy"),
    "mixture_of_experts/per_expert_scale": ("router.per_expert_scale", "copy"),
    # HF fuses gate and up as `gate_up_proj` `[e, 2f, d]`, gate first.
    "mixture_of_experts/expert_gating/kernel": ("experts.gate_up_proj", "expert_gate"),
    "mixture_of_experts/expert_gating_2/kernel": ("experts.gate_up_proj", "expert_up"),
    "mixture_of_experts/expert_linear/kernel": ("experts.down_proj", "expert_down"),
}
_GLOBAL_WEIGHTS = {
    "token_embedding/embeddings": ("embed_tokens.weight", "copy"),
    "final_normalization/scale": ("norm.weight", "copy"),
    "per_layer_embedding/per_layer_token_embedding/embeddings": (
        "embed_tokens_per_layer.weight",
        "copy",
    ),
    "per_layer_embedding/per_layer_model_projection/kernel": (
        "per_layer_model_projection.weight",
        "transpose",
    ),
    "per_layer_embedding/per_layer_projection_norm/scale": (
        "per_layer_projection_norm.weight",
        "copy",
    ),
}


def transformers_weight_map(config):
    """`[(HF name without prefix, our variable path, conversion)]` for every variable."""
    entries = []
    for path in variable_shapes(config):
        if path in _GLOBAL_WEIGHTS:
            hf_name, conversion = _GLOBAL_WEIGHTS[path]
        else:
            block, inner = path.split("/", 1)
            hf_name, conversion = _BLOCK_WEIGHTS[inner]
            if inner == "pre_ffw_norm/scale" and not config["use_post_attention_norm"]:
                # Gemma 1 names its pre-FFW norm `post_attention_layernorm`.
                hf_name = "post_attention_layernorm.weight"
            hf_name = f"layers.{block[len('decoder_block_') :]}.{hf_name}"
        entries.append((hf_name, path, conversion))
    return entries


def to_keras_layout(array, conversion, config, shape=None):
    """HF `[out, in]` tensors to our kernel layouts (`shape`: ours, for per-layer head dims)."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    if conversion == "copy":
        return array
    if conversion == "transpose":
        return array.T
    if conversion == "scalar":
        return array.reshape(())
    if conversion.startswith("expert_"):
        if conversion == "expert_down":
            return array.transpose(0, 2, 1)  # (e, d, f) -> (e, f, d)
        half = array.shape[1] // 2  # (e, 2f, d): gate rows, then up rows
        part = array[:, :half] if conversion == "expert_gate" else array[:, half:]
        return part.transpose(0, 2, 1)  # (e, d, f)
    if conversion in ("query", "key_value"):
        heads = config["num_query_heads" if conversion == "query" else "num_key_value_heads"]
        if shape is not None:
            heads, _, head_dim = shape
        # (heads * h, d) -> (heads, h, d) -> (heads, d, h)
        return array.reshape(heads, head_dim, hidden).transpose(0, 2, 1)
    if conversion == "output":
        if shape is not None:
            head_dim = shape[1]
        # (d, n * h) -> (n * h, d) -> (n, h, d)
        return array.T.reshape(config["num_query_heads"], head_dim, hidden)
    raise ValueError(conversion)


def to_transformers_layout(array, conversion, config):
    """Inverse of `to_keras_layout` (the expert gate and up halves: see the exporter)."""
    hidden = config["hidden_dim"]
    if conversion == "copy":
        return array
    if conversion == "transpose":
        return array.T
    if conversion == "scalar":
        return array.reshape((1,))
    if conversion.startswith("expert_"):
        return array.transpose(0, 2, 1)
    if conversion in ("query", "key_value"):
        heads, _, head_dim = array.shape
        return array.transpose(0, 2, 1).reshape(heads * head_dim, hidden)
    if conversion == "output":
        return array.reshape(-1, hidden).T
    raise ValueError(conversion)


def _transformers_shape(shape, conversion):
    """The HF `[out, in]` shape of one of our variables' shapes."""
    if conversion == "copy":
        return shape
    if conversion == "transpose":
        return shape[::-1]
    if conversion == "scalar":
        return (1,)
    if conversion in ("expert_gate", "expert_up"):
        experts, hidden, width = shape
        return (experts, 2 * width, hidden)
    if conversion == "expert_down":
        return (shape[0], shape[2], shape[1])
    if conversion in ("query", "key_value"):
        heads, hidden, head_dim = shape
        return (heads * head_dim, hidden)
    heads, head_dim, hidden = shape  # "output"
    return (hidden, heads * head_dim)


class ConvertedTensors(collections.abc.Mapping):
    """`{our variable path: array in our layout}`, read from HF-named tensors on access.

    Each access reads (and, for GGUF, dequantizes) one tensor, so a model
    filled from it never holds a second copy of every weight. Every tensor
    is checked against the config when the mapping is made: a missing one,
    one whose shape does not match, or one the config has no place for (more
    layers than it says) is a `ValueError` naming it.

    Args:
        config: the `GemmaBackbone` config the tensors are for.
        shapes: `{HF name without prefix: shape}` of the stored tensors.
        read: `read(hf_name)` returns that tensor as a NumPy array.
        source: how messages name the checkpoint (e.g. its directory, repr'd).
        missing_message: `missing_message(hf_name)`, the text for an absent tensor.
        layer_count_key: how messages name the stored layer count.
    """

    def __init__(
        self,
        config,
        shapes,
        read,
        source,
        missing_message,
        layer_count_key="`num_hidden_layers` in `config.json`",
    ):
        self._config = config
        self._read = read
        self._entries = {}
        needed = variable_shapes(config)
        for hf_name, path, conversion in transformers_weight_map(config):
            if hf_name not in shapes:
                raise ValueError(missing_message(hf_name))
            expected = _transformers_shape(needed[path], conversion)
            if tuple(shapes[hf_name]) != expected:
                raise ValueError(
                    f"Tensor `{hf_name}` in {source} has shape {tuple(shapes[hf_name])}, but the "
                    f"config needs {expected} (our `{path}`). The weights do not match "
                    "`config.json`."
                )
            self._entries[path] = (hf_name, conversion, needed[path])
        used = {hf_name for hf_name, *_ in self._entries.values()}
        extra = sorted(
            name
            for name in shapes
            if name not in used and not name.endswith(UNUSED_TENSOR_SUFFIXES)
        )
        if extra:
            shown = ", ".join(f"`{name}`" for name in extra[:3])
            raise ValueError(
                f"{source} holds {len(extra)} tensors that its config has no place for ({shown}"
                f"{', ...' if extra[3:] else ''}); {layer_count_key} says "
                f"{config['num_layers']} layers. The weights do not match the config: fix the "
                "config or use the checkpoint it was written with."
            )

    def __getitem__(self, path):
        hf_name, conversion, shape = self._entries[path]
        return to_keras_layout(self._read(hf_name), conversion, self._config, shape)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


def read_checkpoint(directory):
    """`(config, tensors)` of a local transformers checkpoint directory.

    Returns:
        The `GemmaBackbone` config (without dtype) and a `ConvertedTensors`
        mapping of every variable the config has.
    """
    directory = os.fspath(directory)
    hf_config = read_config(directory)
    try:
        config = backbone_config_from_transformers(hf_config)
    except ValueError as error:
        raise ValueError(f"{os.path.join(directory, 'config.json')}: {error}") from None
    reader = SafetensorsReader(directory)
    prefix = _strip_prefix(set(reader.keys()))
    if hf_config.get("model_type") == "gemma3" and prefix == "model.":
        prefix = "model.language_model."
    shapes = {
        key[len(prefix) :]: reader.shape(key) for key in reader.keys() if key.startswith(prefix)
    }
    tensors = ConvertedTensors(
        config,
        shapes,
        lambda name: reader.get(prefix + name),
        repr(directory),
        lambda name: f"Tensor `{prefix + name}` is missing from the checkpoint in {directory!r}.",
    )
    return config, tensors
