"""The dtype policies a `GemmaBackbone` records and rebuilds (quantized layers)."""

import keras


def layer_policy(layer):
    """The policy a layer was built with (resolving a `DTypePolicyMap`)."""
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        # Input layers have no path: they hold no weights to quantize.
        return policy.default_policy if layer.path is None else policy[layer.path]
    return policy


def embedding_quantization_kwargs(dtype):
    """Rebuilds the int4 embedding exactly as `quantize("int4")` left it.

    `quantize("int4")` gives `ReversibleEmbedding` a config without an
    activation quantizer, while building it int4 from its policy alone adds
    one to the reverse (logits) path, so a saved int4 model would reload
    with different logits. Passing the config keeps them identical.
    """
    if not isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return {}
    policy = dtype["token_embedding"]
    if policy.quantization_mode != "int4":
        return {}
    return {
        "quantization_config": keras.quantizers.Int4QuantizationConfig(block_size=policy.block_size)
    }


def config_dtype_policy(backbone):
    """The model's policy, as a `DTypePolicyMap` once layers are quantized.

    `Model.quantize` changes the policies of individual layers; recording
    them by layer path lets `from_config` build those layers quantized
    (int8 / int4 variables) before `load_weights` fills them, as keras-hub
    does.
    """
    policy = backbone.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy = policy.default_policy
    quantized = {}
    for layer in backbone._flatten_layers(include_self=False):
        policy_of_layer = layer_policy(layer)
        if policy_of_layer.quantization_mode is not None:
            quantized[layer.path] = policy_of_layer
    if not quantized:
        return policy
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
    for path, path_policy in quantized.items():
        policy_map[path] = path_policy
    return policy_map
