"""`from_preset` for every object: resolve the handle, then load from its format."""

import os

from keras_gemma.formats import preset as preset_files


def handle_kind(handle):
    """Which format a local handle is in; raises a clear error otherwise."""
    handle = os.fspath(handle)
    if os.path.isfile(handle):
        if handle.endswith(".gguf"):
            return preset_files.GGUF_FILE
        raise ValueError(
            f"{handle!r} is a file, but `from_preset` takes a preset name, a "
            "directory (Keras preset or transformers checkpoint), a `.gguf` file, "
            "or a `kaggle://` / `hf://` handle."
        )
    if os.path.isdir(handle):
        if os.path.isfile(os.path.join(handle, "metadata.json")) or os.path.isfile(
            os.path.join(handle, "model.weights.h5")
        ):
            return preset_files.KERAS_PRESET
        if os.path.isfile(os.path.join(handle, "config.json")):
            return preset_files.HF_CHECKPOINT
        raise FileNotFoundError(
            f"{handle!r} holds neither a Keras preset (`config.json`, "
            "`metadata.json`, `model.weights.h5`) nor a transformers checkpoint "
            "(`config.json` with `model.safetensors`)."
        )
    raise FileNotFoundError(
        f"Preset {handle!r} not found: it is not a registered preset name, a "
        "local directory or a `.gguf` file."
    )


def load_backbone(handle, dtype=None):
    kind = handle_kind(handle)
    if kind == preset_files.HF_CHECKPOINT:
        from keras_gemma.formats import transformers

        return transformers.load_backbone(handle, dtype=dtype)
    raise NotImplementedError(kind)
