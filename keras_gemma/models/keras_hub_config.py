"""keras-hub's backbone arguments, read as what they mean there.

keras-hub's `GemmaBackbone` (Gemma 1 and 2) and `Gemma3Backbone` describe the
architecture with flags where `GemmaBackbone` here has data:
`use_sliding_window_attention` (sliding on even layers for Gemma 1/2, on
`i % 6 < 5` for Gemma 3) instead of `layer_types`, `query_head_dim_normalize`
instead of `query_pre_attn_scalar`, and for Gemma 1/2 an `intermediate_dim`
that is the width of BOTH feed-forward branches (twice ours). The mapping
itself is `formats.keras_hub_preset.config_from_keras_hub`, the one that
reads keras-hub preset directories.

When is a config keras-hub's? For `GemmaBackbone`, when it carries one of
keras-hub's own keys (`KERAS_HUB_KEYS`): keras-hub's `get_config()` and every
keras-hub `config.json` always hold `use_sliding_window_attention` and
`query_head_dim_normalize`, so a copied keras-hub config is always
recognized. Arguments common to both libraries alone (no such key) mean
ours: `intermediate_dim` is then one branch. For the `Gemma3Backbone` name,
keras-hub's meaning is the default, and a config with one of our own keys
(`OUR_KEYS`, as `get_config()` writes) is ours. A config mixing both is an
error, as is a vision encoder (this package is text only).
"""

import functools
import inspect

from keras_gemma.formats.keras_hub_preset import config_from_keras_hub

KERAS_HUB_KEYS = frozenset(
    {
        "query_head_dim_normalize",
        "use_sliding_window_attention",
        "local_rope_scaling_factor",
        "global_rope_scaling_factor",
        "image_size",
        "vision_encoder",
        "use_bidirectional_attention",
        "is_embedding_model",
        "pooling_intermediate_dim",
        "embedding_dim",
    }
)
OUR_KEYS = frozenset(
    {
        "layer_types",
        "query_pre_attn_scalar",
        "rope_wavelength",
        "local_rope_wavelength",
        "rope_scaling_factor",
    }
)
# Arguments that are not architecture: passed through unchanged.
_PASSED_THROUGH = ("dtype", "name", "trainable", "initial_weights")
# keras-hub's constructor defaults (0.32), per family.
_DEFAULTS = {
    "gemma": {
        "query_head_dim_normalize": True,
        "use_post_ffw_norm": False,
        "use_post_attention_norm": False,
        "use_sliding_window_attention": False,
        "sliding_window_size": 4096,
        "layer_norm_epsilon": 1e-6,
        "dropout": 0,
    },
    "gemma3": {
        "query_head_dim_normalize": True,
        "use_query_key_norm": True,
        "use_post_ffw_norm": False,
        "use_post_attention_norm": False,
        "use_sliding_window_attention": False,
        "sliding_window_size": 1024,
        "local_rope_scaling_factor": 1.0,
        "global_rope_scaling_factor": 1.0,
        "layer_norm_epsilon": 1e-6,
        "dropout": 0,
    },
}
_CLASS_NAMES = {"gemma": "GemmaBackbone", "gemma3": "Gemma3Backbone"}


def is_keras_hub_config(family, arguments):
    """Whether `arguments` (constructor keywords) are to be read as keras-hub's."""
    hub_keys = sorted(KERAS_HUB_KEYS.intersection(arguments))
    our_keys = sorted(OUR_KEYS.intersection(arguments))
    if hub_keys and our_keys:
        raise ValueError(
            f"These `{_CLASS_NAMES[family]}` arguments mix keras-hub's config keys {hub_keys} "
            f"with this package's {our_keys}. Pass one or the other: keras-hub's "
            "`use_sliding_window_attention` / `query_head_dim_normalize`, or `layer_types` / "
            "`query_pre_attn_scalar` (see the README, 'Coming from keras-hub')."
        )
    return bool(hub_keys) or (family == "gemma3" and not our_keys)


def our_arguments(family, arguments):
    """`GemmaBackbone` constructor arguments for keras-hub's `arguments` of `family`."""
    arguments = dict(arguments)
    passed = {name: arguments.pop(name) for name in _PASSED_THROUGH if name in arguments}
    vision_encoder = arguments.pop("vision_encoder", None)
    if vision_encoder is not None:
        raise ValueError(
            "`vision_encoder` must be None: keras_gemma runs Gemma's text models only. "
            f"Received: vision_encoder={vision_encoder!r}. Drop the argument (or pass None) "
            "to build the text backbone."
        )
    # Without a vision encoder these change nothing in keras-hub either.
    for name in ("image_size", "pooling_intermediate_dim", "embedding_dim"):
        arguments.pop(name, None)
    hub = dict(_DEFAULTS[family], **arguments)
    source = f"keras-hub `{_CLASS_NAMES[family]}` arguments"
    config = config_from_keras_hub(hub, family == "gemma3", source)
    unknown = sorted(set(hub) - set(_DEFAULTS[family]) - set(config) - KERAS_HUB_KEYS)
    if unknown:
        raise TypeError(f"{source}: unexpected arguments {unknown}.")
    return dict(config, **passed)


def _check_known(class_name, named, arguments):
    """TypeError for a keyword Keras' functional `Model` would silently drop (`compile=`)."""
    if not named:  # A `**kwargs` constructor: the class it calls checks.
        return
    unknown = sorted(set(arguments) - named - set(_PASSED_THROUGH))
    if unknown:
        raise TypeError(
            f"`{class_name}` got unexpected arguments {unknown}. (`compile` is an argument of "
            "`GemmaCausalLM`, the task model; a backbone is not compiled on construction.)"
        )


def accepts_keras_hub_arguments(family):
    """Decorates a backbone `__init__` so that keras-hub's arguments build the same model."""

    def decorate(init):
        signature = inspect.signature(init)
        named = set(signature.parameters) - {"self", "kwargs"}

        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            bound = signature.bind_partial(self, *args, **kwargs).arguments
            bound.pop("self")
            bound.update(bound.pop("kwargs", {}))
            if not is_keras_hub_config(family, bound):
                _check_known(type(self).__name__, named, bound)
                return init(self, *args, **kwargs)
            return init(self, **our_arguments(family, bound))

        # Keras reads the constructor's arguments with `getfullargspec`,
        # which does not follow `__wrapped__`.
        wrapper.__signature__ = signature
        return wrapper

    return decorate
