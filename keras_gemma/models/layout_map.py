"""How a `GemmaBackbone`'s weights are split over a device mesh.

Used through `GemmaBackbone.get_layout_map(device_mesh)` with Keras'
distribution API (JAX):

```python
devices = keras.distribution.list_devices()
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = backbone_cls.get_layout_map(mesh)  # or backbone.get_layout_map(mesh)
keras.distribution.set_distribution(
    keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
)
```

The scheme is Megatron-style tensor parallelism on the "model" axis plus
FSDP-style splitting of the hidden axis `d` on the "batch" axis:

| variable (shape)                          | model axis | batch axis |
|-------------------------------------------|------------|------------|
| `token_embedding/embeddings` (V, d)       | V          | d          |
| `attention/query/kernel` (n, d, h)        | n          | d          |
| `attention/key|value/kernel` (k, d, h)    | k, else d  | d, else h  |
| `attention/attention_output/kernel` (n, h, d) | n      | d          |
| `feed_forward/ffw_gating(_2)/kernel` (d, f) | f        | d          |
| `feed_forward/ffw_linear/kernel` (f, d)   | f          | d          |

Norm scales are small and replicated. An axis is only split when the mesh
dimension divides it: with fewer key/value heads than model-parallel devices
(Gemma's multi-query attention has one) the key/value kernels are split
along `d` on the model axis (and `head_dim` on the data axis) instead of the
head axis, and any other size that does not
divide falls back to replication. The layouts hold for float and int8 weights
(Keras' int8 kernels keep the float shape); int4 kernels are packed 2-D and
are left replicated.
"""

import functools

import keras

from keras_gemma.layers.architecture import GEMMA4_DEFAULTS
from keras_gemma.layers.architecture import block_arguments
from keras_gemma.layers.architecture import resolve_gemma4_fields


def _mesh_size(device_mesh, dim_name):
    if dim_name is None:
        return 1
    if dim_name not in device_mesh.axis_names:
        raise ValueError(
            f"{dim_name!r} is not an axis of the device mesh. Mesh axes: "
            f"{list(device_mesh.axis_names)}. Pass `model_parallel_dim_name` and "
            "`data_parallel_dim_name` naming the mesh's axes."
        )
    return device_mesh.shape[list(device_mesh.axis_names).index(dim_name)]


def _axes(shape, wanted, sizes):
    """Keeps each requested mesh axis only where its size divides the dimension."""
    axes = []
    for dimension, axis in zip(shape, wanted):
        if axis is not None and dimension % sizes[axis] == 0:
            axes.append(axis)
        else:
            axes.append(None)
    return tuple(axes)


def kernel_axes(config, model_axis="model", data_axis="batch", model_size=1, data_size=1):
    """`{variable path regex: mesh axes per dimension}` for a backbone config.

    Args:
        config: a `GemmaBackbone` config dict (`backbone.get_config()`).
        model_axis: mesh axis for tensor (model) parallelism, or None.
        data_axis: mesh axis for data parallelism (weights are also split
            along it, FSDP-style), or None.
        model_size: int. Devices along `model_axis`.
        data_size: int. Devices along `data_axis`.

    Returns:
        A dict from a regex over variable paths to a tuple of mesh axis names
        (or None) of the variable's rank.
    """
    sizes = {model_axis: model_size, data_axis: data_size}
    vocabulary = config["vocabulary_size"]
    hidden = config["hidden_dim"]
    intermediate = config["intermediate_dim"]
    query_heads = config["num_query_heads"]
    key_value_heads = config["num_key_value_heads"]
    head_dim = config["head_dim"]

    def key_value_wanted(key_value_heads):
        if key_value_heads % model_size == 0:
            return (model_axis, data_axis, None)
        # Fewer key/value heads than model-parallel devices (MQA): split the
        # hidden axis instead of the (size-1) head axis. The projection then
        # ends in one small all-reduce and keys/values come out whole on every
        # model-parallel device, as each query-head shard needs them
        # (splitting head_dim instead makes XLA re-gather them in attention).
        return (None, model_axis, data_axis)

    block = r"decoder_block_\d+/"
    axes = {
        "token_embedding/embeddings": _axes((vocabulary, hidden), (model_axis, data_axis), sizes),
        block + "attention/query/kernel": _axes(
            (query_heads, hidden, head_dim), (model_axis, data_axis, None), sizes
        ),
        block + "attention/(key|value)/kernel": _axes(
            (key_value_heads, hidden, head_dim), key_value_wanted(key_value_heads), sizes
        ),
        block + "attention/attention_output/kernel": _axes(
            (query_heads, head_dim, hidden), (model_axis, None, data_axis), sizes
        ),
        block + "feed_forward/ffw_gating(_2)?/kernel": _axes(
            (hidden, intermediate), (data_axis, model_axis), sizes
        ),
        block + "feed_forward/ffw_linear/kernel": _axes(
            (intermediate, hidden), (model_axis, data_axis), sizes
        ),
    }
    axes.update(_gemma4_axes(config, model_axis, data_axis, sizes, key_value_wanted))
    return axes


def _gemma4_axes(config, model_axis, data_axis, sizes, key_value_wanted):
    """Gemma 4: experts split over the model axis (expert parallel), the hidden axis over the
    data axis; per-layer embeddings like the token embedding; and the full layers' own
    key/value shapes by exact path (a `LayoutMap` prefers an exact key to a regex)."""
    config = dict(GEMMA4_DEFAULTS, **config)
    hidden, experts = config["hidden_dim"], config["num_experts"]
    axes = {}
    if experts:
        moe, width = r"decoder_block_\d+/mixture_of_experts/", config["expert_intermediate_dim"]
        axes[moe + "expert_gating(_2)?/kernel"] = _axes(
            (experts, hidden, width), (model_axis, data_axis, None), sizes
        )
        axes[moe + "expert_linear/kernel"] = _axes(
            (experts, width, hidden), (model_axis, None, data_axis), sizes
        )
        axes[moe + "router/kernel"] = _axes((hidden, experts), (data_axis, None), sizes)
    if config["per_layer_input_dim"]:
        width = config["num_layers"] * config["per_layer_input_dim"]
        embedding = "per_layer_embedding/per_layer_token_embedding/embeddings"
        axes[embedding] = _axes((config["vocabulary_size"], width), (model_axis, data_axis), sizes)
        axes["per_layer_embedding/per_layer_model_projection/kernel"] = _axes(
            (hidden, width), (data_axis, model_axis), sizes
        )
    resolved = resolve_gemma4_fields(config, config)
    for index in range(config["num_layers"]):
        layer = block_arguments(resolved, index)
        heads, head_dim = layer["num_key_value_heads"], layer["head_dim"]
        if (heads, head_dim) != (config["num_key_value_heads"], config["head_dim"]):
            for name in ("key", "value"):
                axes[f"decoder_block_{index}/attention/{name}/kernel"] = _axes(
                    (heads, hidden, head_dim), key_value_wanted(heads), sizes
                )
    return axes


def get_layout_map(
    config,
    device_mesh,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
):
    """A `keras.distribution.LayoutMap` for a backbone config on a mesh.

    Args:
        config: a `GemmaBackbone` config dict.
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. The mesh axis weights are split along
            for tensor parallelism.
        data_parallel_dim_name: str or None. The mesh axis batches are split
            along; weights are also split along it (FSDP-style). None keeps
            weights whole along that axis.

    Returns:
        A `keras.distribution.LayoutMap` for
        `keras.distribution.ModelParallel(layout_map=..., batch_dim_name=...)`.
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: {type(device_mesh).__name__} {device_mesh!r:.80}"
        )
    model_size = _mesh_size(device_mesh, model_parallel_dim_name)
    data_size = _mesh_size(device_mesh, data_parallel_dim_name)
    layout_map = keras.distribution.LayoutMap(device_mesh)
    axes_by_path = kernel_axes(
        config,
        model_axis=model_parallel_dim_name,
        data_axis=data_parallel_dim_name,
        model_size=model_size,
        data_size=data_size,
    )
    for path, axes in axes_by_path.items():
        layout_map[path] = axes
    return layout_map


def backbone_layout_map(
    backbone,
    device_mesh,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    config=None,
):
    """`GemmaBackbone.get_layout_map`: a `LayoutMap` for this model on a mesh.

    Embeddings, attention and feed-forward kernels are split along
    `model_parallel_dim_name` (heads, or the hidden axis for key/value kernels
    with fewer heads than devices; the feed-forward width; the vocabulary) and
    along `data_parallel_dim_name` on the hidden axis; norms are replicated.
    Sizes the mesh does not divide stay whole.

    Call it on a backbone (`backbone.get_layout_map(mesh)`) or, to build the
    model already distributed, on the class with its config
    (`GemmaBackbone.get_layout_map(mesh, config=config)`).

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. Mesh axis for model parallelism.
        data_parallel_dim_name: str or None. Mesh axis for data parallelism.
        config: dict. The backbone config; defaults to the backbone's own.
            Called on the class without one, keras-hub's layout, which
            does not know the sizes (`size_free_layout_map`).

    Returns:
        A `keras.distribution.LayoutMap`.

    Example:
    ```python
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ["batch", "model"], keras.distribution.list_devices()
    )
    layout_map = keras_gemma.GemmaBackbone.get_layout_map(mesh, config=config)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    with distribution.scope():
        backbone = keras_gemma.GemmaBackbone(**config)
    ```
    """
    if config is None:
        if backbone is None:
            return size_free_layout_map(
                device_mesh, model_parallel_dim_name, data_parallel_dim_name
            )
        config = backbone.get_config()
    return get_layout_map(config, device_mesh, model_parallel_dim_name, data_parallel_dim_name)


def size_free_layout_map(device_mesh, model_axis="model", data_axis="batch"):
    """The layout keras-hub's `GemmaBackbone.get_layout_map(mesh)` gives, sizes unknown.

    Called on the class without a config, the sizes are unknown, so every
    kernel is split as keras-hub splits it, key/value kernels on their head
    axis (`(model, batch, None)`) like the query's, whether or not the mesh
    divides the sizes. Pass `config=` (or call it on a backbone) for the
    size-aware layout above.
    """
    _mesh_size(device_mesh, model_axis)
    _mesh_size(device_mesh, data_axis)
    layout_map = keras.distribution.LayoutMap(device_mesh)
    block = r"decoder_block_\d+/"
    layout_map["token_embedding/embeddings"] = (model_axis, data_axis)
    layout_map[block + "attention/(query|key|value)/kernel"] = (model_axis, data_axis, None)
    layout_map[block + "attention/attention_output/kernel"] = (model_axis, None, data_axis)
    layout_map[block + "feed_forward/ffw_gating(_2)?/kernel"] = (data_axis, model_axis)
    layout_map[block + "feed_forward/ffw_linear/kernel"] = (model_axis, data_axis)
    return layout_map


class ConfigMethod:
    """A method callable on an instance or on the class (then `config=` is needed)."""

    def __init__(self, function):
        self.function = function
        functools.update_wrapper(self, function)

    def __get__(self, instance, owner=None):
        bound = functools.partial(self.function, instance)
        functools.update_wrapper(bound, self.function)
        return bound
