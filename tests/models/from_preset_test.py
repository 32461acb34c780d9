"""`from_preset` on all four objects for every local handle kind."""

import os

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config

OBJECTS = (GemmaBackbone, GemmaTokenizer, GemmaCausalLMPreprocessor, GemmaCausalLM)
INPUTS = {
    "token_ids": np.array([[2, 40, 41, 42, 43]], "int32"),
    "padding_mask": np.ones((1, 5), "int32"),
}


@pytest.fixture(scope="module")
def handles(tmp_path_factory, vocabulary_path, tokenizer):
    """{kind: (handle, reference GemmaCausalLM)} for every local handle kind."""
    root = tmp_path_factory.mktemp("handles")
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=32)
    lm = GemmaCausalLM(
        GemmaBackbone(**tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size)),
        preprocessor,
    )
    result = {}
    ours = str(root / "ours")
    lm.save_to_preset(ours)
    result["keras"] = (ours, lm)
    hf = str(root / "hf")
    lm.export_to_transformers(hf)
    result["transformers"] = (hf, lm)
    try:
        import keras_hub

        hub = keras_hub.models.GemmaBackbone(
            vocabulary_size=tokenizer.vocabulary_size,
            num_layers=2,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=16,
            intermediate_dim=32,
            head_dim=8,
        )
        hub_preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(
            keras_hub.models.GemmaTokenizer(proto=vocabulary_path), sequence_length=32
        )
        hub_dir = str(root / "keras_hub")
        keras_hub.models.GemmaCausalLM(backbone=hub, preprocessor=hub_preprocessor).save_to_preset(
            hub_dir
        )
        reference = GemmaCausalLM(GemmaBackbone.from_preset(hub_dir), preprocessor)
        result["keras_hub"] = (hub_dir, reference)
    except ImportError:
        pass
    return result


KINDS = ("keras", "transformers", "keras_hub")


@pytest.mark.parametrize("kind", KINDS)
def test_all_objects_from_local_handles(kind, handles):
    if kind not in handles:
        pytest.skip("keras-hub not installed")
    handle, reference = handles[kind]
    for path in (handle, os.path.abspath(handle)):
        # The handle (relative and absolute) as a backbone in bfloat16: `dtype` is honoured.
        backbone = GemmaBackbone.from_preset(path, dtype="bfloat16")
        assert backbone.dtype_policy.name == "bfloat16"
        for ours, theirs in zip(backbone.weights[:4], reference.weights[:4]):
            assert ours.dtype == "bfloat16"
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(keras.ops.cast(ours, "float32")),
                keras.ops.convert_to_numpy(
                    keras.ops.cast(keras.ops.cast(theirs, "bfloat16"), "float32")
                ),
            )
