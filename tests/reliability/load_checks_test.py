"""A load checks every tensor and config field first (issue 19, cases 5, 10 and 11).

5. Tensors the config has no place for (a checkpoint with more layers than
   `config.json` says, a GGUF whose `block_count` was lowered) are an error
   naming them, not a model silently built from the first layers.
10. Damaged configs give a `ValueError` naming the file and the key, never a
   raw `AttributeError` / `KeyError` / `ZeroDivisionError`.
11. A config too large for this machine is refused, with the estimate,
   before any weight is allocated.
"""

import json
import os
import shutil

import numpy as np
import pytest

from keras_gemma.formats import loader
from keras_gemma.models import weight_checks as memory_check
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.gguf_files import write_tiny_gguf


@pytest.fixture(scope="module")
def hf_checkpoint(tiny_lm, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("load_checks") / "hf")
    tiny_lm.export_to_transformers(directory)
    return directory


@pytest.fixture
def hf_copy(hf_checkpoint, tmp_path):
    directory = str(tmp_path / "hf")
    shutil.copytree(hf_checkpoint, directory)
    return directory


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def edit_json(path, change):
    with open(path) as file:
        value = json.load(file)
    value = change(value)
    with open(path, "w") as file:
        json.dump(value, file)


def write_bytes(path, data):
    with open(path, "wb") as file:
        file.write(data)


# === Case 5: tensors the config has no place for ===


def test_a_checkpoint_with_more_layers_than_its_config_is_refused(hf_copy):
    def drop_last_layer(config):
        config["num_hidden_layers"] -= 1
        config["layer_types"] = config["layer_types"][:-1]
        return config

    edit_json(os.path.join(hf_copy, "config.json"), drop_last_layer)
    with pytest.raises(ValueError, match="tensors that its config has no place for") as raised:
        GemmaCausalLM.from_preset(hf_copy)
    message = str(raised.value)
    assert hf_copy in message and "`num_hidden_layers` in `config.json`" in message
    assert "layers.3." in message  # tiny_lm has 4 layers; the config now says 3.


def test_a_gguf_with_block_count_lowered_is_refused(tmp_path, gguf_cache):
    path = str(tmp_path / "lowered.gguf")
    write_tiny_gguf(path, architecture="gemma", num_layers=2, extra={"block_count": 1})
    with pytest.raises(ValueError, match="its GGUF key `block_count` says 1 layers") as raised:
        GemmaCausalLM.from_preset(path)
    assert path in str(raised.value) and "layers.1." in str(raised.value)
    converted = gguf_cache / "converted"
    assert not converted.exists() or not os.listdir(converted)


def test_the_same_gguf_with_its_true_block_count_loads(tmp_path, gguf_cache):
    path = str(tmp_path / "true.gguf")
    write_tiny_gguf(path, architecture="gemma", num_layers=2)
    assert GemmaCausalLM.from_preset(path).backbone.num_layers == 2


# === Case 10: damaged configs ===


def test_config_json_that_is_a_json_list(hf_copy, preset_copy):
    for directory in (hf_copy, preset_copy):
        path = os.path.join(directory, "config.json")
        write_bytes(path, b"[1, 2, 3]")
        with pytest.raises(ValueError, match="holds a JSON list, but a JSON object") as raised:
            GemmaCausalLM.from_preset(directory)
        assert path in str(raised.value)


def test_binary_config_json(hf_copy):
    path = os.path.join(hf_copy, "config.json")
    write_bytes(path, b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match="is not valid JSON") as raised:
        GemmaCausalLM.from_preset(hf_copy)
    assert path in str(raised.value)


@pytest.mark.parametrize(
    "index,message",
    [
        (b"{not json", "is not valid JSON"),
        (json.dumps({"weight_map": ["model.safetensors"]}).encode(), "needs a `weight_map` object"),
        (json.dumps({"metadata": {}}).encode(), "needs a `weight_map` object"),
    ],
    ids=["invalid_json", "weight_map_list", "no_weight_map"],
)
def test_damaged_safetensors_index(index, message, hf_copy):
    path = os.path.join(hf_copy, "model.safetensors.index.json")
    write_bytes(path, index)
    with pytest.raises(ValueError, match=message) as raised:
        GemmaCausalLM.from_preset(hf_copy)
    assert path in str(raised.value)


@pytest.mark.parametrize(
    "key,value", [("intermediate_size", None), ("num_attention_heads", 0), ("vocab_size", "400")]
)
def test_config_json_missing_or_bad_required_field(key, value, hf_copy):
    def change(config):
        if value is None:
            del config[key]
        else:
            config[key] = value
        return config

    edit_json(os.path.join(hf_copy, "config.json"), change)
    with pytest.raises(ValueError, match=f"`{key}`") as raised:
        GemmaCausalLM.from_preset(hf_copy)
    assert os.path.join(hf_copy, "config.json") in str(raised.value)


@pytest.mark.parametrize(
    "key,value",
    [
        ("attention.head_count", 0),
        ("block_count", 0),
        ("embedding_length", 0),
        ("attention.head_count_kv", 0),
        ("feed_forward_length", 0),
    ],
)
def test_gguf_with_a_zero_size_names_the_gguf_key(key, value, tmp_path, gguf_cache):
    path = str(tmp_path / "bad.gguf")
    write_tiny_gguf(path, architecture="gemma", num_layers=1, extra={key: value})
    with pytest.raises(ValueError, match=f"'gemma.{key}' = 0; it must be a positive") as raised:
        GemmaCausalLM.from_preset(path)
    assert path in str(raised.value)


def test_gguf_heads_not_a_multiple_of_key_value_heads(tmp_path, gguf_cache):
    path = str(tmp_path / "bad.gguf")
    write_tiny_gguf(path, architecture="gemma", num_layers=1, extra={"attention.head_count_kv": 3})
    with pytest.raises(ValueError, match="'gemma.attention.head_count' = 2, not a multiple of"):
        GemmaCausalLM.from_preset(path)


# === Case 11: a model too large for the machine ===


def huge_config():
    layers = 80
    return tiny_config(
        "gemma3",
        hidden_dim=32768,
        intermediate_dim=131072,
        num_layers=layers,
        layer_types=["full_attention"] * layers,
        sliding_window_size=None,
    )


def test_the_parameter_estimate_is_the_models_own_count(tiny_lm):
    config = tiny_lm.backbone.get_config()
    assert memory_check.parameter_count(config) == tiny_lm.backbone.count_params()


def test_a_config_too_large_for_the_machine_is_refused_before_allocating():
    config = huge_config()
    count = memory_check.parameter_count(config)
    assert count > 10**12
    with pytest.raises(ValueError, match=f"a model of {count:,} parameters: about") as raised:
        GemmaBackbone(**config)
    gibibytes = count * 4 / 2**30
    assert f"{gibibytes:,.1f} GiB for the weights alone" in str(raised.value)
    assert "more than this machine's" in str(raised.value)


def test_a_preset_asking_for_too_many_parameters_is_refused(preset_copy):
    def enlarge(stored):
        stored["config"].update(
            {key: value for key, value in huge_config().items() if key in stored["config"]}
        )
        return stored

    edit_json(os.path.join(preset_copy, "config.json"), enlarge)
    with pytest.raises(ValueError, match="more than this machine's"):
        GemmaCausalLM.from_preset(preset_copy)


def test_a_large_but_possible_config_is_not_refused(monkeypatch):
    # The estimate only refuses what cannot fit: the same config on a
    # machine with more memory than it needs passes the check.
    config = huge_config()
    needed = memory_check.parameter_count(config) * 4
    monkeypatch.setattr(memory_check, "physical_memory_bytes", lambda: needed + 1)
    memory_check.check_model_fits(config, "float32")
    with pytest.raises(ValueError):
        memory_check.check_model_fits(config, np.dtype("float64").name)
