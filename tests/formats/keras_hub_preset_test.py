"""keras-hub 0.32 presets (Gemma 1, 2 and 3 text) load into our classes with identical logits.

keras-hub only builds the reference models here; `keras_gemma` never imports it.
"""

import json
import os

import keras
import numpy as np
import pytest

from keras_gemma.formats import keras_hub_preset
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats.loader import handle_kind
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.models import assign_scaled_random_weights
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

keras_hub = pytest.importorskip("keras_hub")

VOCABULARY_SIZE = 400  # build_tiny_vocabulary's default size.
LENGTH = 12  # Longer than the sliding windows (4).
COMMON = dict(
    vocabulary_size=VOCABULARY_SIZE,
    num_query_heads=4,
    hidden_dim=32,
    head_dim=8,
    layer_norm_epsilon=1e-6,
)
# All three use `query_head_dim_normalize=True`: keras-hub's decoder blocks
# always scale queries by head_dim ** -0.5 (they drop the flag), so only with
# it is keras-hub itself right; the flag's other value is tested on the
# config mapping below.
KERAS_HUB_CONFIGS = {
    "gemma": dict(COMMON, num_layers=2, num_key_value_heads=1, intermediate_dim=96),
    "gemma2": dict(
        COMMON,
        num_layers=4,
        num_key_value_heads=2,
        intermediate_dim=96,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=5.0,
        final_logit_soft_cap=3.0,
        use_sliding_window_attention=True,
        sliding_window_size=4,
    ),
    "gemma3": dict(
        COMMON,
        image_size=16,
        num_layers=7,  # Layers 0-4 and 6 slide, layer 5 is global.
        num_key_value_heads=1,
        intermediate_dim=48,
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=4,
        global_rope_scaling_factor=8.0,
    ),
}


def make_inputs():
    return ragged_inputs(VOCABULARY_SIZE, length=LENGTH, padding=3, seed=0)


@pytest.fixture(scope="module")
def presets(tmp_path_factory, vocabulary_path):
    """Per family: the keras-hub preset dir, its logits on `make_inputs()`."""
    inputs = make_inputs()
    result = {}
    for seed, (family, config) in enumerate(KERAS_HUB_CONFIGS.items()):
        directory = str(tmp_path_factory.mktemp(f"keras_hub_{family}"))
        if family == "gemma3":
            backbone = keras_hub.models.Gemma3Backbone(**config)
        else:
            backbone = keras_hub.models.GemmaBackbone(**config)
        assign_scaled_random_weights(backbone, seed)
        hidden = backbone(inputs)
        logits = backbone.token_embedding(hidden, reverse=True)
        if family == "gemma":
            # A whole task with its preprocessor, as Kaggle presets have.
            tokenizer = keras_hub.models.GemmaTokenizer(proto=vocabulary_path)
            preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=24)
            keras_hub.models.GemmaCausalLM(
                backbone=backbone, preprocessor=preprocessor
            ).save_to_preset(directory)
        else:
            backbone.save_to_preset(directory)
        result[family] = {
            "directory": directory,
            "logits": keras.ops.convert_to_numpy(logits),
            "inputs": inputs,
            "vocabulary": vocabulary_path,
        }
    return result


class TestKerasHubPresets(TestCase):
    @pytest.mark.parametrize("family", list(KERAS_HUB_CONFIGS))
    def test_logits_equal_keras_hub(self, family, presets):
        preset = presets[family]
        assert handle_kind(preset["directory"]) == preset_files.KERAS_HUB_PRESET
        lm = GemmaCausalLM.from_preset(preset["directory"])
        logits = keras.ops.convert_to_numpy(lm(preset["inputs"]))
        valid = preset["inputs"]["padding_mask"].astype(bool)
        self.assert_all_close(logits[valid], preset["logits"][valid], atol=1e-5, rtol=1e-5)
        # The logits are far from trivial: random weights, all terms active.
        assert np.std(preset["logits"][valid]) > 0.1

    def test_mapped_configs(self, presets):
        gemma2, _ = keras_hub_preset.backbone_config(presets["gemma2"]["directory"])
        assert gemma2["intermediate_dim"] == 48  # keras-hub's 96 is both branches.
        assert gemma2["layer_types"] == ["sliding_attention", "full_attention"] * 2
        assert (gemma2["attention_logit_soft_cap"], gemma2["final_logit_soft_cap"]) == (5.0, 3.0)
        gemma3, dtype = keras_hub_preset.backbone_config(presets["gemma3"]["directory"])
        assert dtype == "float32"
        assert gemma3["intermediate_dim"] == 48  # Gemma3Backbone's is one branch.
        assert gemma3["layer_types"] == ["sliding_attention"] * 5 + [
            "full_attention",
            "sliding_attention",
        ]
        assert (gemma3["rope_wavelength"], gemma3["local_rope_wavelength"]) == (1e6, 1e4)
        assert gemma3["rope_scaling_factor"] == 8.0
        assert gemma3["use_query_key_norm"] and gemma3["sliding_window_size"] == 4

    def test_query_head_dim_normalize_false_means_hidden_over_heads(self, presets, tmp_path):
        """Gemma 2 27B / Gemma 3 27B (keras-hub ignores the flag; the weights need it)."""
        source = presets["gemma2"]["directory"]
        with open(os.path.join(source, "config.json")) as file:
            stored = json.load(file)
        stored["config"].update(query_head_dim_normalize=False, hidden_dim=48)
        os.makedirs(tmp_path / "p")
        with open(tmp_path / "p" / "config.json", "w") as file:
            json.dump(stored, file)
        config, _ = keras_hub_preset.backbone_config(str(tmp_path / "p"))
        assert config["query_pre_attn_scalar"] == 48 // 4

    def test_tokenizer_and_preprocessor(self, presets):
        directory = presets["gemma"]["directory"]
        tokenizer = GemmaTokenizer.from_preset(directory)
        reference = GemmaTokenizer(proto=presets["gemma"]["vocabulary"])
        assert tokenizer("the capital of France") == reference("the capital of France")
        preprocessor = GemmaCausalLMPreprocessor.from_preset(directory)
        assert preprocessor.sequence_length == 24  # From keras-hub's preprocessor.json.
        lm = GemmaCausalLM.from_preset(directory)
        assert lm.preprocessor is not None
        # A backbone-only keras-hub preset has no vocabulary: no preprocessor.
        assert GemmaCausalLM.from_preset(presets["gemma2"]["directory"]).preprocessor is None

    def test_bfloat16(self, presets):
        backbone = GemmaBackbone.from_preset(presets["gemma3"]["directory"], dtype="bfloat16")
        assert backbone.dtype_policy.name == "bfloat16"
        assert all(weight.dtype == "bfloat16" for weight in backbone.weights)

    def test_shape_mismatch_names_the_weight(self, presets, tmp_path):
        source = presets["gemma2"]["directory"]
        with open(os.path.join(source, "config.json")) as file:
            stored = json.load(file)
        stored["config"]["num_key_value_heads"] = 4
        target = tmp_path / "bad"
        os.makedirs(target)
        with open(target / "config.json", "w") as file:
            json.dump(stored, file)
        os.symlink(os.path.join(source, "model.weights.h5"), target / "model.weights.h5")
        with pytest.raises(ValueError, match="decoder_block_0/attention/key"):
            GemmaBackbone.from_preset(str(target))

    def test_unsupported_class_is_refused(self, tmp_path):
        with open(tmp_path / "config.json", "w") as file:
            json.dump(
                {
                    "class_name": "BertBackbone",
                    "registered_name": "keras_hub>BertBackbone",
                    "config": {},
                },
                file,
            )
        with open(tmp_path / "metadata.json", "w") as file:
            json.dump({}, file)
        with pytest.raises(ValueError, match="keras_hub>BertBackbone"):
            GemmaBackbone.from_preset(str(tmp_path))
