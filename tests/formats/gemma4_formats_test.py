"""Gemma 4 files: the multimodal checkpoint's text part, export to transformers, Keras presets."""

import json
import os

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_gemma.testing.transformers_checkpoints import make_transformers_model  # noqa: E402
from keras_gemma.testing.transformers_checkpoints import transformers_logits  # noqa: E402

INPUTS = ragged_inputs(tiny_config("gemma4")["vocabulary_size"], length=12, padding=4)
VALID = INPUTS["padding_mask"].astype(bool)
# Tensors of the multimodal checkpoint that are not the text model: left unread by prefix.
MEDIA_TENSORS = {
    "model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight": (8, 4),
    "model.audio_tower.layers.0.feed_forward1.ffw_layer_1.linear.weight": (8, 4),
    "model.embed_vision.embedding_projection.weight": (32, 8),
}


def hf_model(family, seed):
    return make_transformers_model(tiny_config(family), seed=seed, embedding_scale=0.3)


def save_multimodal(model, directory):
    """`model` (a `Gemma4ForCausalLM`) saved as `Gemma4ForConditionalGeneration` lays it out."""
    from safetensors.numpy import save_file

    tensors = {
        "model.language_model." + name[len("model.") :]: value.detach().numpy()
        for name, value in model.state_dict().items()
        if name.startswith("model.") and "rotary_emb" not in name
    }
    for name, shape in MEDIA_TENSORS.items():
        tensors[name] = np.ones(shape, "float32")
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "gemma4",
        "architectures": ["Gemma4ForConditionalGeneration"],
        "text_config": model.config.to_dict(),
        "vision_config": {"model_type": "gemma4_vision", "hidden_size": 8},
        "audio_config": {"model_type": "gemma4_audio", "hidden_size": 8},
    }
    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(config, file)


def logits_of(lm):
    return keras.ops.convert_to_numpy(lm(INPUTS))


class TestGemma4Files(TestCase):
    def test_multimodal_checkpoint_text_part_loads(self, tmp_path):
        model = hf_model("gemma4_moe", seed=3)
        save_multimodal(model, str(tmp_path))
        expected = transformers_logits(model, INPUTS["token_ids"], INPUTS["padding_mask"])
        lm = GemmaCausalLM.from_preset(str(tmp_path))
        assert lm.backbone.num_experts == 4
        self.assert_all_close(logits_of(lm)[VALID], expected[VALID], atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("family", ["gemma4", "gemma4_moe"])
    def test_export_loads_in_transformers_with_same_logits(self, family, tmp_path):
        model = hf_model(family, seed=4)
        source, exported = tmp_path / "source", tmp_path / "exported"
        model.save_pretrained(str(source))
        lm = GemmaCausalLM.from_preset(str(source))
        lm.export_to_transformers(str(exported))
        with open(exported / "config.json") as file:
            assert json.load(file)["model_type"] == "gemma4_text"
        reloaded = transformers.Gemma4ForCausalLM.from_pretrained(str(exported)).eval()
        reloaded.config._experts_implementation = "eager"
        expected = transformers_logits(reloaded, INPUTS["token_ids"], INPUTS["padding_mask"])
        self.assert_all_close(logits_of(lm)[VALID], expected[VALID], atol=1e-4, rtol=1e-4)
        for name, value in model.state_dict().items():
            if "rotary_emb" not in name:
                np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), value.numpy())

    def test_keras_preset_round_trip(self, tmp_path):
        model = hf_model("gemma4", seed=5)
        model.save_pretrained(str(tmp_path / "source"))
        lm = GemmaCausalLM.from_preset(str(tmp_path / "source"))
        lm.save_to_preset(str(tmp_path / "preset"))
        reloaded = GemmaCausalLM.from_preset(str(tmp_path / "preset"))
        config, loaded = lm.backbone.get_config(), reloaded.backbone.get_config()
        assert {key: loaded[key] for key in config if key != "name"} == {
            key: value for key, value in config.items() if key != "name"
        }
        self.assert_all_close(logits_of(reloaded), logits_of(lm), atol=0, rtol=0)
