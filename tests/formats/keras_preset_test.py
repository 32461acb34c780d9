"""Our Keras preset: save → load is bit-identical, and saving is atomic."""

import json
import os

import keras
import numpy as np
import pytest

from keras_gemma.formats import keras_preset
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats.loader import handle_kind
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.configs import FAMILIES
from keras_gemma.testing.models import random_backbone
from keras_gemma.testing.test_case import TestCase

VOCABULARY_SIZE = 400


def make_inputs():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, VOCABULARY_SIZE, (2, 10)).astype("int32")
    padding_mask = np.ones((2, 10), "int32")
    padding_mask[1, -3:] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return GemmaCausalLMPreprocessor(tokenizer, sequence_length=20, add_end_token=False)


def assert_bit_identical(first, second):
    assert [v.path for v in first.weights] == [v.path for v in second.weights]
    for a, b in zip(first.weights, second.weights):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def without_name(config):
    return {key: value for key, value in config.items() if key != "name"}


class TestKerasPreset(TestCase):
    @pytest.mark.parametrize("family", FAMILIES)
    @pytest.mark.parametrize("with_preprocessor", [True, False])
    def test_save_load_bit_identical(self, family, with_preprocessor, preprocessor, tmp_path):
        lm = GemmaCausalLM(
            random_backbone(FAMILIES.index(family), family),
            preprocessor if with_preprocessor else None,
        )
        directory = str(tmp_path / "preset")
        lm.save_to_preset(directory)
        assert handle_kind(directory) == preset_files.KERAS_PRESET
        # `sequence_length=None`: the stored preprocessor settings, unchanged.
        reloaded = GemmaCausalLM.from_preset(directory, sequence_length=None)
        assert without_name(reloaded.backbone.get_config()) == without_name(
            lm.backbone.get_config()
        )
        assert_bit_identical(lm.backbone, reloaded.backbone)
        inputs = make_inputs()
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(reloaded(inputs)), keras.ops.convert_to_numpy(lm(inputs))
        )
        if with_preprocessor:
            assert reloaded.preprocessor.get_config() == preprocessor.get_config()
            assert reloaded.preprocessor.tokenizer.proto == preprocessor.tokenizer.proto
        else:
            assert reloaded.preprocessor is None
            assert not os.path.exists(os.path.join(directory, preset_files.KERAS_TOKENIZER_ASSET))

    def test_bfloat16_round_trip_and_override(self, tmp_path):
        lm = GemmaCausalLM(random_backbone(3, "gemma2", dtype="bfloat16"))
        directory = str(tmp_path / "bf16")
        lm.save_to_preset(directory)
        reloaded = GemmaBackbone.from_preset(directory)
        assert reloaded.dtype_policy.name == "bfloat16"
        assert_bit_identical(lm.backbone, reloaded)
        as_float32 = GemmaBackbone.from_preset(directory, dtype="float32")
        assert all(weight.dtype == "float32" for weight in as_float32.weights)

    def test_failed_save_keeps_previous_preset(self, preprocessor, tmp_path, monkeypatch):
        directory = str(tmp_path / "preset")
        old = GemmaCausalLM(random_backbone(0, "gemma3"), preprocessor)
        old.save_to_preset(directory)
        files_before = sorted(os.listdir(directory))
        new = GemmaCausalLM(random_backbone(1, "gemma3"), preprocessor)

        def fail_midway(path, *args, **kwargs):
            with open(path, "wb") as file:
                file.write(b"\x89HDF\r\n half a file")
            raise OSError("No space left on device")

        monkeypatch.setattr(new.backbone, "save_weights", fail_midway)
        with pytest.raises(OSError, match="No space left on device"):
            new.save_to_preset(directory)
        assert sorted(os.listdir(directory)) == files_before
        assert os.listdir(tmp_path) == ["preset"]  # No staging directory left behind.
        reloaded = GemmaCausalLM.from_preset(directory)
        assert_bit_identical(old.backbone, reloaded.backbone)

    def test_overwrite_replaces_everything(self, preprocessor, tmp_path):
        directory = str(tmp_path / "preset")
        GemmaCausalLM(random_backbone(0, "gemma"), preprocessor).save_to_preset(directory)
        replacement = GemmaCausalLM(random_backbone(1, "gemma2"))
        replacement.save_to_preset(directory)
        assert not os.path.exists(os.path.join(directory, "preprocessor.json"))
        assert_bit_identical(replacement.backbone, GemmaBackbone.from_preset(directory))

    def test_foreign_class_is_refused(self, tmp_path):
        directory = str(tmp_path / "preset")
        GemmaCausalLM(random_backbone(0, "gemma")).save_to_preset(directory)
        with open(os.path.join(directory, "config.json")) as file:
            config = json.load(file)
        config.update(
            module="keras_gemma.evil", registered_name="keras_gemma>Evil", class_name="Evil"
        )
        with open(os.path.join(directory, "config.json"), "w") as file:
            json.dump(config, file)
        with pytest.raises(ValueError, match="Only this package's classes"):
            keras_preset.read_backbone(directory)

    def test_damaged_weights_error(self, tmp_path):
        directory = str(tmp_path / "preset")
        GemmaCausalLM(random_backbone(0, "gemma")).save_to_preset(directory)
        with open(os.path.join(directory, "model.weights.h5"), "wb") as file:
            file.write(b"not hdf5")
        with pytest.raises(ValueError, match="damaged"):
            GemmaBackbone.from_preset(directory)
