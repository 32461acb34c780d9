"""Our Keras preset directory: save (atomically) and load.

Layout (the same file names as keras-hub's presets):

    config.json          the backbone: {"module", "class_name", "config", "registered_name"}
    metadata.json        {"keras_version", "keras_gemma_version", "parameter_count", ...}
    model.weights.h5     the backbone's weights (`Model.save_weights`)
    task.json            the causal LM (present when saved from a GemmaCausalLM)
    preprocessor.json    the preprocessor settings (when it has one)
    tokenizer.json       the tokenizer settings
    assets/tokenizer/vocabulary.spm

Only classes registered by this package are deserialized (Keras safe mode);
nothing in the files is executed. The readers return plain data (configs);
`keras_gemma.models.preset_loading` builds the objects.
"""

import datetime
import errno
import math
import os

import h5py
import keras
import numpy as np

from keras_gemma._version import __version__
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats.files import atomic_directory_write
from keras_gemma.formats.files import read_json
from keras_gemma.formats.files import write_file_atomically
from keras_gemma.formats.files import write_json
from keras_gemma.formats.files import write_json_atomically

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
TASK_FILE = "task.json"
OUR_REGISTERED_NAME = "keras_gemma>GemmaBackbone"
# `save_weights`' size estimate: HDF5 adds ~3.5 KB per dataset (measured), doubled.
HDF5_BYTES_PER_DATASET = 8192
HDF5_FIXED_BYTES = 256 * 1024
# Every file a save writes: a folder holding only these is a previous preset.
PRESET_FILES = (
    CONFIG_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    TASK_FILE,
    preset_files.PREPROCESSOR_CONFIG_FILE,
    preset_files.TOKENIZER_CONFIG_FILE,
    preset_files.KERAS_TOKENIZER_ASSET,
)


# === Writing ===


def write_backbone(backbone, directory):
    """Writes `config.json`, `metadata.json` and `model.weights.h5` of a backbone.

    `backbone` is any Keras model with a serializable config; nothing here
    is atomic (callers write into a staging directory).
    """
    write_json(os.path.join(directory, CONFIG_FILE), keras.saving.serialize_keras_object(backbone))
    write_json(
        os.path.join(directory, METADATA_FILE),
        {
            "keras_version": keras.__version__,
            "keras_gemma_version": __version__,
            "parameter_count": backbone.count_params(),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        },
    )
    save_weights(backbone, os.path.join(directory, WEIGHTS_FILE))


def save_weights(model, path):
    """`model.save_weights(path)`, refused up front when the disk cannot hold the file.

    HDF5 does not survive a full disk: Keras' writer leaves its file open,
    h5py prints "Exception ignored" tracebacks for every handle it drops,
    and closing the file crashes the process (a segfault in HDF5, measured
    on a full tmpfs), taking an unsaved model with it. So the file's size is
    estimated first (the weights' bytes plus HDF5's ~3.5 KB per dataset,
    doubled) and a disk without room gives a plain `OSError(ENOSPC)` before
    HDF5 writes anything.
    """
    needed = sum(
        math.prod(variable.shape) * np.dtype(variable.dtype).itemsize + HDF5_BYTES_PER_DATASET
        for variable in model.weights
    )
    needed += HDF5_FIXED_BYTES
    disk = os.statvfs(os.path.dirname(os.path.abspath(path)))
    free = disk.f_bavail * disk.f_frsize
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: `{path}` needs about {needed / 2**20:,.1f} MiB and the "
            f"disk has {free / 2**20:,.1f} MiB free. Free some space or save elsewhere "
            "(nothing was written; a previous save there is untouched)",
        )
    model.save_weights(path)


def save_causal_lm(causal_lm, directory, overwrite=False):
    """Writes a causal LM (backbone, `task.json`, preprocessor files) atomically.

    A `directory` holding files other than a previous preset's is refused
    unless `overwrite` (see `files.atomic_directory_write`).
    """

    def write(staging):
        write_backbone(causal_lm.backbone, staging)
        write_json(
            os.path.join(staging, TASK_FILE),
            {"class_name": "GemmaCausalLM", "registered_name": "keras_gemma>GemmaCausalLM"},
        )
        if causal_lm.preprocessor is not None:
            causal_lm.preprocessor.save_to_preset(staging)

    atomic_directory_write(directory, write, PRESET_FILES, overwrite=overwrite)


def write_object_config(directory, file_name, class_name, config):
    """Writes `{"class_name", "config"}` as `directory/file_name`, atomically."""
    write_json_atomically(
        os.path.join(directory, file_name), {"class_name": class_name, "config": config}
    )


def write_tokenizer(directory, class_name, config, proto):
    """Writes `tokenizer.json` and the vocabulary asset (`assets/tokenizer/vocabulary.spm`)."""
    write_object_config(directory, preset_files.TOKENIZER_CONFIG_FILE, class_name, config)
    write_file_atomically(os.path.join(directory, preset_files.KERAS_TOKENIZER_ASSET), proto)


# === Reading ===


def is_our_preset(directory):
    config = read_json(os.path.join(directory, CONFIG_FILE))
    return config.get("registered_name") == OUR_REGISTERED_NAME or config.get(
        "module", ""
    ).startswith("keras_gemma")


def backbone_config(directory):
    """The `GemmaBackbone` constructor config stored in the preset."""
    config = read_json(os.path.join(directory, CONFIG_FILE))
    described = config.get("registered_name") or config.get("class_name")
    if described != OUR_REGISTERED_NAME or config.get("class_name") != "GemmaBackbone":
        raise ValueError(
            f"`config.json` in {directory!r} describes {described!r}, not "
            f"{OUR_REGISTERED_NAME!r}. Only this package's classes are loaded from presets."
        )
    return dict(config["config"])


def read_backbone(directory, dtype=None):
    """`(config, dtype)` to build the backbone stored in our preset `directory`.

    `config` holds the `GemmaBackbone` constructor arguments without `name`,
    `trainable` and `dtype`. `dtype` is the requested one, else the stored
    policy; a quantized model's stored `DTypePolicyMap` is kept (its layers
    must be built quantized before `load_weights`), its float parts switched
    to the requested dtype.
    """
    config = backbone_config(directory)
    stored_dtype = config.pop("dtype", None)
    config.pop("name", None)
    config.pop("trainable", None)
    if isinstance(stored_dtype, dict) and stored_dtype.get("class_name") == "DTypePolicyMap":
        return config, _quantized_policy_map(stored_dtype, dtype)
    if dtype is None and isinstance(stored_dtype, dict):
        stored_dtype = keras.dtype_policies.deserialize(stored_dtype)
    return config, dtype or stored_dtype


def load_weights(model, directory):
    """Fills `model` (a Keras model built from `read_backbone`) from `model.weights.h5`.

    Raises `ValueError` naming the file when it is damaged or holds a
    different number of weights than the model: a model is never half-loaded.
    """
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Missing `{WEIGHTS_FILE}` in preset {directory!r}.")
    try:
        model.load_weights(weights)
        stored = _stored_variable_count(weights)
    except Exception as error:
        raise ValueError(
            f"Cannot load `{weights}`: {type(error).__name__}: {error}. The file is damaged or "
            "does not match `config.json`."
        ) from None
    if stored != len(model.weights):
        # `load_weights` ignores weights the model has no place for (a
        # `config.json` with fewer layers than the file): never half-load.
        raise ValueError(
            f"Cannot load `{weights}`: it holds {stored} weights, but the model that "
            f"`config.json` describes has {len(model.weights)}. The file is damaged or "
            "does not match `config.json`."
        )


def _stored_variable_count(path):
    """Number of variables (HDF5 datasets) in a `.weights.h5` file."""
    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None
        )
    return len(datasets)


def _quantized_policy_map(stored, dtype):
    """The stored `DTypePolicyMap`, its float parts switched to `dtype` if given.

    Quantized layers keep their mode (int8, int4); their unquantized
    computations and the other layers use `dtype` ("float32", "bfloat16").
    """
    if dtype is not None:
        name = keras.dtype_policies.get(dtype).name
        config = dict(stored["config"])
        config["default_policy"] = name
        config["policy_map"] = {
            path: dict(entry, config=dict(entry["config"], source_name=name))
            for path, entry in config["policy_map"].items()
        }
        stored = dict(stored, config=config)
    return keras.dtype_policies.deserialize(stored)
