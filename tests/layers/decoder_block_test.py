import keras
import numpy as np
import pytest

from keras_gemma.layers.decoder_block import GemmaDecoderBlock
from keras_gemma.layers.masks import attention_mask
from keras_gemma.testing.test_case import TestCase

HIDDEN_DIM = 32  # Shapes match the tiny backbones (cheaper JAX op caching).


def rms_norm(x, scale, epsilon=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + epsilon) * (1.0 + scale)


def rope(x, positions, wavelength):
    half = x.shape[-1] // 2
    inverse_frequencies = wavelength ** (-np.arange(half) * 2.0 / x.shape[-1])
    angles = positions[..., None] * inverse_frequencies
    cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def block_reference(w, config, x, padding_mask, window=None):
    """Gemma decoder block in NumPy float64 (no query/key norm, no soft-cap)."""
    x = np.asarray(x, "float64")
    positions = np.maximum(np.cumsum(padding_mask, axis=-1) - 1, 0).astype("float64")
    length = x.shape[1]
    distance = np.arange(length)[:, None] - np.arange(length)[None, :]
    mask = (distance >= 0)[None] & padding_mask.astype(bool)[:, None, :]
    if window is not None:
        mask &= (distance < window)[None]

    h = rms_norm(x, w["pre_attention_norm"])
    query = rope(np.einsum("btd,ndh->btnh", h, w["query"]), positions, 10000.0)
    key = rope(np.einsum("bsd,kdh->bskh", h, w["key"]), positions, 10000.0)
    value = np.einsum("bsd,kdh->bskh", h, w["value"])
    query = query * config["query_pre_attn_scalar"] ** -0.5
    groups = config["num_query_heads"] // config["num_key_value_heads"]
    heads = []
    for head in range(config["num_query_heads"]):
        logits = np.einsum("bth,bsh->bts", query[:, :, head], key[:, :, head // groups])
        logits = np.where(mask, logits, -1e30)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        heads.append(np.einsum("bts,bsh->bth", probabilities, value[:, :, head // groups]))
    attended = np.einsum("btnh,nhd->btd", np.stack(heads, 2), w["attention_output"])
    if config["use_post_attention_norm"]:
        attended = rms_norm(attended, w["post_attention_norm"])
    x = x + attended
    h = rms_norm(x, w["pre_ffw_norm"])
    transformed = (gelu_tanh(h @ w["ffw_gating"]) * (h @ w["ffw_gating_2"])) @ w["ffw_linear"]
    if config["use_post_ffw_norm"]:
        transformed = rms_norm(transformed, w["post_ffw_norm"])
    return x + transformed


CONFIG = {
    "hidden_dim": HIDDEN_DIM,
    "intermediate_dim": 48,
    "num_query_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "query_pre_attn_scalar": 5,
    "use_post_attention_norm": False,
    "use_post_ffw_norm": False,
}


def make_block(seed=0, **overrides):
    config = dict(CONFIG, **overrides)
    block = GemmaDecoderBlock(**config)
    block.build((None, None, HIDDEN_DIM))
    rng = np.random.default_rng(seed)
    weights = {}
    for variable in block.weights:
        name = variable.path.split("/")[-2]
        spread = 0.5 if "norm" in name else 0.3
        value = rng.normal(0.0, spread, tuple(variable.shape)).astype("float32")
        variable.assign(value)
        weights[name] = value.astype("float64")
    return block, weights, config


def inputs(seed=0, length=12):
    x = np.random.default_rng(seed).normal(size=(2, length, HIDDEN_DIM)).astype("float32")
    padding_mask = np.array([[1] * length, [1] * (length - 4) + [0] * 4], "int32")
    return x, padding_mask


def assert_rows_close(test, output, expected, padding_mask):
    output = keras.ops.convert_to_numpy(output)
    valid = padding_mask.astype(bool)
    test.assert_all_close(output[valid], expected[valid], atol=1e-4, rtol=1e-4)


class TestGemmaDecoderBlock(TestCase):
    def test_layer_lifecycle(self):
        x, padding_mask = inputs()
        self.run_layer_test(
            GemmaDecoderBlock,
            init_kwargs=dict(
                CONFIG,
                layer_type="sliding_attention",
                sliding_window_size=3,
                use_post_attention_norm=True,
                use_post_ffw_norm=True,
                use_query_key_norm=True,
                attention_logit_soft_cap=20.0,
            ),
            input_data=x,
            call_kwargs={"padding_mask": padding_mask},
            expected_output_shape=x.shape,
        )

    @pytest.mark.parametrize("post_norms", [False, True])
    def test_matches_numpy_reference(self, post_norms):
        block, weights, config = make_block(
            1, use_post_attention_norm=post_norms, use_post_ffw_norm=post_norms
        )
        expected_norms = 4 if post_norms else 2
        assert sum("norm" in v.path for v in block.weights) == expected_norms
        x, padding_mask = inputs(2)
        output = block(x, padding_mask=padding_mask)
        expected = block_reference(weights, config, x, padding_mask)
        assert_rows_close(self, output, expected, padding_mask)

    def test_sliding_layer_uses_its_window(self):
        block, weights, config = make_block(
            3, layer_type="sliding_attention", sliding_window_size=3
        )
        x, padding_mask = inputs(4)
        output = block(x, padding_mask=padding_mask)
        expected = block_reference(weights, config, x, padding_mask, window=3)
        assert_rows_close(self, output, expected, padding_mask)
        full = block_reference(weights, config, x, padding_mask)
        self.assert_not_all_close(output, full, atol=1e-3)

    def test_full_layer_ignores_window(self):
        block, weights, config = make_block(5, sliding_window_size=3)
        x, padding_mask = inputs(6)
        assert_rows_close(
            self,
            block(x, padding_mask=padding_mask),
            block_reference(weights, config, x, padding_mask),
            padding_mask,
        )

    def test_explicit_mask_and_cache_equal_plain_call(self):
        block, _, _ = make_block(7, layer_type="sliding_attention", sliding_window_size=3)
        x, padding_mask = inputs(8)
        full = block(x, padding_mask=padding_mask)
        positions = np.maximum(np.cumsum(padding_mask, -1) - 1, 0).astype("int32")
        slots = np.arange(12, dtype="int32")
        mask = keras.ops.convert_to_numpy(attention_mask(slots, slots, padding_mask, 3))
        explicit = block(x, positions=positions, attention_mask=mask)
        self.assert_all_close(explicit, full, atol=1e-6)

        _, (key_cache, value_cache) = block(
            x[:, :9],
            positions=positions[:, :9],
            attention_mask=mask[:, :9, :9],
            return_key_value=True,
        )
        output, _ = block(
            x[:, 9:],
            positions=positions[:, 9:],
            attention_mask=mask[:, 9:],
            cache=(key_cache, value_cache),
        )
        valid = padding_mask[:, 9:].astype(bool)
        self.assert_all_close(
            keras.ops.convert_to_numpy(output)[valid],
            keras.ops.convert_to_numpy(full)[:, 9:][valid],
            atol=1e-5,
            rtol=1e-5,
        )

    def test_dropout_only_in_training(self):
        block, _, _ = make_block(9, dropout=0.5)
        x, padding_mask = inputs(10)
        inference = block(x, padding_mask=padding_mask)
        self.assert_all_close(block(x, padding_mask=padding_mask), inference)
        self.assert_not_all_close(block(x, padding_mask=padding_mask, training=True), inference)

    def test_rematerialize_is_config_and_changes_no_output(self):
        block, _, _ = make_block(11, rematerialize=True)
        x, padding_mask = inputs(12)
        assert make_block(11)[0].get_config()["rematerialize"] is False
        revived = self.run_serialization_test(block)
        assert revived.get_config()["rematerialize"] is True
        assert revived.rematerialize is True
        plain, _, _ = make_block(11)
        self.assert_all_close(
            block(x, padding_mask=padding_mask, training=True),
            plain(x, padding_mask=padding_mask, training=True),
            atol=1e-6,
        )

    def test_unknown_layer_type(self):
        with pytest.raises(ValueError, match="`layer_type` must be one of"):
            GemmaDecoderBlock(**CONFIG, layer_type="local")
