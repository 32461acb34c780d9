"""`export_to_transformers`: transformers loads our export with matching logits."""

import json
import os

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.configs import FAMILIES
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.models import assign_scaled_random_weights
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_gemma.testing.transformers_checkpoints import transformers_logits  # noqa: E402

VOCABULARY_SIZE = 400
LENGTH = 12  # Longer than the tiny configs' sliding window (4).


def random_causal_lm(family, seed, preprocessor=None):
    """A tiny model of `family` with every weight re-drawn (norm scales far from 0)."""
    backbone = GemmaBackbone(**tiny_config(family, vocabulary_size=VOCABULARY_SIZE))
    return GemmaCausalLM(assign_scaled_random_weights(backbone, seed), preprocessor)


def make_inputs():
    return ragged_inputs(VOCABULARY_SIZE, length=LENGTH, padding=4, seed=1)


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)


@pytest.fixture(scope="module")
def exports(preprocessor, tmp_path_factory):
    """Per family: our model, the export directory, our logits."""
    inputs = make_inputs()
    result = {}
    for seed, family in enumerate(FAMILIES):
        lm = random_causal_lm(family, seed, preprocessor)
        directory = str(tmp_path_factory.mktemp(f"export_{family}"))
        lm.export_to_transformers(directory)
        result[family] = {
            "lm": lm,
            "directory": directory,
            "logits": keras.ops.convert_to_numpy(lm(inputs)),
        }
    return result


class TestExportToTransformers(TestCase):
    @pytest.mark.parametrize("family", FAMILIES)
    def test_transformers_logits_match(self, family, exports):
        export = exports[family]
        model = transformers.AutoModelForCausalLM.from_pretrained(
            export["directory"], attn_implementation="eager", dtype="float32"
        ).eval()
        expected_type = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}[family]
        assert model.config.model_type == expected_type
        inputs = make_inputs()
        logits = transformers_logits(model, inputs["token_ids"], inputs["padding_mask"])
        valid = inputs["padding_mask"].astype(bool)
        self.assert_all_close(logits[valid], export["logits"][valid], atol=1e-4, rtol=1e-4)
        assert np.std(export["logits"][valid]) > 0.1

    def test_files_and_tokenizer(self, exports, preprocessor):
        directory = exports["gemma3"]["directory"]
        assert sorted(os.listdir(directory)) == [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.model",
            "tokenizer_config.json",
        ]
        with open(os.path.join(directory, "generation_config.json")) as file:
            generation = json.load(file)
        tokenizer = preprocessor.tokenizer
        assert generation["eos_token_id"] == [
            tokenizer.eos_token_id,
            tokenizer.end_of_turn_token_id,
        ]
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        text = "the capital of France is Paris"
        assert hf_tokenizer(text)["input_ids"] == [tokenizer.bos_token_id] + tokenizer(text)
        # The export is itself a `from_preset` handle: the same model comes back.
        reloaded = GemmaCausalLM.from_preset(directory)
        self.assert_all_close(
            reloaded(make_inputs()), exports["gemma3"]["logits"], atol=1e-6, rtol=1e-6
        )
        assert reloaded.preprocessor is not None

    def test_without_preprocessor_and_bfloat16(self, tmp_path):
        lm = random_causal_lm("gemma2", seed=7)
        bf16 = GemmaCausalLM(
            GemmaBackbone.from_config(dict(lm.backbone.get_config(), dtype="bfloat16"))
        )
        bf16.backbone.set_weights(lm.backbone.get_weights())
        bf16.export_to_transformers(str(tmp_path / "bf16"))
        assert sorted(os.listdir(tmp_path / "bf16")) == [
            "config.json",
            "generation_config.json",
            "model.safetensors",
        ]
        with open(tmp_path / "bf16" / "config.json") as file:
            assert json.load(file)["dtype"] == "bfloat16"
        reloaded = GemmaBackbone.from_preset(str(tmp_path / "bf16"))
        for ours, theirs in zip(bf16.backbone.weights, reloaded.weights):
            self.assert_all_close(ours, theirs, atol=0, rtol=0)

    def test_failed_export_keeps_the_previous_one(self, exports, tmp_path, monkeypatch):
        from keras_gemma.formats import transformers_export as hf_format

        target = str(tmp_path / "export")
        exports["gemma"]["lm"].export_to_transformers(target)
        before = {
            name: open(os.path.join(target, name), "rb").read() for name in os.listdir(target)
        }

        def fail(*args, **kwargs):
            raise OSError("No space left on device")

        monkeypatch.setattr("safetensors.numpy.save_file", fail)
        with pytest.raises(OSError, match="No space left"):
            hf_format.export_causal_lm(exports["gemma2"]["lm"], target)
        after = {name: open(os.path.join(target, name), "rb").read() for name in os.listdir(target)}
        assert after == before
        assert [name for name in os.listdir(tmp_path) if name != "export"] == []

    def test_inexpressible_config_fails_before_writing(self, tmp_path):
        config = tiny_config("gemma2", local_rope_wavelength=5000.0)
        lm = GemmaCausalLM(GemmaBackbone(**config))
        with pytest.raises(ValueError, match="one RoPE"):
            lm.export_to_transformers(str(tmp_path / "x"))
        assert not os.path.exists(tmp_path / "x")
