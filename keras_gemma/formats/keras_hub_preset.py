"""Preset directories written by keras-hub's `save_to_preset`, read without keras-hub.

keras-hub (0.32) writes `config.json` (`keras_hub>GemmaBackbone` for Gemma 1
and 2, `keras_hub>Gemma3Backbone` for Gemma 3, `keras_hub>Gemma4Backbone`
for Gemma 4), `metadata.json` and the weights as `model.weights.h5` (or
`model.weights.json` plus `model_NNNNN.weights.h5` shards). Nothing is
deserialized: the config is read as data and mapped to `GemmaBackbone`
arguments, and the HDF5 file is walked with h5py into `{variable path:
array}` (`formats.variables`). Every kernel has the same shape in keras-hub
and here. Gemma 4's mapping is `formats.keras_hub_gemma4`.

Facts about keras-hub used here (from its source, `models/gemma*/`):
- `GemmaBackbone.intermediate_dim` is twice the width of one FFN branch (its
  gating layers are `intermediate_dim // 2` wide); `Gemma3Backbone`'s is the
  branch width itself (`gate_dim_reduction=1`). The width is re-checked
  against the stored kernels.
- Gemma 1/2 slide on even layers (`i % 2 == 0`) when
  `use_sliding_window_attention`; Gemma 3 on `i % 6 < 5`, with RoPE base
  10k on sliding and 1M on global layers, scaled by
  `local_/global_rope_scaling_factor`.
- RoPE: Gemma 1/2 in keras-hub rotate half-split pairs and then interleave
  them, the same permutation of `head_dim` on queries and keys, so the
  attention scores equal HF's and ours with the same kernels.
- Query scaling: the decoder blocks pass `query_head_dim_normalize=True` to
  attention whatever the config says, so keras-hub itself always scales by
  `head_dim ** -0.5`. A config with `query_head_dim_normalize=False` (Gemma
  2 27B, Gemma 3 27B) means `hidden_dim // num_query_heads` (144, 168): that
  is what the released weights were trained with, so we use it and differ
  from keras-hub's own outputs there (DESIGN.md: "keras-hub ignores this").
"""

import glob
import os

import numpy as np

from keras_gemma.formats import keras_hub_gemma4
from keras_gemma.formats.files import read_json
from keras_gemma.formats.variables import variable_shapes
from keras_gemma.layers.decoder_block import FULL_ATTENTION
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION

GEMMA_REGISTERED_NAME = "keras_hub>GemmaBackbone"
GEMMA3_REGISTERED_NAME = "keras_hub>Gemma3Backbone"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_CONFIG = "model.weights.json"
# keras-hub's Gemma 3 RoPE bases (hard-coded in its backbone).
GEMMA3_LOCAL_ROPE_WAVELENGTH = 10_000.0
GEMMA3_GLOBAL_ROPE_WAVELENGTH = 1_000_000.0
GEMMA3_SLIDING_PATTERN = 6
# keras-hub's attribute names (the HDF5 groups) -> our layer names.
_LAYER_NAMES = {
    "reversible_embedding": "token_embedding",
    "rms_normalization": "final_normalization",
    "query_dense": "query",
    "key_dense": "key",
    "value_dense": "value",
    "output_dense": "attention_output",
    "gating_ffw": "feed_forward/ffw_gating",
    "gating_ffw_2": "feed_forward/ffw_gating_2",
    "ffw_linear": "feed_forward/ffw_linear",
}
_DECODER_BLOCK_GROUPS = ("gemma_decoder_block", "gemma3_decoder_block")


def _class_name(config):
    return config.get("registered_name") or config.get("class_name")


def backbone_config(directory):
    """Our `GemmaBackbone` config (without dtype) for a keras-hub preset dir.

    Returns:
        `(config, stored_dtype)`: the constructor arguments and the dtype
        policy name keras-hub saved (e.g. "bfloat16"), or None.
    """
    class_name, hub = _stored_config(directory)
    if class_name == keras_hub_gemma4.REGISTERED_NAME:
        file = os.path.join(directory, CONFIG_FILE)
        config = keras_hub_gemma4.config_from_keras_hub(hub, f"`{file}`")
    else:
        config = config_from_keras_hub(
            hub, class_name == GEMMA3_REGISTERED_NAME, f"The keras-hub preset in {directory!r}"
        )
    return config, _dtype_name(hub.get("dtype"))


def _stored_config(directory):
    """`(registered class name, backbone config)` of a keras-hub preset's `config.json`."""
    stored = read_json(os.path.join(directory, CONFIG_FILE))
    class_name = _class_name(stored)
    supported = (GEMMA_REGISTERED_NAME, GEMMA3_REGISTERED_NAME, keras_hub_gemma4.REGISTERED_NAME)
    if class_name not in supported:
        raise ValueError(
            f"`config.json` in {directory!r} describes {class_name!r}. Supported keras-hub "
            f"backbones: {', '.join(map(repr, supported))} (text only)."
        )
    return class_name, stored.get("config", {})


def config_from_keras_hub(hub, is_gemma3, source):
    """Our `GemmaBackbone` config (without dtype) for keras-hub backbone arguments.

    Args:
        hub: dict. keras-hub's `GemmaBackbone` / `Gemma3Backbone` config.
        is_gemma3: bool. Whether `hub` is a `Gemma3Backbone`'s.
        source: str. Names where `hub` came from, in error messages.
    """
    for flag in ("use_bidirectional_attention", "is_embedding_model"):
        if hub.get(flag):
            raise ValueError(
                f"{source} sets `{flag}=True`; only causal text models load into `GemmaBackbone`."
            )
    num_layers = hub["num_layers"]
    num_query_heads = hub["num_query_heads"]
    hidden_dim = hub["hidden_dim"]
    head_dim = hub["head_dim"]
    if hub.get("query_head_dim_normalize", True):
        query_pre_attn_scalar = head_dim
    else:
        query_pre_attn_scalar = hidden_dim // num_query_heads

    sliding = bool(hub.get("use_sliding_window_attention", False))
    if is_gemma3:
        layer_types = [
            SLIDING_ATTENTION
            if sliding and index % GEMMA3_SLIDING_PATTERN < GEMMA3_SLIDING_PATTERN - 1
            else FULL_ATTENTION
            for index in range(num_layers)
        ]
        if float(hub.get("local_rope_scaling_factor", 1.0)) != 1.0 and sliding:
            raise ValueError(
                "RoPE scaling on sliding-window layers (`local_rope_scaling_factor="
                f"{hub['local_rope_scaling_factor']}`) is not supported."
            )
        rope = {
            "rope_wavelength": GEMMA3_GLOBAL_ROPE_WAVELENGTH
            if sliding
            else GEMMA3_LOCAL_ROPE_WAVELENGTH,
            "local_rope_wavelength": GEMMA3_LOCAL_ROPE_WAVELENGTH,
            "rope_scaling_factor": float(
                hub.get("global_rope_scaling_factor", 1.0)
                if sliding
                else hub.get("local_rope_scaling_factor", 1.0)
            ),
        }
        intermediate_dim = hub["intermediate_dim"]
    else:
        layer_types = [
            SLIDING_ATTENTION if sliding and index % 2 == 0 else FULL_ATTENTION
            for index in range(num_layers)
        ]
        rope = {
            "rope_wavelength": 10_000.0,
            "local_rope_wavelength": 10_000.0,
            "rope_scaling_factor": 1.0,
        }
        intermediate_dim = hub["intermediate_dim"] // 2
    if is_gemma3 and not sliding and num_layers >= GEMMA3_SLIDING_PATTERN:
        # keras-hub still gives layers `i % 6 < 5` base 10k and the others 1M.
        raise ValueError(
            "This keras-hub Gemma3Backbone has `use_sliding_window_attention=False` and "
            f"{num_layers} layers: its full-attention layers use two different RoPE bases, "
            "which `GemmaBackbone` cannot express."
        )
    config = {
        "vocabulary_size": hub["vocabulary_size"],
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": hub["num_key_value_heads"],
        "hidden_dim": hidden_dim,
        "intermediate_dim": intermediate_dim,
        "head_dim": head_dim,
        "layer_types": layer_types,
        "sliding_window_size": hub.get("sliding_window_size") if sliding else None,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "attention_logit_soft_cap": hub.get("attention_logit_soft_cap"),
        "final_logit_soft_cap": hub.get("final_logit_soft_cap"),
        "use_post_attention_norm": bool(hub.get("use_post_attention_norm", False)),
        "use_post_ffw_norm": bool(hub.get("use_post_ffw_norm", False)),
        "use_query_key_norm": is_gemma3 and bool(hub.get("use_query_key_norm", True)),
        **rope,
        "layer_norm_epsilon": hub.get("layer_norm_epsilon", 1e-6),
        "dropout": float(hub.get("dropout", 0.0)),
    }
    return config


def _dtype_name(dtype):
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name")
    return dtype


# === Weights ===


def _weight_files(directory):
    single = os.path.join(directory, WEIGHTS_FILE)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(directory, SHARDED_WEIGHTS_CONFIG)
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map", {})
        names = set()
        for value in weight_map.values():
            names.update(value if isinstance(value, list) else [value])
        files = [os.path.join(directory, name) for name in sorted(names)]
        missing = [path for path in files if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f"Weight shards listed in `{index}` are missing: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(directory, "model_*.weights.h5")))
    if files:
        return files
    raise FileNotFoundError(
        f"No weights in keras-hub preset {directory!r}: expected `{WEIGHTS_FILE}` or "
        f"`{SHARDED_WEIGHTS_CONFIG}` with its shards."
    )


def _our_layer_path(group_path):
    """`layers/gemma_decoder_block_3/attention/query_dense` -> `decoder_block_3/attention/query`."""
    parts = group_path.strip("/").split("/")
    if parts[0] != "layers" or len(parts) < 2:
        return None
    top, rest = parts[1], parts[2:]
    for block in _DECODER_BLOCK_GROUPS:
        if top == block or top.startswith(block + "_"):
            suffix = top[len(block) + 1 :]
            if suffix and not suffix.isdigit():
                return None
            top = f"decoder_block_{int(suffix or 0)}"
            break
    else:
        top = _LAYER_NAMES.get(top, top)
    return "/".join([top] + [_LAYER_NAMES.get(part, part) for part in rest])


def read_hdf5_variables(directory, skip_groups=()):
    """`({HDF5 path of each variable: array}, weight file names)` of a keras-hub preset.

    Keras stores a layer's variables as datasets `<layer path>/vars/<index>`;
    every such dataset of every shard is read (a layer's variables may span
    shards), except those under `skip_groups` (path prefixes). bfloat16
    arrays (stored as 16-bit words with a `dtype` attribute) come back as
    `ml_dtypes.bfloat16`.
    """
    import h5py
    import ml_dtypes  # Installed with keras and jax; tensorflow ships it too.

    files = _weight_files(directory)
    variables = {}

    def visit(name, item):
        parent, _, index = name.rpartition("/")
        if not parent.endswith("/vars") or not index.isdigit() or name.startswith(skip_groups):
            return
        if not isinstance(item, h5py.Dataset) or item.external or item.is_virtual:
            raise ValueError(f"`{name}` in {directory!r} is not a plain HDF5 dataset.")
        value = item[()]
        if item.attrs.get("dtype") == "bfloat16":
            value = np.asarray(value).view(ml_dtypes.bfloat16)
        variables.setdefault(name, np.asarray(value))

    for path in files:
        with h5py.File(path, "r") as file:
            file.visititems(visit)
    return variables, [os.path.basename(path) for path in files]


def _read_layer_arrays(directory):
    """`{our layer path: [arrays in variable order]}` from keras-hub's HDF5 file(s)."""
    by_group = {}
    for name, value in read_hdf5_variables(directory)[0].items():
        group, _, index = name.rpartition("/vars/")
        by_group.setdefault(group, {})[int(index)] = value
    arrays = {}
    for group, values in sorted(by_group.items()):
        layer = _our_layer_path(group)
        if layer is not None:
            arrays.setdefault(layer, [values[index] for index in sorted(values)])
    return arrays


def read_weights(directory, config):
    """`{variable path: array}` for the backbone `config` describes (see `formats.variables`).

    Every variable must have exactly one stored array of its shape, and every
    stored layer must have a variable: otherwise a `ValueError` names the
    preset and the weight.
    """
    directory = os.fspath(directory)
    if _stored_config(directory)[0] == keras_hub_gemma4.REGISTERED_NAME:
        variables, files = read_hdf5_variables(directory, keras_hub_gemma4.MEDIA_GROUPS)
        names = f"`{files[0]}`" if len(files) == 1 else f"`{SHARDED_WEIGHTS_CONFIG}`'s shards"
        source = f"{names} in {directory!r}"
        return keras_hub_gemma4.tensors_from_keras_hub(variables, config, source)
    arrays = _read_layer_arrays(directory)
    source = repr(directory)
    gating = arrays.get("decoder_block_0/feed_forward/ffw_gating")
    if gating and gating[0].shape[-1] != config["intermediate_dim"]:
        raise ValueError(
            f"keras-hub preset {source}: `intermediate_dim` in `config.json` implies FFN "
            f"branches of width {config['intermediate_dim']}, but the stored gating kernel has "
            f"{gating[0].shape[-1]}."
        )
    tensors = {}
    for path, shape in variable_shapes(config).items():
        layer_path = path.rsplit("/", 1)[0]
        if layer_path not in arrays or len(arrays[layer_path]) != 1:
            raise ValueError(
                f"keras-hub preset {source} has no single weight for `{path}` "
                f"(found {len(arrays.get(layer_path, []))} under `{layer_path}`)."
            )
        array = arrays[layer_path][0]
        if tuple(array.shape) != shape:
            raise ValueError(
                f"keras-hub weight `{layer_path}` in {source} has shape {tuple(array.shape)}, "
                f"but `{path}` needs {shape}. The weights do not match `config.json`."
            )
        tensors[path] = array
    unused = sorted(set(arrays) - {path.rsplit("/", 1)[0] for path in tensors})
    if unused:
        raise ValueError(
            f"keras-hub preset {source} holds weights this text model has no place for: "
            f"{unused[:5]}{' ...' if len(unused) > 5 else ''} (a vision encoder, LoRA or "
            "quantized weights are not supported)."
        )
    return tensors
