"""LoRA for `GemmaBackbone`: enable, save / load the adapter, merge, PEFT export.

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
import json
import os
import tempfile

import keras
import numpy as np
from keras import ops

ATTENTION_TARGETS = ("query", "key", "value", "attention_output")
FEED_FORWARD_TARGETS = ("ffw_gating", "ffw_gating_2", "ffw_linear")
VALID_TARGETS = ATTENTION_TARGETS + FEED_FORWARD_TARGETS
TARGET_SETS = {"attention": ATTENTION_TARGETS, "all": VALID_TARGETS}
DEFAULT_TARGETS = ("query", "value")
ADAPTER_SUFFIXES = (".lora.h5", ".safetensors")
FORMAT_VERSION = 1

# HF module names (under `model.layers.{i}.`) for each target.
PEFT_MODULES = {
    "query": "self_attn.q_proj",
    "key": "self_attn.k_proj",
    "value": "self_attn.v_proj",
    "attention_output": "self_attn.o_proj",
    "ffw_gating": "mlp.gate_proj",
    "ffw_gating_2": "mlp.up_proj",
    "ffw_linear": "mlp.down_proj",
}
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


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
            layers.append((f"decoder_block_{index}/{parent_name}/{name}", index, name, getattr(parent, name)))
    return layers


def lora_state(backbone):
    return getattr(backbone, "_lora_state", None)


def _require_state(backbone, action):
    state = lora_state(backbone)
    if state is None:
        raise ValueError(f"LoRA is not enabled on this backbone; call `enable_lora(rank)` before `{action}`.")
    return state


# === Enable ===


def _check_rank_alpha(rank, alpha):
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"`rank` must be an integer >= 1. Received: rank={rank!r}")
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or alpha <= 0
    ):
        raise ValueError(f"`alpha` must be a positive number or None (= rank). Received: alpha={alpha!r}")


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
    for _, _, name, layer in layers:
        if getattr(layer, "lora_enabled", False):
            raise ValueError(f"Layer `{layer.path}` already has LoRA enabled outside `enable_lora`.")
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
    d, f, h = config["hidden_dim"], config["intermediate_dim"], config["head_dim"]
    n, k = config["num_query_heads"], config["num_key_value_heads"]
    per_layer = {
        "query": n * d * rank + rank * h,
        "key": k * d * rank + rank * h,
        "value": k * d * rank + rank * h,
        "attention_output": n * h * rank + rank * d,
        "ffw_gating": d * rank + rank * f,
        "ffw_gating_2": d * rank + rank * f,
        "ffw_linear": f * rank + rank * d,
    }
    return config["num_layers"] * sum(per_layer[name] for name in names)


# === Save / load ===


def _adapter_format(path):
    path = os.fspath(path)
    for suffix in ADAPTER_SUFFIXES:
        if path.endswith(suffix):
            return suffix
    raise ValueError(
        f"An adapter file name must end in one of {list(ADAPTER_SUFFIXES)}. Received: path={path!r}"
    )


def _metadata(backbone, state):
    return {
        "format": "keras_gemma.lora",
        "format_version": FORMAT_VERSION,
        "rank": state.rank,
        "alpha": state.alpha,
        "target_names": list(state.target_names),
        "num_layers": backbone.num_layers,
    }


def _atomic_write(path, write):
    """`write(tmp_path)` then rename over `path`: a failure keeps the old file."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def save_lora_weights(backbone, path):
    """Writes the adapter weights and their rank / alpha / targets to one file."""
    suffix = _adapter_format(path)
    state = _require_state(backbone, "save_lora_weights")
    tensors = {}
    for key, _, _, layer in target_layers(backbone, state.target_names):
        tensors[f"{key}/lora_kernel_a"] = np.asarray(ops.convert_to_numpy(layer.lora_kernel_a), "float32")
        tensors[f"{key}/lora_kernel_b"] = np.asarray(ops.convert_to_numpy(layer.lora_kernel_b), "float32")
    metadata = _metadata(backbone, state)

    def write_h5(staging):
        import h5py

        with h5py.File(staging, "w") as f:
            f.attrs["metadata"] = json.dumps(metadata)
            for key, array in tensors.items():
                f.create_dataset(key, data=array)

    def write_safetensors(staging):
        from safetensors.numpy import save_file

        save_file(tensors, staging, metadata={"keras_gemma_lora": json.dumps(metadata)})

    _atomic_write(path, write_h5 if suffix == ".lora.h5" else write_safetensors)


def read_lora_file(path):
    """`(metadata, {key: array})` from a file written by `save_lora_weights`."""
    suffix = _adapter_format(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No adapter file at {path!r}.")
    try:
        if suffix == ".lora.h5":
            import h5py

            tensors = {}
            with h5py.File(path, "r") as f:
                metadata = json.loads(f.attrs["metadata"])
                f.visititems(
                    lambda key, item: tensors.__setitem__(key, item[()]) if isinstance(item, h5py.Dataset) else None
                )
        else:
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                metadata = json.loads(f.metadata()["keras_gemma_lora"])
                tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path!r} is not a keras_gemma LoRA adapter file ({type(error).__name__}: {error})."
        ) from None
    if metadata.get("format") != "keras_gemma.lora":
        raise ValueError(f"{path!r} is not a keras_gemma LoRA adapter file (metadata: {metadata}).")
    return metadata, tensors


def load_lora_weights(backbone, path):
    """Loads an adapter file, enabling LoRA from its metadata when needed.

    Rank, alpha, targets and layer count must match an already-enabled adapter.
    Every tensor is checked before any is assigned, so a bad file changes nothing.
    """
    metadata, tensors = read_lora_file(path)
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
                f"with rank={state.rank}. Enable LoRA with the file's rank, or load the file into "
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
            needed = kernel_shape[:-1] + (rank,) if part == "lora_kernel_a" else (rank, kernel_shape[-1])
        if tuple(tensors[key].shape) != needed:
            raise ValueError(
                f"Adapter tensor `{key}` has shape {tuple(tensors[key].shape)}; this backbone needs "
                f"{needed}. The adapter was trained on a different model config."
            )
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


# === Gradient checkpointing ===


def enable_gradient_checkpointing(backbone):
    """Recomputes each decoder block's activations in the backward pass.

    Training memory then grows with one block's activations plus the block
    inputs instead of every intermediate of every block. Uses `keras.remat`
    (`jax.checkpoint`, `torch.utils.checkpoint`, `tf.recompute_grad`); cached
    decoding (generation) calls the blocks with a cache and is unaffected.
    """
    for block in backbone.transformer_layers:
        if getattr(block, "_keras_gemma_checkpointed", False):
            continue
        block.call = _checkpointed(block.call)
        block._keras_gemma_checkpointed = True


def _checkpointed(call):
    def checkpointed_call(inputs, padding_mask=None, training=False, **kwargs):
        if kwargs or padding_mask is None:
            return call(inputs, padding_mask=padding_mask, training=training, **kwargs)

        def block(inputs, padding_mask):
            return call(inputs, padding_mask=padding_mask, training=training)

        return keras.remat(block)(inputs, padding_mask)

    return checkpointed_call


# === PEFT export ===


def _peft_factors(layer, target_name, config):
    """`(lora_A [r', in], lora_B [out, r'], r')` in HF's layout for one layer.

    Keras multiplies `a @ b`; PEFT adds `B @ A` to HF's `[out, in]` weight.
    - Dense (in, out): A = a.T, B = b.T.
    - attention_output (n, h, d) with a (n, h, r): HF's input is n*h flattened
      head-major, so A = a.reshape(n*h, r).T, B = b.T, rank r.
    - query/key/value (heads, d, h) with a per-head `a` (heads, d, r) and a
      shared `b` (r, h): HF's output is heads*h, so the exact PEFT form has rank
      heads*r: A stacks the heads' `a`, B is block-diagonal with `b.T` per head.
    """
    a = np.asarray(ops.convert_to_numpy(layer.lora_kernel_a), "float32")
    b = np.asarray(ops.convert_to_numpy(layer.lora_kernel_b), "float32")
    rank = b.shape[0]
    if target_name in FEED_FORWARD_TARGETS:
        return a.T, b.T, rank
    if target_name == "attention_output":
        return a.reshape(-1, rank).T, b.T, rank
    heads, hidden, _ = a.shape
    head_dim = b.shape[1]
    lora_a = a.transpose(0, 2, 1).reshape(heads * rank, hidden)  # (heads*r, d)
    lora_b = np.zeros((heads * head_dim, heads * rank), "float32")  # (heads*h, heads*r)
    for head in range(heads):
        lora_b[head * head_dim : (head + 1) * head_dim, head * rank : (head + 1) * rank] = b.T
    return lora_a, lora_b, heads * rank


def export_lora_to_peft(backbone, directory, base_model_name_or_path=None):
    """Writes `adapter_config.json` + `adapter_model.safetensors` for `peft`.

    The adapter loads with `peft.PeftModel.from_pretrained(hf_model, directory)`
    onto the transformers model that `export_to_transformers` writes for this
    backbone. Query/key/value adapters export with rank `heads * rank`
    (block-diagonal `lora_B`, declared in `rank_pattern` / `alpha_pattern` so the
    scaling `alpha / rank` is unchanged); the update is exactly the same.
    """
    from keras_gemma.formats.keras_preset import atomic_directory_write
    from keras_gemma.formats.transformers import transformers_config_from_backbone

    state = _require_state(backbone, "export_lora_to_peft")
    for _, _, name, layer in target_layers(backbone, state.target_names):
        if layer.quantization_mode not in (None, "int8"):
            raise NotImplementedError(
                f"PEFT export of LoRA on a {layer.quantization_mode!r}-quantized `{name}` is not supported."
            )
    config = backbone.get_config()
    # Raises a clear ValueError when transformers has no model type for the config.
    hf_config = transformers_config_from_backbone(config)
    tensors = {}
    ranks = {}
    for _, index, name, layer in target_layers(backbone, state.target_names):
        lora_a, lora_b, rank = _peft_factors(layer, name, config)
        module = f"base_model.model.model.layers.{index}.{PEFT_MODULES[name]}"
        tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        ranks[PEFT_MODULES[name].split(".")[-1]] = rank
    scale = state.alpha / state.rank
    modules = [PEFT_MODULES[name].split(".")[-1] for name in state.target_names]
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": state.rank,
        "lora_alpha": state.alpha,
        "target_modules": modules,
        # Per-module ranks where the exact form needs more than `r` (q/k/v).
        "rank_pattern": {module: rank for module, rank in ranks.items() if rank != state.rank},
        "alpha_pattern": {
            module: rank * scale for module, rank in ranks.items() if rank != state.rank
        },
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }

    atomic_directory_write(directory, lambda staging: _write_into(staging, adapter_config, tensors))


def _write_into(directory, adapter_config, tensors):
    from safetensors.numpy import save_file

    with open(os.path.join(directory, PEFT_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2)
    save_file(tensors, os.path.join(directory, PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
