"""`from_preset`: objects built from the plain data that `keras_gemma.formats` reads.

`formats.loader` resolves a handle and returns a backbone's config and
weights (`BackboneData`), the vocabulary bytes and the stored preprocessor
settings; here the objects are built from them. The backbone class is passed
in by its own `from_preset` (this module sits below `gemma_backbone` in the
import graph), and is always built with `initial_weights="zeros"`: every
weight is overwritten right after.

A GGUF file is converted once and cached as a Keras preset under the cache
directory: the lossless float32 dequantization and the rebuilt vocabulary. A
model with narrower weights (bfloat16) is filled tensor by tensor straight
from the GGUF instead, so no float32 copy of the whole model ever exists;
that conversion is not cached. A damaged cache entry is converted again.
"""

import os

import keras

from keras_gemma.formats import keras_preset
from keras_gemma.formats import loader
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats.files import atomic_directory_write
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.models.weight_checks import warn_non_finite

DEFAULT_SEQUENCE_LENGTH = 1024


def assign_weights(backbone, tensors, source):
    """Assigns `{variable path: array}` to `backbone`; every variable exactly once.

    The readers in `formats/` already checked names and shapes against the
    config; this checks that they cover the model that was built from it.
    """
    variables = {variable.path: variable for variable in backbone.weights}
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(
            f"The weights in {source} do not match the model built from its config: "
            f"no weight for {missing[:5]}, no variable for {unexpected[:5]}."
        )
    for path, variable in variables.items():
        array = tensors[path]
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(
                f"The weight for `{path}` in {source} has shape {tuple(array.shape)}, but the "
                f"model needs {tuple(variable.shape)}."
            )
        variable.assign(array)


def build_backbone(backbone_class, data):
    """A `backbone_class` built from `loader.BackboneData` and filled with its weights."""
    backbone = backbone_class(**data.config, dtype=data.dtype, initial_weights="zeros")
    if data.tensors is None:
        keras_preset.load_weights(backbone, data.directory)
    else:
        assign_weights(backbone, data.tensors, data.source)
    warn_non_finite(((variable.path, variable.value) for variable in backbone.weights), data.source)
    return backbone


def load_backbone_and_proto(backbone_class, kind, path, dtype=None):
    """`(backbone, tokenizer proto or None)` of a resolved `(kind, path)`."""
    if kind == preset_files.GGUF_FILE:
        return _load_gguf(backbone_class, path, dtype)
    backbone = build_backbone(backbone_class, loader.read_backbone(kind, path, dtype))
    return backbone, loader.optional_tokenizer_proto(path)


def _load_gguf(backbone_class, path, dtype):
    """`(backbone, tokenizer proto)` of a GGUF file, through the conversion cache."""
    cached = loader.gguf_cache_path(path)
    if os.path.isfile(os.path.join(cached, keras_preset.WEIGHTS_FILE)):
        try:
            backbone, proto = load_backbone_and_proto(
                backbone_class, preset_files.KERAS_PRESET, cached, dtype
            )
            if proto is not None:
                return backbone, proto
        except (ValueError, OSError):
            pass  # A damaged cache entry is rebuilt below.
    loader.progress(f"converting {os.path.basename(path)} (first load; cached in {cached})")
    weight_dtype = "float32" if dtype is None else keras.dtype_policies.get(dtype).variable_dtype
    data, proto = loader.read_gguf_backbone(path, "float32" if weight_dtype == "float32" else dtype)
    backbone = build_backbone(backbone_class, data)
    if weight_dtype != "float32":
        return backbone, proto

    def write(staging):
        keras_preset.write_backbone(backbone, staging)
        GemmaTokenizer(proto).save_to_preset(staging)

    try:
        atomic_directory_write(cached, write, keras_preset.PRESET_FILES, overwrite=True)
    except OSError as error:  # A read-only cache only costs speed.
        loader.progress(f"could not cache the conversion ({error})")
    if dtype is not None and dtype != "float32" and os.path.isdir(cached):
        data = loader.read_backbone(preset_files.KERAS_PRESET, cached, dtype)
        backbone = build_backbone(backbone_class, data)
    return backbone, proto


def load_backbone(backbone_class, handle, dtype=None):
    """`GemmaBackbone.from_preset`."""
    kind, path, _ = loader.resolve(handle)
    return load_backbone_and_proto(backbone_class, kind, path, dtype)[0]


def load_backbone_and_preprocessor(backbone_class, handle, dtype=None, sequence_length=None):
    """`(backbone, preprocessor or None)` for `GemmaCausalLM.from_preset`.

    The preprocessor exists when the handle has a vocabulary. Its settings
    come from the preset's `preprocessor.json` when it has one;
    `sequence_length`, when given, overrides the stored one (default 1024).
    """
    kind, path, _ = loader.resolve(handle)
    backbone, proto = load_backbone_and_proto(backbone_class, kind, path, dtype)
    if proto is None:
        return backbone, None
    settings = {"sequence_length": DEFAULT_SEQUENCE_LENGTH}
    settings.update(loader.preprocessor_settings(kind, path))
    if sequence_length is not None:
        settings["sequence_length"] = sequence_length
    return backbone, GemmaCausalLMPreprocessor(GemmaTokenizer(proto), **settings)
