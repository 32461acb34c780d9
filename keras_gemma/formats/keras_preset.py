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
nothing in the files is executed.
"""

import datetime
import json
import os
import shutil
import tempfile

import keras

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
TASK_FILE = "task.json"
OUR_REGISTERED_NAME = "keras_gemma>GemmaBackbone"


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def read_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing `{os.path.basename(path)}` in preset {os.path.dirname(path)!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`{path}` is not valid JSON: {error}") from None


def atomic_directory_write(directory, write_contents):
    """Runs `write_contents(tmp_dir)` then swaps `tmp_dir` into `directory`.

    The new preset is written next to the target and renamed into place only
    once complete; an existing preset is moved aside first and restored if the
    swap fails. A failure while writing (a full disk, an exception) leaves the
    previous preset untouched.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"Cannot save a preset to {directory!r}: it is a file.")
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.saving-", dir=parent)
    try:
        write_contents(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if os.path.exists(directory):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(backup)
        os.rename(directory, backup)
    try:
        os.rename(staging, directory)
    except BaseException:
        if backup is not None:
            os.rename(backup, directory)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _write_backbone(backbone, directory):
    from keras_gemma import __version__

    _write_json(
        os.path.join(directory, CONFIG_FILE),
        keras.saving.serialize_keras_object(backbone),
    )
    _write_json(
        os.path.join(directory, METADATA_FILE),
        {
            "keras_version": keras.__version__,
            "keras_gemma_version": __version__,
            "parameter_count": backbone.count_params(),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        },
    )
    backbone.save_weights(os.path.join(directory, WEIGHTS_FILE))


def save_backbone(backbone, directory):
    atomic_directory_write(directory, lambda staging: _write_backbone(backbone, staging))


def save_causal_lm(causal_lm, directory):
    def write(staging):
        _write_backbone(causal_lm.backbone, staging)
        _write_json(
            os.path.join(staging, TASK_FILE),
            {"class_name": "GemmaCausalLM", "registered_name": "keras_gemma>GemmaCausalLM"},
        )
        if causal_lm.preprocessor is not None:
            causal_lm.preprocessor.save_to_preset(staging)

    atomic_directory_write(directory, write)


def is_our_preset(directory):
    config = read_json(os.path.join(directory, CONFIG_FILE))
    return config.get("registered_name") == OUR_REGISTERED_NAME or config.get("module", "").startswith(
        "keras_gemma"
    )


def backbone_config(directory):
    """The `GemmaBackbone` constructor config stored in the preset."""
    config = read_json(os.path.join(directory, CONFIG_FILE))
    if config.get("registered_name") != OUR_REGISTERED_NAME or config.get("class_name") != "GemmaBackbone":
        raise ValueError(
            f"`config.json` in {directory!r} describes {config.get('registered_name') or config.get('class_name')!r}, "
            f"not {OUR_REGISTERED_NAME!r}. Only this package's classes are loaded from presets."
        )
    return dict(config["config"])


def load_backbone(directory, dtype=None):
    from keras_gemma.layers.initial_weights import weights_loaded_later
    from keras_gemma.models.gemma_backbone import GemmaBackbone

    config = backbone_config(directory)
    stored_dtype = config.pop("dtype", None)
    if isinstance(stored_dtype, dict) and stored_dtype.get("class_name") == "DTypePolicyMap":
        # A quantized model: its layers must be built quantized before loading.
        dtype = _quantized_policy_map(stored_dtype, dtype)
    elif dtype is None and isinstance(stored_dtype, dict):
        stored_dtype = keras.dtype_policies.deserialize(stored_dtype)
    config.pop("name", None)
    config.pop("trainable", None)
    with weights_loaded_later():
        backbone = GemmaBackbone(**config, dtype=dtype or stored_dtype)
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Missing `{WEIGHTS_FILE}` in preset {directory!r}.")
    try:
        backbone.load_weights(weights)
        stored = _stored_variable_count(weights)
    except Exception as error:
        raise ValueError(
            f"Cannot load `{weights}`: {type(error).__name__}: {error}. The file is damaged or "
            "does not match `config.json`."
        ) from None
    if stored != len(backbone.weights):
        # `load_weights` ignores weights the model has no place for (a
        # `config.json` with fewer layers than the file): never half-load.
        raise ValueError(
            f"Cannot load `{weights}`: it holds {stored} weights, but the model that "
            f"`config.json` describes has {len(backbone.weights)}. The file is damaged or "
            "does not match `config.json`."
        )
    return backbone


def _stored_variable_count(path):
    """Number of variables (HDF5 datasets) in a `.weights.h5` file."""
    import h5py

    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
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
