"""Loading bad, broken and hostile files: clear errors, no code run, nothing half-loaded.

Every case asserts the exact error type, a fragment of the message naming the
problem, and the file or directory involved. Hostile files carry payloads
that would write a marker file if anything in them were executed (a pickle,
a Keras lambda, an importable module); the marker never appears.
"""

import json
import os
import pathlib
import pickle
import shutil
import sys

import h5py
import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma.formats import loader
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.gguf_files import write_tiny_gguf
from keras_gemma.testing.models import logits_of

ALL_CLASSES = [GemmaCausalLM, GemmaBackbone, GemmaTokenizer, GemmaCausalLMPreprocessor]


class _TouchOnUnpickle:
    """Unpickling this object creates `path` (`pathlib.Path(path).touch()`)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def live_pickle(marker):
    """Pickle bytes that create `marker` when loaded; checked live here."""
    payload = pickle.dumps({"weight": _TouchOnUnpickle(marker)})
    pickle.loads(payload)  # The payload really runs code...
    assert os.path.exists(marker)
    os.remove(marker)  # ...so its absence later proves nothing unpickled it.
    return payload


def read_config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def write_config(directory, config):
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def truncate(path, fraction):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture(scope="session")
def hf_checkpoint(tiny_lm, tmp_path_factory):
    """`tiny_lm` exported as a transformers checkpoint (read-only)."""
    directory = str(tmp_path_factory.mktemp("reliability_hf") / "hf")
    tiny_lm.export_to_transformers(directory)
    return directory


@pytest.fixture
def hf_copy(hf_checkpoint, tmp_path):
    directory = str(tmp_path / "hf")
    shutil.copytree(hf_checkpoint, directory)
    return directory


# === Handles that point at nothing ===


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_nonexistent_path(cls, tmp_path):
    path = str(tmp_path / "no" / "such" / "preset")
    with pytest.raises(FileNotFoundError, match="not found") as info:
        cls.from_preset(path)
    assert path in str(info.value)


def test_nonexistent_gguf(tmp_path):
    path = str(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        GemmaCausalLM.from_preset(path)
    assert path in str(info.value)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_unknown_preset_name_lists_valid_names(cls):
    with pytest.raises(ValueError, match="Unknown preset 'gemma3_270m_typo'") as info:
        cls.from_preset("gemma3_270m_typo")
    message = str(info.value)
    assert "Did you mean 'gemma3_270m'" in message
    for name in keras_gemma.list_presets():
        assert name in message


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is empty") as info:
        GemmaCausalLM.from_preset(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_directory_of_unrelated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="holds neither a Keras preset") as info:
        GemmaCausalLM.from_preset(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_a_file_that_is_not_a_preset(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="is a file, but `from_preset` takes") as info:
        GemmaCausalLM.from_preset(str(path))
    assert str(path) in str(info.value)


# === Keras preset directories with missing or damaged files ===


def test_missing_config_json(preset_copy):
    os.remove(os.path.join(preset_copy, "config.json"))
    with pytest.raises(FileNotFoundError, match="Missing `config.json` in preset") as info:
        GemmaCausalLM.from_preset(preset_copy)
    assert preset_copy in str(info.value)


def test_missing_weights(preset_copy):
    os.remove(os.path.join(preset_copy, "model.weights.h5"))
    with pytest.raises(FileNotFoundError, match="Missing `model.weights.h5` in preset") as info:
        GemmaCausalLM.from_preset(preset_copy)
    assert preset_copy in str(info.value)


def test_missing_tokenizer(preset_copy):
    shutil.rmtree(os.path.join(preset_copy, "assets"))
    # Documented: the model loads without a preprocessor (ids in, ids out)...
    assert GemmaCausalLM.from_preset(preset_copy).preprocessor is None
    # ...and whatever needs the vocabulary says where it looked.
    for cls in (GemmaTokenizer, GemmaCausalLMPreprocessor):
        with pytest.raises(FileNotFoundError, match="No SentencePiece vocabulary found") as info:
            cls.from_preset(preset_copy)
        assert preset_copy in str(info.value)


def test_config_json_not_json(preset_copy):
    with open(os.path.join(preset_copy, "config.json"), "w") as f:
        f.write('{"module": "keras_gemma", "config": {')
    with pytest.raises(ValueError, match="is not valid JSON") as info:
        GemmaCausalLM.from_preset(preset_copy)
    assert os.path.join(preset_copy, "config.json") in str(info.value)


H5_DAMAGE = {
    "truncated_to_half": lambda path: truncate(path, 0.5),
    "truncated_to_8_bytes": lambda path: truncate(path, 8 / os.path.getsize(path)),
    "empty_file": lambda path: truncate(path, 0.0),
    "superblock_zeroed": lambda path: overwrite(path, 0, b"\x00" * 64),
    "metadata_garbled": lambda path: overwrite(path, 96, b"\xff" * 512),
}


@pytest.mark.parametrize("damage", sorted(H5_DAMAGE))
def test_damaged_h5_weights(damage, preset_copy):
    weights = os.path.join(preset_copy, "model.weights.h5")
    H5_DAMAGE[damage](weights)
    with pytest.raises(
        ValueError, match="The file is damaged or does not match `config.json`"
    ) as info:
        GemmaCausalLM.from_preset(preset_copy)
    assert weights in str(info.value)


@pytest.mark.parametrize(
    "field,value",
    [("hidden_dim", 16), ("num_layers", 2), ("intermediate_dim", 64), ("vocabulary_size", 300)],
)
def test_weights_that_do_not_match_the_config(field, value, preset_copy):
    config = read_config(preset_copy)
    config["config"][field] = value
    if field == "num_layers":
        config["config"]["layer_types"] = config["config"]["layer_types"][:value]
    write_config(preset_copy, config)
    with pytest.raises(ValueError, match="does not match `config.json`") as info:
        GemmaBackbone.from_preset(preset_copy)
    assert os.path.join(preset_copy, "model.weights.h5") in str(info.value)


def test_invalid_config_values_in_a_preset(preset_copy):
    config = read_config(preset_copy)
    config["config"]["num_key_value_heads"] = 3
    write_config(preset_copy, config)
    with pytest.raises(
        ValueError, match="`num_query_heads` must be a multiple of `num_key_value_heads`"
    ):
        GemmaBackbone.from_preset(preset_copy)


# === Hostile configs: classes from outside this package ===

HOSTILE_CLASSES = {
    "os_system": {"module": "os", "class_name": "system", "registered_name": "os>system"},
    "builtins_eval": {
        "module": "builtins",
        "class_name": "eval",
        "registered_name": "builtins>eval",
    },
    "our_name_foreign_class": {
        "module": "keras_gemma.models.gemma_backbone",
        "class_name": "system",
        "registered_name": "os>system",
    },
    "keras_hub_lookalike": {
        "module": "keras_hub.src.models.gemma.gemma_backbone",
        "class_name": "system",
        "registered_name": "keras_hub>os.system",
    },
}


@pytest.fixture
def canary_module(tmp_path, monkeypatch):
    """An importable module `reliability_canary` that writes a marker when imported."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "reliability_canary.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "def system(*args, **kwargs):\n    pathlib.Path(" + repr(str(marker)) + ").touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("reliability_canary", None)


@pytest.mark.parametrize("name", sorted(HOSTILE_CLASSES))
def test_config_naming_a_foreign_class_is_refused(name, preset_copy, canary_module):
    config = read_config(preset_copy)
    config.update(HOSTILE_CLASSES[name])
    config["config"] = dict(config["config"], command=f"touch {canary_module}")
    write_config(preset_copy, config)
    with pytest.raises(ValueError) as info:
        GemmaCausalLM.from_preset(preset_copy)
    message = str(info.value)
    assert HOSTILE_CLASSES[name]["registered_name"] in message
    assert preset_copy in message
    assert not canary_module.exists()


def test_foreign_module_is_never_imported(preset_copy, canary_module):
    """Our class name with a foreign `module`: the class is ours, the module never imported."""
    config = read_config(preset_copy)
    config["module"] = "reliability_canary"
    write_config(preset_copy, config)
    backbone = GemmaBackbone.from_preset(preset_copy)
    assert type(backbone) is GemmaBackbone
    assert "reliability_canary" not in sys.modules
    assert not canary_module.exists()


@pytest.mark.parametrize(
    "dtype",
    [
        {
            "module": "reliability_canary",
            "class_name": "system",
            "config": {"name": "float32"},
            "registered_name": "reliability_canary>system",
        },
        {"module": "keras.layers", "class_name": "Lambda", "config": {"function": "system"}},
        {
            "class_name": "__lambda__",
            "config": {"code": "ZmFrZQ==", "defaults": None, "closure": None},
        },
        {
            "class_name": "DTypePolicyMap",
            "config": {
                "default_policy": "float32",
                "policy_map": {
                    "token_embedding": {
                        "module": "reliability_canary",
                        "class_name": "system",
                        "config": {},
                    }
                },
            },
        },
    ],
    ids=["foreign_module", "keras_lambda_layer", "raw_lambda", "policy_map_with_foreign_entry"],
)
def test_hostile_dtype_in_config(dtype, preset_copy, canary_module):
    config = read_config(preset_copy)
    config["config"]["dtype"] = dtype
    write_config(preset_copy, config)
    with pytest.raises((ValueError, TypeError)):
        GemmaBackbone.from_preset(preset_copy)
    assert "reliability_canary" not in sys.modules
    assert not canary_module.exists()


def test_keras_hub_lookalike_with_hostile_dtype_reads_config_as_data(preset_copy, canary_module):
    """A keras-hub `config.json` is mapped field by field; nothing in it is deserialized."""
    ours = read_config(preset_copy)["config"]
    hub = {
        "module": "keras_hub.src.models.gemma3.gemma3_backbone",
        "class_name": "Gemma3Backbone",
        "registered_name": "keras_hub>Gemma3Backbone",
        "config": {
            "vocabulary_size": ours["vocabulary_size"],
            "num_layers": 4,
            "num_query_heads": 4,
            "num_key_value_heads": 1,
            "hidden_dim": 32,
            "intermediate_dim": 48,
            "head_dim": 8,
            "dtype": {
                "module": "reliability_canary",
                "class_name": "system",
                "config": {"command": "touch"},
                "registered_name": "reliability_canary>system",
            },
        },
    }
    write_config(preset_copy, hub)
    # Our weights file has no keras-hub layer names: refused as data, by name.
    with pytest.raises(ValueError, match="keras-hub preset .* has no single weight for") as info:
        GemmaBackbone.from_preset(preset_copy)
    assert preset_copy in str(info.value)
    assert "reliability_canary" not in sys.modules
    assert not canary_module.exists()


def test_keras_file_with_a_lambda_is_refused_in_safe_mode(tmp_path):
    """Keras' own safe mode, which our loaders rely on never to be switched off."""
    marker = str(tmp_path / "LAMBDA_RAN")
    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(
        lambda x, p=marker: (__import__("pathlib").Path(p).touch(), x)[1]
    )(inputs)
    path = str(tmp_path / "hostile.keras")
    keras.Model(inputs, outputs).save(path)
    os.remove(marker)  # Building the model called the lambda once: it is live.
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path)
    with pytest.raises(ValueError, match="is a file"):
        GemmaCausalLM.from_preset(path)
    assert not os.path.exists(marker)


# === Pickles where weights should be ===


def test_pickle_in_h5_weights_is_not_unpickled(preset_copy, tmp_path):
    marker = str(tmp_path / "UNPICKLED")
    payload = live_pickle(marker)
    weights = os.path.join(preset_copy, "model.weights.h5")
    with h5py.File(weights, "r+") as f:
        datasets = []
        f.visititems(
            lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None
        )
        target = datasets[0]
        del f[target]
        f[target] = np.void(payload)  # Opaque bytes: the pickle itself.
        f.attrs["pickle"] = np.void(payload)
    with pytest.raises(ValueError, match="damaged or does not match") as info:
        GemmaBackbone.from_preset(preset_copy)
    assert weights in str(info.value)
    assert not os.path.exists(marker)


def test_pickle_weights_next_to_a_transformers_config_are_ignored(hf_copy, tmp_path):
    """`pytorch_model.bin` is a pickle: only safetensors are read."""
    marker = str(tmp_path / "UNPICKLED")
    payload = live_pickle(marker)
    os.remove(os.path.join(hf_copy, "model.safetensors"))
    with open(os.path.join(hf_copy, "pytorch_model.bin"), "wb") as f:
        f.write(payload)
    with pytest.raises(
        FileNotFoundError, match="No weights in .* expected `model.safetensors`"
    ) as info:
        GemmaCausalLM.from_preset(hf_copy)
    assert hf_copy in str(info.value)
    assert not os.path.exists(marker)


def test_pickle_inside_safetensors_is_just_bytes(hf_copy, tmp_path):
    from safetensors.numpy import save_file

    marker = str(tmp_path / "UNPICKLED")
    payload = live_pickle(marker)
    tensors = {"model.embed_tokens.weight": np.frombuffer(payload, np.uint8).copy()}
    save_file(
        tensors, os.path.join(hf_copy, "model.safetensors"), metadata={"pickle": payload.hex()}
    )
    with pytest.raises(
        ValueError, match=r"Tensor `embed_tokens.weight` .* has shape \(\d+,\)"
    ) as info:
        GemmaBackbone.from_preset(hf_copy)
    assert hf_copy in str(info.value)
    assert not os.path.exists(marker)


# === Transformers checkpoints ===


def test_hf_checkpoint_loads(hf_checkpoint, tiny_lm):
    """The fixture itself is good: the damage below is what breaks it."""
    np.testing.assert_allclose(
        logits_of(GemmaCausalLM.from_preset(hf_checkpoint)), logits_of(tiny_lm), atol=1e-5
    )


SAFETENSORS_DAMAGE = {
    "truncated_to_half": lambda path: truncate(path, 0.5),
    "truncated_inside_header": lambda path: truncate(path, 20 / os.path.getsize(path)),
    "empty_file": lambda path: truncate(path, 0.0),
    "header_length_huge": lambda path: overwrite(path, 0, (2**62).to_bytes(8, "little")),
    "header_json_garbled": lambda path: overwrite(path, 8, b"\x00\xff{{{"),
}


@pytest.mark.parametrize("damage", sorted(SAFETENSORS_DAMAGE))
def test_damaged_safetensors(damage, hf_copy):
    weights = os.path.join(hf_copy, "model.safetensors")
    SAFETENSORS_DAMAGE[damage](weights)
    with pytest.raises(ValueError, match="Cannot read") as info:
        GemmaCausalLM.from_preset(hf_copy)
    assert weights in str(info.value)


def test_safetensors_with_a_tensor_of_the_wrong_shape(hf_copy):
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    path = os.path.join(hf_copy, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.1.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"][
        :, :40
    ]
    save_file(tensors, path)
    with pytest.raises(
        ValueError, match=r"Tensor `layers.1.mlp.down_proj.weight` .* has shape \(32, 40\)"
    ) as info:
        GemmaBackbone.from_preset(hf_copy)
    assert hf_copy in str(info.value)


@pytest.mark.parametrize("model_type", ["llama", "", None, "GEMMA", "gemma3_vision"])
def test_unknown_model_type(model_type, hf_copy):
    config = read_config(hf_copy)
    config["model_type"] = model_type
    write_config(hf_copy, config)
    with pytest.raises(ValueError, match=f"Unsupported transformers `model_type` {model_type!r}"):
        GemmaBackbone.from_preset(hf_copy)


def test_unknown_model_type_names_the_checkpoint(hf_copy):
    config = read_config(hf_copy)
    config["model_type"] = "llama"
    write_config(hf_copy, config)
    with pytest.raises(ValueError) as info:
        GemmaBackbone.from_preset(hf_copy)
    assert hf_copy in str(info.value)


# === GGUF files ===


def tiny_gguf(path, tensor_shapes=None):
    """A 1-layer Gemma GGUF with a byte-fallback vocabulary of 263 tokens; returns `path`."""
    write_tiny_gguf(path, architecture="gemma", num_layers=1, tensor_shapes=tensor_shapes)
    return path


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(loader.CACHE_ENV, str(cache))
    return cache


def converted_entries(cache):
    converted = cache / "converted"
    return sorted(os.listdir(converted)) if converted.exists() else []


def test_tiny_gguf_loads(tmp_path, gguf_cache):
    """The fixture itself is good (and gets cached): the damage below is what breaks it."""
    path = tiny_gguf(str(tmp_path / "tiny.gguf"))
    lm = GemmaCausalLM.from_preset(path)
    assert lm.backbone.num_layers == 1 and lm.preprocessor is not None
    assert len(converted_entries(gguf_cache)) == 1


GGUF_DAMAGE = {
    "truncated_tensor_data": (lambda path: truncate(path, 0.9), "is truncated: tensor"),
    "truncated_header": (
        lambda path: truncate(path, 200 / os.path.getsize(path)),
        "is truncated: needs",
    ),
    "wrong_magic": (lambda path: overwrite(path, 0, b"GGML"), "is not a GGUF file"),
    "version_99": (
        lambda path: overwrite(path, 4, (99).to_bytes(4, "little")),
        "version 99 is not supported",
    ),
    "garbled_value_type": (
        lambda path: overwrite(path, 24 + 8 + len("general.architecture"), b"\xee\x00\x00\x00"),
        "is corrupt: its header could not be parsed",
    ),
}


@pytest.mark.parametrize("damage", sorted(GGUF_DAMAGE))
def test_damaged_gguf(damage, tmp_path, gguf_cache):
    path = tiny_gguf(str(tmp_path / "tiny.gguf"))
    corrupt, message = GGUF_DAMAGE[damage]
    corrupt(path)
    with pytest.raises(ValueError, match=message) as info:
        GemmaCausalLM.from_preset(path)
    assert path in str(info.value)
    assert converted_entries(gguf_cache) == []  # No half-converted model cached.


@pytest.mark.parametrize(
    "shapes,message",
    [
        (
            {"token_embd.weight": (100, 8)},
            "has 263 vocabulary tokens but its token embedding has only 100 rows",
        ),
        (
            {"blk.0.attn_q.weight": (12, 8)},
            r"Tensor `layers.0.self_attn.q_proj.weight` .* has shape",
        ),
        (
            {"blk.0.ffn_down.weight": (8, 20)},
            r"Tensor `layers.0.mlp.down_proj.weight` .* has shape",
        ),
    ],
    ids=["embedding_rows", "query_heads", "ffn_width"],
)
def test_gguf_with_shapes_that_do_not_match_its_metadata(shapes, message, tmp_path, gguf_cache):
    path = tiny_gguf(str(tmp_path / "tiny.gguf"), shapes)
    with pytest.raises(ValueError, match=message) as info:
        GemmaCausalLM.from_preset(path)
    assert path in str(info.value)
    assert converted_entries(gguf_cache) == []
