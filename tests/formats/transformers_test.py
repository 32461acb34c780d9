import copy
import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_gemma.formats import transformers as hf_format
from keras_gemma.formats.transformers_config import backbone_config_from_transformers
from keras_gemma.formats.transformers_config import transformers_config_from_backbone
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import FAMILIES
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

pytest.importorskip("torch")
pytest.importorskip("transformers")

from keras_gemma.testing.transformers_checkpoints import save_transformers_checkpoint  # noqa: E402
from keras_gemma.testing.transformers_checkpoints import transformers_logits  # noqa: E402

SLIDING, FULL = "sliding_attention", "full_attention"
LENGTH = 12  # Longer than the tiny configs' sliding window (4).
PADDING = 4  # Right padding of the second row.


def make_inputs(vocabulary_size):
    return ragged_inputs(vocabulary_size, length=LENGTH, padding=PADDING, seed=0)


@pytest.fixture(scope="module")
def checkpoints(transformers_checkpoint):
    """Per family: our config, the checkpoint dir, the inputs and HF's logits."""
    result = {}
    for family in FAMILIES:
        config = tiny_config(family)
        checkpoint = transformers_checkpoint(family, seed=FAMILIES.index(family))
        inputs = make_inputs(config["vocabulary_size"])
        logits = transformers_logits(checkpoint.model, inputs["token_ids"], inputs["padding_mask"])
        result[family] = {
            "config": config,
            "model": checkpoint.model,
            "directory": checkpoint.directory,
            "saved_config": checkpoint.config,
            "inputs": inputs,
            "logits": logits,
        }
    return result


def assert_logits_match(test, actual, expected, padding_mask, atol=1e-4):
    actual = keras.ops.convert_to_numpy(actual)
    valid = np.asarray(padding_mask).astype(bool)
    assert actual.shape == expected.shape
    test.assert_all_close(actual[valid], expected[valid], atol=atol, rtol=1e-4)


class TestTransformersCheckpoints(TestCase):
    def test_tiny_configs_exercise_the_features(self):
        assert tiny_config("gemma2")["query_pre_attn_scalar"] != tiny_config("gemma2")["head_dim"]
        gemma3 = tiny_config("gemma3")
        assert gemma3["query_pre_attn_scalar"] != gemma3["head_dim"]
        assert gemma3["rope_scaling_factor"] == 8.0
        assert gemma3["sliding_window_size"] < LENGTH - PADDING

    @pytest.mark.parametrize("family", FAMILIES)
    def test_logits_match_transformers(self, family, checkpoints):
        checkpoint = checkpoints[family]
        lm = GemmaCausalLM.from_preset(checkpoint["directory"])
        loaded_config = lm.backbone.get_config()
        assert {key: loaded_config[key] for key in checkpoint["config"]} == checkpoint["config"]
        logits = lm(checkpoint["inputs"])
        assert_logits_match(
            self, logits, checkpoint["logits"], checkpoint["inputs"]["padding_mask"]
        )

    def test_gemma3_layer_types_and_scaled_rope_are_used(self, checkpoints):
        """Changing Gemma 3's own layer types or its global RoPE scaling breaks
        the match: the loaded model really uses both."""
        checkpoint = checkpoints["gemma3"]
        lm = GemmaCausalLM.from_preset(checkpoint["directory"])
        for overrides in (
            {"layer_types": [SLIDING, SLIDING, SLIDING, FULL]},
            {"rope_scaling_factor": 1.0},
        ):
            other = GemmaBackbone(**dict(checkpoint["config"], **overrides))
            other.set_weights(lm.backbone.get_weights())
            logits = keras.ops.convert_to_numpy(GemmaCausalLM(other)(checkpoint["inputs"]))
            valid = checkpoint["inputs"]["padding_mask"].astype(bool)
            assert np.max(np.abs(logits[valid] - checkpoint["logits"][valid])) > 1e-3

    def test_sharded_checkpoint_loads_identically(self, checkpoints, tmp_path):
        checkpoint = checkpoints["gemma2"]
        directory = str(tmp_path / "sharded")
        save_transformers_checkpoint(checkpoint["model"], directory, max_shard_size="20KB")
        assert os.path.isfile(os.path.join(directory, hf_format.SAFETENSORS_INDEX))
        shards = [name for name in os.listdir(directory) if name.endswith(".safetensors")]
        assert len(shards) > 1
        single = GemmaBackbone.from_preset(checkpoint["directory"])
        sharded = GemmaBackbone.from_preset(directory)
        for first, second in zip(single.weights, sharded.weights):
            assert first.path == second.path
            self.assert_all_close(first, second, atol=0, rtol=0)

        # A shard listed in the index but missing from the directory.
        os.remove(os.path.join(directory, sorted(shards)[-1]))
        message = "listed in `model.safetensors.index.json` is missing"
        with pytest.raises(FileNotFoundError, match=message):
            hf_format.read_checkpoint(directory)

    def test_bfloat16_load(self, checkpoints):
        checkpoint = checkpoints["gemma3"]
        backbone = GemmaBackbone.from_preset(checkpoint["directory"], dtype="bfloat16")
        dtypes = {keras.backend.standardize_dtype(v.dtype) for v in backbone.weights}
        assert dtypes == {"bfloat16"}
        assert backbone.dtype_policy.name == "bfloat16"

    def test_bfloat16_checkpoint_file(self, checkpoints, tmp_path):
        """Weights stored as bfloat16 safetensors (as most HF repos ship them)."""
        import torch

        checkpoint = checkpoints["gemma"]
        directory = str(tmp_path / "bf16")
        # A copy: the shared checkpoint's model stays float32.
        model = copy.deepcopy(checkpoint["model"]).to(torch.bfloat16)
        save_transformers_checkpoint(model, directory)
        backbone = GemmaBackbone.from_preset(directory)
        reference = GemmaBackbone.from_preset(checkpoint["directory"])
        for loaded, full in zip(backbone.weights, reference.weights):
            self.assert_all_close(loaded, full, atol=0.02, rtol=0.01)

    def test_saved_transformers_config_maps_back(self, checkpoints):
        for family in FAMILIES:
            checkpoint = checkpoints[family]
            config = backbone_config_from_transformers(checkpoint["saved_config"])
            assert config == checkpoint["config"], family


class TestConfigRoundTrip:
    @pytest.mark.parametrize("family", FAMILIES)
    def test_config_round_trip(self, family):
        config = tiny_config(family)
        hf_config = transformers_config_from_backbone(config)
        expected_type = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}[family]
        assert hf_config["model_type"] == expected_type
        assert backbone_config_from_transformers(hf_config) == config

    def test_gemma1_query_pre_attn_scalar_is_head_dim(self):
        config = backbone_config_from_transformers(dict(GEMMA1_HF, query_pre_attn_scalar=99))
        assert config["query_pre_attn_scalar"] == config["head_dim"] == 256


GEMMA1_HF = {  # Gemma 1 2B as published (transformers 4 keys).
    "model_type": "gemma",
    "vocab_size": 256000,
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_act": "gelu",
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
}

GEMMA2_27B_HF = {  # Gemma 2 27B, transformers 4 keys (no layer_types).
    "model_type": "gemma2",
    "vocab_size": 256000,
    "hidden_size": 4608,
    "intermediate_size": 36864,
    "num_hidden_layers": 46,
    "num_attention_heads": 32,
    "num_key_value_heads": 16,
    "head_dim": 128,
    "hidden_activation": "gelu_pytorch_tanh",
    "query_pre_attn_scalar": 144,
    "sliding_window": 4096,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
}

GEMMA3_4B_TEXT_HF = {  # Gemma 3 4B text config, transformers 4 keys.
    "model_type": "gemma3_text",
    "vocab_size": 262208,
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 34,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 1024,
    "sliding_window_pattern": 6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "rms_norm_eps": 1e-06,
}


def gemma3_layer_types(num_layers):
    return [FULL if (index + 1) % 6 == 0 else SLIDING for index in range(num_layers)]


class TestConfigMapping:
    def test_gemma1_legacy_keys(self):
        config = backbone_config_from_transformers(GEMMA1_HF)
        assert config["layer_types"] == [FULL] * 18
        assert config["sliding_window_size"] is None
        assert config["rope_wavelength"] == config["local_rope_wavelength"] == 10000.0
        assert config["rope_scaling_factor"] == 1.0
        assert not config["use_post_attention_norm"] and not config["use_query_key_norm"]
        assert config["attention_logit_soft_cap"] is None
        hf_format_check(config)

    def test_gemma2_legacy_keys_derive_alternating_layers(self):
        config = backbone_config_from_transformers(GEMMA2_27B_HF)
        assert config["layer_types"] == [SLIDING, FULL] * 23
        assert config["query_pre_attn_scalar"] == 144
        assert config["sliding_window_size"] == 4096
        assert (config["attention_logit_soft_cap"], config["final_logit_soft_cap"]) == (50.0, 30.0)
        assert config["use_post_attention_norm"] and config["use_post_ffw_norm"]
        assert not config["use_query_key_norm"]
        assert config["local_rope_wavelength"] == config["rope_wavelength"] == 10000.0
        hf_format_check(config)

    def test_gemma3_legacy_rope_keys(self):
        config = backbone_config_from_transformers(GEMMA3_4B_TEXT_HF)
        assert config["layer_types"] == gemma3_layer_types(34)
        assert config["layer_types"].count(FULL) == 5
        assert config["rope_wavelength"] == 1_000_000.0
        assert config["local_rope_wavelength"] == 10_000.0
        assert config["rope_scaling_factor"] == 8.0
        assert config["use_query_key_norm"]
        hf_format_check(config)

    def test_gemma3_rope_defaults_without_rope_keys(self):
        hf_config = {
            key: value for key, value in GEMMA3_4B_TEXT_HF.items() if not key.startswith("rope_")
        }
        config = backbone_config_from_transformers(hf_config)
        assert (config["rope_wavelength"], config["local_rope_wavelength"]) == (1e6, 1e4)
        assert config["rope_scaling_factor"] == 1.0

    def test_transformers5_nested_rope_parameters(self):
        hf_config = {
            key: value
            for key, value in GEMMA3_4B_TEXT_HF.items()
            if not key.startswith("rope_") and key != "sliding_window_pattern"
        }
        hf_config["layer_types"] = [SLIDING] * 33 + [FULL]
        hf_config["rope_parameters"] = {
            FULL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
            SLIDING: {"rope_type": "default", "rope_theta": 20000.0},
        }
        config = backbone_config_from_transformers(hf_config)
        assert config["layer_types"] == [SLIDING] * 33 + [FULL]
        assert config["rope_wavelength"] == 500000.0
        assert config["local_rope_wavelength"] == 20000.0
        assert config["rope_scaling_factor"] == 4.0

    def test_transformers5_flat_rope_parameters(self):
        rope_parameters = {"rope_type": "default", "rope_theta": 5000.0}
        hf_config = dict(GEMMA2_27B_HF, rope_parameters=rope_parameters)
        del hf_config["rope_theta"]
        config = backbone_config_from_transformers(hf_config)
        assert config["rope_wavelength"] == config["local_rope_wavelength"] == 5000.0
        assert config["rope_scaling_factor"] == 1.0

    def test_gemma2_explicit_layer_types_win_over_pattern(self):
        layer_types = [FULL, SLIDING] * 23
        config = backbone_config_from_transformers(dict(GEMMA2_27B_HF, layer_types=layer_types))
        assert config["layer_types"] == layer_types

    def test_gemma3_multimodal_text_config(self):
        text_config = {k: v for k, v in GEMMA3_4B_TEXT_HF.items() if k != "model_type"}
        hf_config = {
            "model_type": "gemma3",
            "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": text_config,
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
        }
        config = backbone_config_from_transformers(hf_config)
        assert config == backbone_config_from_transformers(GEMMA3_4B_TEXT_HF)
        assert config["vocabulary_size"] == 262208

    def test_unsupported_model_type_names_allowed_values(self):
        with pytest.raises(ValueError) as info:
            backbone_config_from_transformers(dict(GEMMA1_HF, model_type="llama"))
        message = str(info.value)
        assert "'llama'" in message
        for allowed in ("gemma", "gemma2", "gemma3_text"):
            assert repr(allowed) in message

    @pytest.mark.parametrize(
        "key,value,where",
        [
            ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling"),
            ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling"),
            ("rope_parameters", {"rope_type": "llama3", "rope_theta": 1e4}, "rope_parameters"),
        ],
    )
    def test_unsupported_rope_type(self, key, value, where):
        with pytest.raises(ValueError) as info:
            backbone_config_from_transformers(dict(GEMMA2_27B_HF, **{key: value}))
        rope_type = value.get("rope_type", value.get("type"))
        assert f"Unsupported RoPE type {rope_type!r} in {where}" in str(info.value)
        assert "('default', 'linear')" in str(info.value)

    def test_scaled_rope_on_sliding_layers_is_rejected(self):
        hf_config = dict(GEMMA3_4B_TEXT_HF, layer_types=gemma3_layer_types(34))
        hf_config["rope_parameters"] = {
            FULL: {"rope_type": "default", "rope_theta": 1e6},
            SLIDING: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
        }
        with pytest.raises(ValueError, match="RoPE scaling on sliding-window layers"):
            backbone_config_from_transformers(hf_config)

    def test_exact_gelu_is_rejected_only_when_not_gemma(self):
        with pytest.raises(ValueError, match="Unsupported `hidden_activation` 'relu'"):
            backbone_config_from_transformers(dict(GEMMA1_HF, hidden_act="relu"))

    def test_untied_embeddings_are_rejected(self):
        with pytest.raises(ValueError, match="tie_word_embeddings=false"):
            backbone_config_from_transformers(dict(GEMMA1_HF, tie_word_embeddings=False))


def hf_format_check(config):
    """The mapped config passes `GemmaBackbone` validation (no weights built)."""
    from keras_gemma.models.gemma_backbone import validate_config

    validate_config(config)


class TestBadCheckpoints(TestCase):
    def test_missing_config(self, checkpoints, tmp_path):
        directory = tmp_path / "no_config"
        directory.mkdir()
        shutil.copy(os.path.join(checkpoints["gemma"]["directory"], "model.safetensors"), directory)
        with pytest.raises(FileNotFoundError, match="No `config.json` in"):
            hf_format.read_checkpoint(str(directory))
        with pytest.raises(FileNotFoundError):
            GemmaBackbone.from_preset(str(directory))

    def test_missing_weights(self, checkpoints, tmp_path):
        directory = tmp_path / "no_weights"
        directory.mkdir()
        shutil.copy(os.path.join(checkpoints["gemma"]["directory"], "config.json"), directory)
        with pytest.raises(FileNotFoundError, match="No weights in .*expected `model.safetensors`"):
            hf_format.read_checkpoint(str(directory))
        with pytest.raises(FileNotFoundError, match="No weights in"):
            GemmaBackbone.from_preset(str(directory))

    def _copy_with_config(self, checkpoints, tmp_path, **changes):
        directory = tmp_path / "edited"
        shutil.copytree(checkpoints["gemma"]["directory"], directory)
        path = directory / "config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))
        return str(directory)

    def test_unsupported_model_type(self, checkpoints, tmp_path):
        directory = self._copy_with_config(checkpoints, tmp_path, model_type="mistral")
        with pytest.raises(ValueError, match="Unsupported transformers `model_type` 'mistral'"):
            hf_format.read_checkpoint(directory)

    def test_unsupported_rope_type(self, checkpoints, tmp_path):
        directory = self._copy_with_config(
            checkpoints, tmp_path, rope_parameters={"rope_type": "yarn", "factor": 2.0}
        )
        with pytest.raises(ValueError, match="Unsupported RoPE type 'yarn'"):
            hf_format.read_checkpoint(directory)

    def test_shape_mismatch_names_the_tensor(self, checkpoints, tmp_path):
        directory = self._copy_with_config(checkpoints, tmp_path, intermediate_size=64)
        with pytest.raises(ValueError) as info:
            hf_format.read_checkpoint(directory)
        message = str(info.value)
        assert "Tensor `layers.0.mlp.gate_proj.weight`" in message
        assert "(48, 32)" in message and "(64, 32)" in message  # HF [out, in] shapes

    def test_missing_tensor_is_named(self, checkpoints, tmp_path):
        from safetensors.numpy import load_file
        from safetensors.numpy import save_file

        directory = tmp_path / "missing_tensor"
        shutil.copytree(checkpoints["gemma"]["directory"], directory)
        path = str(directory / "model.safetensors")
        tensors = load_file(path)
        del tensors["model.norm.weight"]
        save_file(tensors, path, metadata={"format": "pt"})
        with pytest.raises(ValueError, match="Tensor `model.norm.weight` is missing"):
            hf_format.read_checkpoint(str(directory))

    def test_invalid_json(self, checkpoints, tmp_path):
        directory = tmp_path / "bad_json"
        shutil.copytree(checkpoints["gemma"]["directory"], directory)
        (directory / "config.json").write_text("{not json")
        with pytest.raises(ValueError, match="is not valid JSON"):
            hf_format.read_checkpoint(str(directory))
