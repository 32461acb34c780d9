"""Gemma 4's config fields of `GemmaBackbone`: defaults, validation, per-layer arguments.

The fields (all default to the Gemma 1-3 behaviour):

- `global_head_dim`: head dim of full-attention layers (Gemma 4: 512; the
  sliding ones use `head_dim`, 256). None means `head_dim`.
- `num_global_key_value_heads`: key/value heads of full-attention layers.
  None means `num_key_value_heads`.
- `global_keys_as_values`: full layers have no value projection, values are
  the keys before their norm and RoPE (HF `attention_k_eq_v`).
- `global_partial_rotary_factor`: Gemma 4's "proportional" RoPE on full
  layers: the fraction of frequencies kept (0.25), see `RotaryEmbedding`.
- `normalization_scale`: "one_plus_scale" (Gemma 1-3, `x * (1 + w)`) or
  "scale" (Gemma 4, `x * w`), for every RMS normalization.
- `use_value_norm`: RMS-normalize values without weight (Gemma 4 `v_norm`).
- `use_layer_scalar`: each block multiplies its output by a learned scalar.
- `per_layer_input_dim`: per-layer input embeddings (PLE) width, 0 for none.
- `num_kv_shared_layers`: the last this-many layers compute no keys/values
  and attend those of the last earlier layer of the same type (HF
  `kv_sharing_modes`); see `kv_source_layers`.
- `use_double_wide_mlp`: KV-sharing layers use `2 * intermediate_dim`.
- `num_experts`, `num_experts_per_token`, `expert_intermediate_dim`: the
  mixture of experts beside each dense feed-forward (0 experts: none).

Attention scale 1.0 (Gemma 4) is `query_pre_attn_scalar=1.0`.
"""

from keras_gemma.layers.decoder_block import FULL_ATTENTION

# `GemmaBackbone`'s shape fields: required, each a positive int (every Gemma).
SHAPE_FIELDS = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "intermediate_dim",
    "head_dim",
)
NORMALIZATION_SCALES = ("one_plus_scale", "scale")
GEMMA4_DEFAULTS = {
    "global_head_dim": None,
    "num_global_key_value_heads": None,
    "global_keys_as_values": False,
    "global_partial_rotary_factor": 1.0,
    "normalization_scale": "one_plus_scale",
    "use_value_norm": False,
    "use_layer_scalar": False,
    "per_layer_input_dim": 0,
    "num_kv_shared_layers": 0,
    "use_double_wide_mlp": False,
    "num_experts": 0,
    "num_experts_per_token": None,
    "expert_intermediate_dim": None,
}


def resolve_gemma4_fields(config, fields):
    """`fields` with None head dim / KV heads resolved from `config`."""
    fields = dict(fields)
    if fields["global_head_dim"] is None:
        fields["global_head_dim"] = config["head_dim"]
    if fields["num_global_key_value_heads"] is None:
        fields["num_global_key_value_heads"] = config["num_key_value_heads"]
    return fields


def _fail(name, value, allowed):
    raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate_gemma4_config(config):
    """Raises `ValueError` naming the Gemma 4 field, its value and what is allowed."""
    for name in ("global_head_dim", "num_global_key_value_heads"):
        if not _is_int(config[name]) or config[name] <= 0:
            _fail(name, config[name], "a positive integer (or None)")
    if config["global_head_dim"] % 2:
        _fail("global_head_dim", config["global_head_dim"], "even, for rotary embeddings")
    if config["num_query_heads"] % config["num_global_key_value_heads"]:
        _fail(
            "num_global_key_value_heads",
            config["num_global_key_value_heads"],
            f"a divisor of num_query_heads={config['num_query_heads']}",
        )
    for name in (
        "global_keys_as_values",
        "use_value_norm",
        "use_layer_scalar",
        "use_double_wide_mlp",
    ):
        if not isinstance(config[name], bool):
            _fail(name, config[name], "a bool")
    factor = config["global_partial_rotary_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        _fail("global_partial_rotary_factor", factor, "a number in (0, 1]")
    if config["normalization_scale"] not in NORMALIZATION_SCALES:
        _fail(
            "normalization_scale", config["normalization_scale"], f"one of {NORMALIZATION_SCALES}"
        )
    for name in ("per_layer_input_dim", "num_kv_shared_layers", "num_experts"):
        if not _is_int(config[name]) or config[name] < 0:
            _fail(name, config[name], "an integer >= 0")
    if config["num_kv_shared_layers"] >= config["num_layers"]:
        _fail(
            "num_kv_shared_layers",
            config["num_kv_shared_layers"],
            f"smaller than num_layers={config['num_layers']} (a layer must produce keys/values)",
        )
    if config["use_double_wide_mlp"] and not config["num_kv_shared_layers"]:
        _fail(
            "use_double_wide_mlp", True, "False when num_kv_shared_layers is 0 (no layer to widen)"
        )
    kv_source_layers(config)  # Raises when a shared layer type has no producer.
    experts = config["num_experts"]
    top_k, width = config["num_experts_per_token"], config["expert_intermediate_dim"]
    if experts:
        if not _is_int(top_k) or not 1 <= top_k <= experts:
            _fail("num_experts_per_token", top_k, f"an integer in [1, num_experts={experts}]")
        if not _is_int(width) or width <= 0:
            _fail("expert_intermediate_dim", width, "a positive integer when num_experts > 0")
    elif top_k is not None or width is not None:
        raise ValueError(
            "`num_experts_per_token` and `expert_intermediate_dim` need `num_experts` > 0. "
            f"Received: num_experts=0, num_experts_per_token={top_k!r}, "
            f"expert_intermediate_dim={width!r}"
        )


def kv_source_layers(config):
    """For each layer, the index of the layer whose keys/values it attends.

    A layer's own index unless it is among the last `num_kv_shared_layers`;
    those read the last earlier non-shared layer of the same type (HF
    `Gemma4TextConfig.kv_sharing_modes`: E2B's shared sliding layers read
    layer 13, its shared full layers layer 14).
    """
    layer_types = list(config["layer_types"])
    first_shared = len(layer_types) - config.get("num_kv_shared_layers", 0)
    sources = list(range(first_shared))
    for index in range(first_shared, len(layer_types)):
        producers = [j for j in range(first_shared) if layer_types[j] == layer_types[index]]
        if not producers:
            raise ValueError(
                f"`num_kv_shared_layers={config['num_kv_shared_layers']}`: shared layer {index} "
                f"is {layer_types[index]!r}, but no earlier non-shared layer has that type to "
                "read keys/values from. Lower num_kv_shared_layers or change layer_types."
            )
        sources.append(producers[-1])
    return sources


def block_arguments(config, index):
    """The `GemmaDecoderBlock` arguments of layer `index` that depend on its type and place."""
    config = dict(GEMMA4_DEFAULTS, **config)
    config.update(resolve_gemma4_fields(config, {name: config[name] for name in GEMMA4_DEFAULTS}))
    is_full = config["layer_types"][index] == FULL_ATTENTION
    shared = kv_source_layers(config)[index] != index
    wide = shared and config["use_double_wide_mlp"]
    return {
        "head_dim": config["global_head_dim"] if is_full else config["head_dim"],
        "num_key_value_heads": (
            config["num_global_key_value_heads"] if is_full else config["num_key_value_heads"]
        ),
        "intermediate_dim": config["intermediate_dim"] * (2 if wide else 1),
        "keys_as_values": is_full and config["global_keys_as_values"],
        "reads_shared_key_value": shared,
        "partial_rotary_factor": config["global_partial_rotary_factor"] if is_full else 1.0,
        "norm_scale_offset": 1.0 if config["normalization_scale"] == "one_plus_scale" else 0.0,
        "use_value_norm": config["use_value_norm"],
        "per_layer_input_dim": config["per_layer_input_dim"],
        "use_layer_scalar": config["use_layer_scalar"],
        "num_experts": config["num_experts"],
        "num_experts_per_token": config["num_experts_per_token"],
        "expert_intermediate_dim": config["expert_intermediate_dim"],
    }
