"""LoRA for `GemmaBackbone`: enable, save / load the adapter, merge, PEFT export.

The adapter files are read and written by `keras_gemma.formats.lora_files`
and `keras_gemma.formats.peft`; this module works on the layers.

Adapters are Keras' own (`EinsumDense.enable_lora`, `Dense.enable_lora`): a
layer with kernel `W` of shape `(..., out)` gets `lora_kernel_a` `(..., r)` and
`lora_kernel_b` `(r, out)` and computes with `W + (alpha / r) * a @ b`.
For our projections that means:

    query             W (n, d, h)   a (n, d, r)   b (r, h)   one `a` per head
    key, value        W (k, d, h)   a (k, d, r)   b (r, h)
    attention_output  W (n, h, d)   a (n, h, r)   b (r, d)   a plain rank-r update
    ffw_*             W (in, out)   a (in, r)     b (r, out)

Everything here works on the variables through `keras.ops` and NumPy, so it
runs unchanged on every backend.
"""

import dataclasses
import os

import numpy as np
from keras import ops

from keras_gemma.formats import lora_files
from keras_gemma.formats import peft
from keras_gemma.formats.transformers_config import transformers_config_from_backbone
from keras_gemma.layers.architecture import block_arguments
from keras_gemma.models.weight_checks import warn_non_finite

ATTENTION_TARGETS = ("query", "key", "value", "attention_output")
FEED_FORWARD_TARGETS = ("ffw_gating", "ffw_gating_2", "ffw_linear")
VALID_TARGETS = ATTENTION_TARGETS + FEED_FORWARD_TARGETS
TARGET_SETS = {"attention": ATTENTION_TARGETS, "all": VALID_TARGETS}
DEFAULT_TARGETS = ("query", "value")


@dataclasses.dataclass
class LoraState:
    """What `enable_lora` did to a backbone (kept as `backbone._lora_state`)."""

    rank: int
    alpha: float
    target_names: tuple
    # Variables that were trainable before `enable_lora` froze them.
    frozen_variables: list


# === Targets ===


def resolve_target_names(target_names):
    """Expands "attention" / "all" and validates names; canonical order, no repeats."""
    if isinstance(target_names, str):
        target_names = TARGET_SETS.get(target_names, (target_names,))
    try:
        names = list(target_names)
    except TypeError:
        names = [target_names]
    if not names:
        raise ValueError(
            f"`target_names` must name at least one layer. Valid names: {list(VALID_TARGETS)} "
            f"or a set name: {list(TARGET_SETS)}."
        )
    expanded = []
    for name in names:
        expanded.extend(TARGET_SETS.get(name, (name,)) if isinstance(name, str) else (name,))
    unknown = [name for name in expanded if name not in VALID_TARGETS]
    if unknown:
        raise ValueError(
            f"Unknown LoRA target name(s) {unknown}. Valid names: {list(VALID_TARGETS)}, "
            f"or a set name: {list(TARGET_SETS)} ('attention' = {list(ATTENTION_TARGETS)}, "
            "'all' = attention and feed-forward). "
            f"Received: target_names={target_names!r}"
        )
    return tuple(name for name in VALID_TARGETS if name in expanded)


def target_layers(backbone, target_names):
    """`[(key, layer)]` with keys like "decoder_block_0/attention/query"."""
    layers = []
    for index, block in enumerate(backbone.transformer_layers):
        for name in target_names:
            if name in ATTENTION_TARGETS:
                parent, parent_name = block.attention, "attention"
            else:
                parent, parent_name = block.feed_forward, "feed_forward"
            layer = getattr(parent, name, None)  # Gemma 4: no key/value on some layers
            if layer is not None:
                layers.append((f"decoder_block_{index}/{parent_name}/{name}", index, name, layer))
    return layers


def lora_state(backbone):
    return getattr(backbone, "_lora_state", None)


def _require_state(backbone, action):
    state = lora_state(backbone)
    if state is None:
        raise ValueError(
            f"LoRA is not enabled on this backbone (it has no lora-enabled layers); call "
            f"`enable_lora(rank)` before `{action}`."
        )
    return state


# === Enable ===


def _check_rank_alpha(rank, alpha):
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"`rank` must be an integer >= 1. Received: rank={rank!r}")
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or alpha <= 0
    ):
        raise ValueError(
            f"`alpha` must be a positive number or None (= rank). Received: alpha={alpha!r}"
        )


def enable_lora(backbone, rank, alpha=None, target_names=DEFAULT_TARGETS):
    """Freezes the backbone and adds rank-`rank` adapters to the target projections.

    See `GemmaBackbone.enable_lora`.
    """
    _check_rank_alpha(rank, alpha)
    names = resolve_target_names(target_names)
    if lora_state(backbone) is not None:
        state = lora_state(backbone)
        raise ValueError(
            f"LoRA is already enabled (rank={state.rank}, targets={list(state.target_names)}). "
            "Call `merge_lora_weights()` first to fold it into the weights and start a new adapter."
        )
    rank = int(rank)
    alpha = float(rank if alpha is None else alpha)
    layers = target_layers(backbone, names)
    for _, _, _, layer in layers:
        if getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"Layer `{layer.path}` already has LoRA enabled outside `enable_lora`."
            )
    # Freeze every weight (embeddings and norms included); the new adapter
    # variables are created trainable afterwards. (`Layer.trainable = True`
    # would re-mark every variable trainable, so it is not touched here.)
    frozen = [variable for variable in backbone.weights if variable.trainable]
    for variable in frozen:
        variable.trainable = False
    for _, _, _, layer in layers:
        layer.enable_lora(rank, lora_alpha=alpha)
    backbone._lora_state = LoraState(rank, alpha, names, frozen)


def lora_parameter_count(config, rank, target_names=DEFAULT_TARGETS):
    """Closed-form number of adapter parameters for a backbone config."""
    names = resolve_target_names(target_names)
    d, n = config["hidden_dim"], config["num_query_heads"]
    config = dict({"layer_types": ["full_attention"] * config["num_layers"]}, **config)
    total = 0
    for index in range(config["num_layers"]):  # Gemma 4: shapes differ per layer
        layer = block_arguments(config, index)
        f, h, k = layer["intermediate_dim"], layer["head_dim"], layer["num_key_value_heads"]
        has_key = not layer["reads_shared_key_value"]
        per_layer = {
            "query": n * d * rank + rank * h,
            "key": (k * d * rank + rank * h) * has_key,
            "value": (k * d * rank + rank * h) * (has_key and not layer["keys_as_values"]),
            "attention_output": n * h * rank + rank * d,
            "ffw_gating": d * rank + rank * f,
            "ffw_gating_2": d * rank + rank * f,
            "ffw_linear": f * rank + rank * d,
        }
        total += sum(per_layer[name] for name in names)
    return total


# === Save / load ===


def save_lora_weights(backbone, path):
    """Writes the adapter weights and their rank / alpha / targets to one file."""
    lora_files.adapter_format(path)
    state = _require_state(backbone, "save_lora_weights")
    tensors = {}
    for key, _, _, layer in target_layers(backbone, state.target_names):
        for part in ("lora_kernel_a", "lora_kernel_b"):
            value = ops.convert_to_numpy(getattr(layer, part))
            tensors[f"{key}/{part}"] = np.asarray(value, "float32")
    settings = {
        "rank": state.rank,
        "alpha": state.alpha,
        "target_names": list(state.target_names),
        "num_layers": backbone.num_layers,
    }
    lora_files.write_lora_file(path, settings, tensors)


def load_lora_weights(backbone, path):
    """Loads an adapter file, enabling LoRA from its metadata when needed.

    Rank, alpha, targets and layer count must match an already-enabled adapter.
    Every tensor is checked before any is assigned, so a bad file changes nothing.
    """
    metadata, tensors = lora_files.read_lora_file(path)
    rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    names = resolve_target_names(metadata["target_names"])
    if metadata["num_layers"] != backbone.num_layers:
        raise ValueError(
            f"The adapter in {os.fspath(path)!r} is for {metadata['num_layers']} layers; "
            f"this backbone has {backbone.num_layers}."
        )
    state = lora_state(backbone)
    if state is not None:
        if state.rank != rank:
            raise ValueError(
                f"The adapter in {os.fspath(path)!r} has rank={rank}, but LoRA is enabled here "
                f"with rank={state.rank}: the ranks must match. Enable LoRA with the file's rank, "
                "or load the file into "
                "a backbone without LoRA (it is then enabled from the file)."
            )
        if state.target_names != names:
            raise ValueError(
                f"The adapter in {os.fspath(path)!r} targets {list(names)}, but LoRA is enabled "
                f"here on {list(state.target_names)}. Both must match."
            )
        if state.alpha != alpha:
            raise ValueError(
                f"The adapter in {os.fspath(path)!r} has alpha={alpha}, but LoRA is enabled here "
                f"with alpha={state.alpha}. Both must match."
            )
    layers = target_layers(backbone, names)
    expected = {}
    for key, _, _, layer in layers:
        for part in ("lora_kernel_a", "lora_kernel_b"):
            expected[f"{key}/{part}"] = layer
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"The adapter in {os.fspath(path)!r} does not match its own metadata: "
            f"missing {missing[:4]}, unexpected {extra[:4]}."
        )
    # Check every shape before enabling anything, so a rejected file leaves
    # the backbone as it was. Keras' LoRA factors a kernel `(..., out)` into
    # `a: (..., rank)` and `b: (rank, out)`.
    for key, layer in expected.items():
        part = key.rsplit("/", 1)[1]
        if state is not None:
            needed = tuple(getattr(layer, part).shape)
        else:
            kernel_shape = tuple(layer.kernel.shape)
            needed = (
                kernel_shape[:-1] + (rank,) if part == "lora_kernel_a" else (rank, kernel_shape[-1])
            )
        if tuple(tensors[key].shape) != needed:
            raise ValueError(
                f"Adapter tensor `{key}` has shape {tuple(tensors[key].shape)}; "
                "this backbone needs "
                f"{needed}. The adapter was trained on a different model config."
            )
    warn_non_finite(sorted(tensors.items()), f"the adapter {os.fspath(path)!r}")
    if state is None:
        enable_lora(backbone, rank, alpha=alpha, target_names=names)
    for key, layer in expected.items():
        getattr(layer, key.rsplit("/", 1)[1]).assign(tensors[key])


# === Merge ===


def _merge_layer(layer):
    """Folds the adapter into the kernel and removes the adapter variables."""
    mode = layer.quantization_mode
    if mode is None:
        # `kernel` is `W + (alpha / r) * a @ b` while LoRA is on.
        merged = ops.cast(layer.kernel, layer._kernel.dtype)
        layer.lora_enabled = False
        layer._kernel.assign(merged)
    elif mode == "int8":
        # Keras' own merge for saving: dequantize, add, requantize.
        kernel, kernel_scale, _ = layer._get_kernel_with_merged_lora()
        layer.lora_enabled = False
        layer._kernel.assign(kernel)
        layer.kernel_scale.assign(kernel_scale)
    else:
        raise NotImplementedError(
            f"Merging LoRA into a {mode!r}-quantized layer (`{layer.path}`) is not supported; "
            "merge before quantizing, or keep the adapter separate."
        )
    # Dropping the attributes untracks the variables (`Layer.__delattr__`).
    del layer.lora_kernel_a
    del layer.lora_kernel_b
    layer.lora_rank = None
    layer.lora_alpha = None


def merge_lora_weights(backbone):
    """Folds every adapter into its base kernel and disables LoRA.

    The backbone is a plain model again: no adapter variables, no adapter cost,
    and the weights `enable_lora` froze are trainable again.
    """
    state = _require_state(backbone, "merge_lora_weights")
    for _, _, _, layer in target_layers(backbone, state.target_names):
        _merge_layer(layer)
    for variable in state.frozen_variables:
        variable.trainable = True
    backbone._lora_state = None


# === PEFT export ===


def export_lora_to_peft(backbone, directory, base_model_name_or_path=None, overwrite=False):
    """Writes the adapter in Hugging Face PEFT's layout (see `keras_gemma.formats.peft`).

    Query/key/value adapters export with rank `heads * rank` (block-diagonal
    `lora_B`); the update is exactly the same.
    """
    state = _require_state(backbone, "export_lora_to_peft")
    layers = target_layers(backbone, state.target_names)
    for _, _, name, layer in layers:
        if layer.quantization_mode not in (None, "int8"):
            raise NotImplementedError(
                f"PEFT export of LoRA on a {layer.quantization_mode!r}-quantized `{name}` "
                "is not supported."
            )
    # Raises a clear ValueError when transformers has no model type for the config.
    transformers_config_from_backbone(backbone.get_config())
    adapters = [
        (
            index,
            name,
            ops.convert_to_numpy(layer.lora_kernel_a),
            ops.convert_to_numpy(layer.lora_kernel_b),
        )
        for _, index, name, layer in layers
    ]
    peft.write_peft_adapter(
        directory,
        adapters,
        state.rank,
        state.alpha,
        state.target_names,
        base_model=base_model_name_or_path,
        overwrite=overwrite,
    )
