"""Checks of a `GemmaBackbone` config: each field named, with its value and what is allowed."""

import math
import numbers

from keras_gemma.layers import architecture
from keras_gemma.layers.decoder_block import LAYER_TYPES
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _check_optional_positive_number(name, value):
    if value is None:
        return
    # `not value > 0` also rejects NaN; infinity is rejected explicitly.
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
        or math.isinf(value)
    ):
        raise ValueError(
            f"`{name}` must be a finite positive number or None. Received: {name}={value!r}"
        )


def validate_config(config):
    """Raises `ValueError` naming the field, the value and what is allowed."""
    for name in architecture.SHAPE_FIELDS:
        _check_positive_int(name, config[name])
    if config["num_query_heads"] % config["num_key_value_heads"]:
        raise ValueError(
            "`num_query_heads` must be a multiple of `num_key_value_heads`. "
            f"Received: num_query_heads={config['num_query_heads']}, "
            f"num_key_value_heads={config['num_key_value_heads']}"
        )
    if config["head_dim"] % 2:
        raise ValueError(
            "`head_dim` must be even for rotary embeddings. "
            f"Received: head_dim={config['head_dim']}"
        )
    layer_types = config["layer_types"]
    if len(layer_types) != config["num_layers"]:
        raise ValueError(
            f"`layer_types` must have one entry per layer (num_layers={config['num_layers']}). "
            f"Received {len(layer_types)} entries: {list(layer_types)}"
        )
    for index, layer_type in enumerate(layer_types):
        if layer_type not in LAYER_TYPES:
            raise ValueError(
                f"`layer_types[{index}]` must be one of {LAYER_TYPES}. Received: {layer_type!r}"
            )
    if SLIDING_ATTENTION in layer_types:
        _check_positive_int("sliding_window_size", config["sliding_window_size"])
    elif config["sliding_window_size"] is not None:
        _check_positive_int("sliding_window_size", config["sliding_window_size"])
    for name in (
        "query_pre_attn_scalar",
        "attention_logit_soft_cap",
        "final_logit_soft_cap",
        "rope_wavelength",
        "local_rope_wavelength",
        "rope_scaling_factor",
        "layer_norm_epsilon",
    ):
        _check_optional_positive_number(name, config[name])
    if config["rope_scaling_factor"] is None:
        raise ValueError("`rope_scaling_factor` must be a positive number. Received: None")
    dropout = config["dropout"]
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={config['dropout']!r}")
    for name in ("use_post_attention_norm", "use_post_ffw_norm", "use_query_key_norm"):
        if not isinstance(config[name], bool):
            raise ValueError(f"`{name}` must be a bool. Received: {name}={config[name]!r}")
    gemma4_config = dict(architecture.GEMMA4_DEFAULTS, **config)
    architecture.validate_gemma4_config(architecture.resolve_gemma4_fields(config, gemma4_config))
