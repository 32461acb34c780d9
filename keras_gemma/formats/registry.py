"""The registry of named Gemma presets.

Each preset is one JSON file, `NAME.json`, holding `name`, `config` (the
`GemmaBackbone` constructor arguments), `metadata` (description, params,
family, instruction_tuned, license) and `sources` (where the weights live:
`kaggle`, `huggingface`, and for `gemma3_270m` the `embedded_gguf` package).
Generation's stop tokens are not stored: `stop_token_ids="auto"` reads
`<eos>` and `<end_of_turn>` from the vocabulary.

The files live in the repository's `presets/` directory; a wheel ships them
as package data in `keras_gemma/_presets/`. The installed location is tried
first, then the source tree.
"""

import copy
import difflib
import functools
import importlib.resources
import math
import pathlib

from keras_gemma.formats.files import parse_json
from keras_gemma.formats.variables import variable_shapes

_PACKAGE_DATA_DIR = "_presets"  # keras_gemma/_presets/*.json in a wheel.
_SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "presets"

SUGGESTION_CUTOFF = 0.6
"""How similar (difflib ratio) a name must be to a preset's to be suggested."""


def _preset_files():
    """Returns {name: (JSON text, where)} from the first location that has presets."""
    package_dir = importlib.resources.files("keras_gemma").joinpath(_PACKAGE_DATA_DIR)
    if package_dir.is_dir():
        files = [f for f in package_dir.iterdir() if f.name.endswith(".json")]
        if files:
            return {f.name[: -len(".json")]: (f.read_text("utf-8"), f) for f in files}
    if _SOURCE_DIR.is_dir():
        return {path.stem: (path.read_text("utf-8"), path) for path in _SOURCE_DIR.glob("*.json")}
    return {}


@functools.lru_cache(maxsize=None)
def _registry():
    registry = {}
    for name, (text, where) in _preset_files().items():
        entry = parse_json(text, where)
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
    return {name: copy.deepcopy(entry["metadata"]) for name, entry in sorted(_registry().items())}


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
        # difflib's default cutoff: a typo gets a suggestion, an unrelated name none.
        closest = difflib.get_close_matches(str(name), valid, n=1, cutoff=SUGGESTION_CUTOFF)
        hint = f" Did you mean {closest[0]!r}?" if closest else ""
        raise ValueError(f"Unknown preset {name!r}.{hint} Registered presets: {', '.join(valid)}.")
    return copy.deepcopy(registry[name])


def preset_config(name):
    """Returns a copy of the `GemmaBackbone` config of preset `name`."""
    return preset_info(name)["config"]


def count_parameters(config):
    """The number of weights of a `GemmaBackbone` config, without building it.

    The sum over its variables (`formats.variables`); the tied embedding
    counts once.
    """
    return sum(math.prod(shape) for shape in variable_shapes(config).values())
