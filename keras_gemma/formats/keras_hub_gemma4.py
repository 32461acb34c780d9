"""keras-hub's `Gemma4Backbone` presets as data: its config as our arguments, its weights by name.

`formats.keras_hub_preset` reads the files (`config.json`, the HDF5
weights) and hands them here for `keras_hub>Gemma4Backbone`; this module
maps plain data and never imports keras-hub.

Facts about keras-hub 0.32 used here (from its source, `models/gemma4/`):
- Layer types: `layer_types` (its `get_config()` always writes them), else
  full attention where `i % sliding_window_pattern == pattern - 1`. Unlike HF
  `Gemma4TextConfig`, keras-hub does not force the last layer to full
  attention; the stored list is what keras-hub computes, so it is used as is.
- Full layers: head dim `global_head_dim` (None: `head_dim`), RoPE base
  `global_rope_wavelength` (None: 1e6) with linear `global_rope_scaling_factor`,
  and "proportional" RoPE: keras-hub rotates `int(factor * head_dim)` rounded
  down to even (at least 2) of the features, pairs `(i, i + head_dim / 2)`
  with exponents `2i / head_dim` — our `global_partial_rotary_factor`.
  Sliding layers: `head_dim`, base `local_rope_wavelength` (None: 1e4), all
  pairs; `local_rope_scaling_factor` other than 1 is refused.
- `num_global_key_value_heads` set: full layers have that many KV heads and
  no value projection, values are the keys before key norm and RoPE (HF
  `attention_k_eq_v`, which HF also ties to `num_global_key_value_heads`).
- KV sharing: the last `num_kv_shared_layers` layers own no key/value
  weights and attend those of the last earlier non-shared layer of the same
  type; `use_double_wide_mlp` doubles those layers' FFN width. keras-hub lets
  a shared layer with no such producer keep its own keys; that, and "all
  layers shared" (an assistant model), are refused here.
- PLE: `hidden_size_per_layer_input` wide (0: none), a table of
  `vocab_size_per_layer_input` rows (None: `vocabulary_size`; must be it).
- `enable_moe_block`: every layer runs the dense FFN and `num_experts`
  experts (`expert_intermediate_dim` wide, top `num_experts_per_token`) side
  by side. keras-hub scales each expert's output by `per_expert_scale`, HF
  scales its routing weight: the same product.
- Always on: post-attention and post-FFN norms, query/key norms, a value norm
  without weight, norms `x * w` (not `1 + w`), a `layer_scalar` per block,
  attention scale 1.0 (`query_head_dim_normalize` is unused).
- HDF5 names: Keras names the functional model's layers by class, numbered in
  the order of `model.layers` (by depth): `reversible_embedding` (token
  embedding); with PLE `embedding`, `dense` and `rms_normalization` (its
  table, projection and projection norm); `gemma4_text_decoder_block_{i}`
  (no suffix for 0); the final norm is the last `rms_normalization*`. Inside
  a block the groups are attribute names (`attention/query_dense`,
  `moe_expert_bank` holding gate, up, down, `per_expert_scale` in that order).
- Tokenizer: `Gemma4Tokenizer` (a SentencePiece tokenizer) saves its proto as
  `assets/tokenizer/vocabulary.spm`, where our presets keep theirs; Gemma 4's
  chat format and `<turn|>` stop token follow from the vocabulary's `<|turn>`
  and `<turn|>` pieces (`GemmaTokenizer.turn_tokens`).
- `vision_encoder` / `audio_encoder`: whole layers `gemma4_vision_encoder*` /
  `gemma4_audio_encoder*` whose weights are not read; the text part loads.
  Their one other effect on text, `use_vision_bidirectional_attention`, only
  joins image tokens, which a text prompt has none of.

Numerics: on the same weights keras-hub's text model and HF transformers
5.24's `modeling_gemma4.py` (the reference) agree within float32 rounding
(max |logit difference| 4e-6, logits of spread 2-3) on the tiny E2B-,
26B-A4B- and 31B-like models of `tests/formats/keras_hub_gemma4_test.py`:
scale 1.0, RMSNorm `x * w`, `v_norm`, proportional RoPE (with linear
scaling), PLE, KV sharing, double-wide MLP, keys = values, router and
experts, `layer_scalar`; ours equals both. The differences are in configs
only: the last-layer rule above, and keras-hub's optional
`attention_logit_soft_cap` (HF Gemma 4 has none), which we apply as keras-hub
does (a tanh cap on the scale-1.0 logits).
"""

from keras_gemma.formats.variables import variable_shapes
from keras_gemma.layers.architecture import SHAPE_FIELDS
from keras_gemma.layers.architecture import kv_source_layers
from keras_gemma.layers.decoder_block import FULL_ATTENTION
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION

REGISTERED_NAME = "keras_hub>Gemma4Backbone"
# keras-hub's defaults (Gemma4Backbone.__init__) for fields a config may leave out.
_DEFAULTS = {
    "use_sliding_window_attention": True,
    "sliding_window_size": 512,
    "sliding_window_pattern": 6,
    "layer_types": None,
    "global_head_dim": None,
    "local_rope_scaling_factor": 1.0,
    "global_rope_scaling_factor": 1.0,
    "global_rope_wavelength": None,
    "local_rope_wavelength": None,
    "global_rope_partial_rotary_factor": 1.0,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": None,
    "layer_norm_epsilon": 1e-6,
    "dropout": 0.0,
    "use_bidirectional_attention": False,
    "is_embedding_model": False,
    "num_kv_shared_layers": 0,
    "num_global_key_value_heads": None,
    "hidden_size_per_layer_input": 0,
    "vocab_size_per_layer_input": None,
    "use_double_wide_mlp": False,
    "enable_moe_block": False,
    "num_experts": None,
    "expert_intermediate_dim": None,
    "num_experts_per_token": 8,
}
# keras-hub's required fields have our names.
_REQUIRED = SHAPE_FIELDS
# Fields that do not change the text model's outputs, with the reason.
_IGNORED = {
    "name": "the layer's name",
    "trainable": "training state",
    "dtype": "read by keras_hub_preset",
    "image_size": "stored only; keras-hub's forward pass does not read it",
    "query_head_dim_normalize": "unused by keras-hub's Gemma 4 (attention scale 1.0)",
    "vision_encoder": "its weights are skipped; the text part loads",
    "audio_encoder": "its weights are skipped; the text part loads",
    "num_audio_tokens_per_clip": "audio only",
    "use_vision_bidirectional_attention": "joins image tokens only",
    "pooling_intermediate_dim": "embedding models only (refused)",
    "embedding_dim": "embedding models only (refused)",
}
# HDF5 layer groups of the media encoders, whose weights the text model does not read.
MEDIA_GROUPS = ("layers/gemma4_vision_encoder", "layers/gemma4_audio_encoder")
_BLOCK_GROUP = "layers/gemma4_text_decoder_block"
# Our variable path below `decoder_block_{i}/` -> (keras-hub group below its block, vars index).
_BLOCK_VARIABLES = {
    "layer_scalar": ("", 0),
    "pre_attention_norm/scale": ("pre_attention_norm", 0),
    "post_attention_norm/scale": ("post_attention_norm", 0),
    "pre_ffw_norm/scale": ("pre_ffw_norm", 0),
    "post_ffw_norm/scale": ("post_ffw_norm", 0),
    "attention/query/kernel": ("attention/query_dense", 0),
    "attention/key/kernel": ("attention/key_dense", 0),
    "attention/value/kernel": ("attention/value_dense", 0),
    "attention/attention_output/kernel": ("attention/output_dense", 0),
    "attention/query_norm/scale": ("attention/query_norm", 0),
    "attention/key_norm/scale": ("attention/key_norm", 0),
    "feed_forward/ffw_gating/kernel": ("gating_ffw", 0),
    "feed_forward/ffw_gating_2/kernel": ("gating_ffw_2", 0),
    "feed_forward/ffw_linear/kernel": ("ffw_linear", 0),
    "per_layer_input_gate/kernel": ("per_layer_input_gate", 0),
    "per_layer_projection/kernel": ("per_layer_up_proj", 0),
    "post_per_layer_input_norm/scale": ("post_per_layer_input_norm", 0),
    "pre_expert_norm/scale": ("pre_ffw_norm_moe", 0),
    "post_dense_ffw_norm/scale": ("post_ffw_norm_dense", 0),
    "post_expert_norm/scale": ("post_ffw_norm_moe_path", 0),
    "mixture_of_experts/router_scale": ("moe_router", 0),
    "mixture_of_experts/router/kernel": ("moe_router/proj", 0),
    "mixture_of_experts/expert_gating/kernel": ("moe_expert_bank", 0),
    "mixture_of_experts/expert_gating_2/kernel": ("moe_expert_bank", 1),
    "mixture_of_experts/expert_linear/kernel": ("moe_expert_bank", 2),
    "mixture_of_experts/per_expert_scale": ("moe_expert_bank", 3),
}
_TOP_VARIABLES = {
    "token_embedding/embeddings": "reversible_embedding",
    "per_layer_embedding/per_layer_token_embedding/embeddings": "embedding",
    "per_layer_embedding/per_layer_model_projection/kernel": "dense",
    "per_layer_embedding/per_layer_projection_norm/scale": "rms_normalization",
}


def _refuse(source, field, value, reason):
    raise ValueError(f"{source} sets `{field}={value!r}`: {reason}")


def config_from_keras_hub(hub, source):
    """Our `GemmaBackbone` config (without dtype) for keras-hub `Gemma4Backbone` arguments.

    Args:
        hub: dict. The `config` of keras-hub's `config.json`.
        source: str. Names the file in error messages.
    """
    unknown = sorted(set(hub) - set(_DEFAULTS) - set(_REQUIRED) - set(_IGNORED))
    if unknown:
        raise ValueError(
            f"{source} sets keras-hub Gemma4Backbone fields this loader does not know: "
            f"{unknown}. It reads keras-hub 0.32's; a newer keras-hub may change the model."
        )
    missing = [name for name in _REQUIRED if name not in hub]
    if missing:
        raise ValueError(f"{source} lacks the Gemma4Backbone fields {missing}.")
    hub = dict(_DEFAULTS, **hub)
    for flag, reason in (
        ("use_bidirectional_attention", "only causal text models load into `GemmaBackbone`"),
        ("is_embedding_model", "embedding models (pooled outputs) are not supported"),
    ):
        if hub[flag]:
            _refuse(source, flag, hub[flag], reason)
    num_layers, head_dim = hub["num_layers"], hub["head_dim"]
    layer_types = _layer_types(hub, source)
    has_sliding = SLIDING_ATTENTION in layer_types
    if has_sliding and not hub["use_sliding_window_attention"]:
        _refuse(
            source,
            "use_sliding_window_attention",
            False,
            "its local layers then attend every key, which `GemmaBackbone`'s sliding layers "
            "cannot express. Set it to true (Gemma 4's value) if the weights are Gemma 4's.",
        )
    if has_sliding and float(hub["local_rope_scaling_factor"]) != 1.0:
        _refuse(
            source,
            "local_rope_scaling_factor",
            hub["local_rope_scaling_factor"],
            "RoPE scaling on sliding-window layers is not supported.",
        )
    global_head_dim = hub["global_head_dim"] or head_dim
    shared = hub["num_kv_shared_layers"] or 0
    if shared >= num_layers:
        _refuse(
            source,
            "num_kv_shared_layers",
            shared,
            f"with num_layers={num_layers} no layer computes keys/values (a Gemma 4 assistant, "
            "which reads its target model's), so it is no standalone model.",
        )
    per_layer = hub["hidden_size_per_layer_input"] or 0
    per_layer_vocabulary = hub["vocab_size_per_layer_input"]
    if per_layer and per_layer_vocabulary not in (None, hub["vocabulary_size"]):
        _refuse(
            source,
            "vocab_size_per_layer_input",
            per_layer_vocabulary,
            f"the per-layer table must have vocabulary_size={hub['vocabulary_size']} rows.",
        )
    experts = hub["num_experts"] if hub["enable_moe_block"] else 0
    if hub["enable_moe_block"] and not (experts and hub["expert_intermediate_dim"]):
        _refuse(
            source,
            "enable_moe_block",
            True,
            "it needs `num_experts` and `expert_intermediate_dim` "
            f"(got {hub['num_experts']!r}, {hub['expert_intermediate_dim']!r}).",
        )
    global_kv_heads = hub["num_global_key_value_heads"]
    config = {
        "vocabulary_size": hub["vocabulary_size"],
        "num_layers": num_layers,
        "num_query_heads": hub["num_query_heads"],
        "num_key_value_heads": hub["num_key_value_heads"],
        "hidden_dim": hub["hidden_dim"],
        "intermediate_dim": hub["intermediate_dim"],
        "head_dim": head_dim,
        "layer_types": layer_types,
        "sliding_window_size": hub["sliding_window_size"] if has_sliding else None,
        "query_pre_attn_scalar": 1.0,  # keras-hub and HF: attention scale 1.0.
        "attention_logit_soft_cap": hub["attention_logit_soft_cap"],
        "final_logit_soft_cap": hub["final_logit_soft_cap"],
        "use_post_attention_norm": True,
        "use_post_ffw_norm": True,
        "use_query_key_norm": True,
        "rope_wavelength": float(hub["global_rope_wavelength"] or 1_000_000.0),
        "local_rope_wavelength": float(hub["local_rope_wavelength"] or 10_000.0),
        "rope_scaling_factor": float(hub["global_rope_scaling_factor"]),
        "layer_norm_epsilon": hub["layer_norm_epsilon"],
        "dropout": float(hub["dropout"]),
        "global_head_dim": global_head_dim,
        "num_global_key_value_heads": global_kv_heads or hub["num_key_value_heads"],
        "global_keys_as_values": global_kv_heads is not None,
        "global_partial_rotary_factor": _partial_rotary_factor(hub, global_head_dim, source),
        "normalization_scale": "scale",
        "use_value_norm": True,
        "use_layer_scalar": True,
        "per_layer_input_dim": per_layer,
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": bool(hub["use_double_wide_mlp"]) and shared > 0,
        "num_experts": experts,
        "num_experts_per_token": hub["num_experts_per_token"] if experts else None,
        "expert_intermediate_dim": hub["expert_intermediate_dim"] if experts else None,
    }
    try:
        kv_source_layers(config)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return config


def _layer_types(hub, source):
    layer_types = hub["layer_types"]
    num_layers = hub["num_layers"]
    if layer_types is None:
        pattern = hub["sliding_window_pattern"]
        return [
            FULL_ATTENTION if index % pattern == pattern - 1 else SLIDING_ATTENTION
            for index in range(num_layers)
        ]
    layer_types = list(layer_types)
    if len(layer_types) != num_layers or not set(layer_types) <= {
        SLIDING_ATTENTION,
        FULL_ATTENTION,
    }:
        _refuse(
            source,
            "layer_types",
            layer_types,
            f"expected {num_layers} entries, each {SLIDING_ATTENTION!r} or {FULL_ATTENTION!r}.",
        )
    return layer_types


def _partial_rotary_factor(hub, global_head_dim, source):
    """Our `global_partial_rotary_factor` rotating the pairs keras-hub rotates on full layers."""
    factor = float(hub["global_rope_partial_rotary_factor"])
    rotated = int(factor * global_head_dim)
    rotated = max(2, rotated - rotated % 2)  # keras-hub's `rotary_dim`.
    if rotated >= global_head_dim:
        return 1.0
    if not 0 < factor < 1 or int(factor * global_head_dim // 2) != rotated // 2:
        _refuse(
            source,
            "global_rope_partial_rotary_factor",
            hub["global_rope_partial_rotary_factor"],
            f"keras-hub rotates {rotated // 2} of {global_head_dim // 2} pairs, which "
            "`global_partial_rotary_factor` cannot express.",
        )
    return factor


# === Weights ===


def keras_hub_variable_names(config):
    """`{our variable path: keras-hub HDF5 dataset path}` of the backbone `config` describes."""
    names = {}
    for path in variable_shapes(config):
        if path in _TOP_VARIABLES:
            names[path] = f"layers/{_TOP_VARIABLES[path]}/vars/0"
        elif path == "final_normalization/scale":
            # The last RMS normalization of the model's layers.
            suffix = "_1" if config.get("per_layer_input_dim") else ""
            names[path] = f"layers/rms_normalization{suffix}/vars/0"
        else:
            block, _, rest = path.partition("/")
            index = int(block[len("decoder_block_") :])
            group, variable = _BLOCK_VARIABLES[rest]
            block_group = _BLOCK_GROUP + (f"_{index}" if index else "")
            names[path] = "/".join(filter(None, (block_group, group, "vars", str(variable))))
    return names


def tensors_from_keras_hub(variables, config, source):
    """`{variable path: array}` for `config` from keras-hub's `{HDF5 path: array}`.

    Every variable needs its stored array, of its shape, and every stored
    array outside the media encoders (`MEDIA_GROUPS`, which the reader may
    leave unread) needs a variable; otherwise a `ValueError` names `source`
    (the weight files) and the weight.
    """
    shapes = variable_shapes(config)
    names = keras_hub_variable_names(config)
    tensors = {}
    for path, name in names.items():
        if name not in variables:
            raise ValueError(
                f"{source} has no weight `{name}` for `{path}`: the weights do not match "
                "`config.json` (e.g. its `num_kv_shared_layers`, `num_experts` or "
                "`hidden_size_per_layer_input`)."
            )
        array = variables[name]
        if tuple(array.shape) != shapes[path]:
            raise ValueError(
                f"Weight `{name}` in {source} has shape {tuple(array.shape)}, but `{path}` "
                f"needs {shapes[path]}. The weights do not match `config.json`."
            )
        tensors[path] = array
    used = set(names.values())
    unused = sorted(
        name for name in variables if name not in used and not name.startswith(MEDIA_GROUPS)
    )
    if unused:
        raise ValueError(
            f"{source} holds weights this text model has no place for: "
            f"{unused[:5]}{' ...' if len(unused) > 5 else ''}. The weights do not match "
            "`config.json`, or hold LoRA or quantized variables (not supported)."
        )
    return tensors
