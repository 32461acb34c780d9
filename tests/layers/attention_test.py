import keras
import numpy as np
import pytest

from keras_gemma.layers.attention import GemmaAttention
from keras_gemma.layers.masks import attention_mask
from keras_gemma.testing.test_case import TestCase

HIDDEN_DIM = 32  # Shapes match the tiny backbones (cheaper JAX op caching).


def rms_norm(x, scale, epsilon):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + epsilon) * (1.0 + scale)


def rope(x, positions, wavelength, scaling_factor):
    half = x.shape[-1] // 2
    inverse_frequencies = wavelength ** (-np.arange(half) * 2.0 / x.shape[-1])
    angles = (positions / scaling_factor)[..., None] * inverse_frequencies
    cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def attention_reference(weights, config, x, positions, mask):
    """Gemma attention in NumPy float64, one query head at a time.

    Query head n reads key/value head n // groups (HF `repeat_kv`).
    """
    x = np.asarray(x, "float64")
    positions = np.asarray(positions, "float64")
    query = np.einsum("btd,ndh->btnh", x, weights["query"])
    key = np.einsum("bsd,kdh->bskh", x, weights["key"])
    value = np.einsum("bsd,kdh->bskh", x, weights["value"])
    if config.get("use_query_key_norm"):
        epsilon = config.get("layer_norm_epsilon", 1e-6)
        query = rms_norm(query, weights["query_norm"], epsilon)
        key = rms_norm(key, weights["key_norm"], epsilon)
    wavelength = config.get("rope_wavelength", 10000.0)
    factor = config.get("rope_scaling_factor", 1.0)
    query = rope(query, positions, wavelength, factor)
    key = rope(key, positions, wavelength, factor)
    query = query * config["query_pre_attn_scalar"] ** -0.5
    groups = config["num_query_heads"] // config["num_key_value_heads"]
    heads = []
    for head in range(config["num_query_heads"]):
        kv = head // groups
        logits = np.einsum("bth,bsh->bts", query[:, :, head], key[:, :, kv])
        cap = config.get("attention_logit_soft_cap")
        if cap is not None:
            logits = cap * np.tanh(logits / cap)
        logits = np.where(mask, logits, -np.inf)
        logits = logits - logits.max(axis=-1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        heads.append(np.einsum("bts,bsh->bth", probabilities, value[:, :, kv]))
    attended = np.stack(heads, axis=2)  # (b, t, n, h)
    return np.einsum("btnh,nhd->btd", attended, weights["attention_output"])


def make_layer(seed=0, **config):
    """A built layer with random weights (norm scales far from zero)."""
    layer = GemmaAttention(**config)
    layer.build((None, None, HIDDEN_DIM))
    rng = np.random.default_rng(seed)
    weights = {}
    for variable in layer.weights:
        name = variable.path.split("/")[-2]
        spread = 0.5 if "norm" in name else 0.4
        value = rng.normal(0.0, spread, tuple(variable.shape)).astype("float32")
        variable.assign(value)
        weights[name] = value.astype("float64")
    return layer, weights


def causal_inputs(seed=0, batch=2, length=12, padding_mask=None, window=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, HIDDEN_DIM)).astype("float32")
    if padding_mask is None:
        padding_mask = np.ones((batch, length), "int32")
    positions = np.maximum(np.cumsum(padding_mask, axis=-1) - 1, 0).astype("int32")
    slots = np.arange(length, dtype="int32")
    mask = keras.ops.convert_to_numpy(attention_mask(slots, slots, padding_mask, window))
    return x, positions, mask


BASE = {"num_query_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "query_pre_attn_scalar": 6}

CONFIGS = {
    "mha": dict(BASE, num_key_value_heads=4),
    "gqa": BASE,
    "mqa": dict(BASE, num_key_value_heads=1),
    "query_pre_attn_scalar": dict(BASE, query_pre_attn_scalar=17),
    "soft_cap": dict(BASE, attention_logit_soft_cap=1.5),
    "query_key_norm": dict(BASE, use_query_key_norm=True, layer_norm_epsilon=1e-3),
    "rope": dict(BASE, rope_wavelength=100.0, rope_scaling_factor=4.0),
    "everything": dict(
        BASE,
        num_key_value_heads=1,
        query_pre_attn_scalar=3,
        attention_logit_soft_cap=2.0,
        use_query_key_norm=True,
        rope_wavelength=1000.0,
        rope_scaling_factor=8.0,
    ),
}


class TestGemmaAttention(TestCase):
    def test_layer_lifecycle(self):
        x, positions, mask = causal_inputs()
        self.run_layer_test(
            GemmaAttention,
            init_kwargs=dict(CONFIGS["everything"], dropout=0.1),
            input_data={"inputs": x, "positions": positions, "attention_mask": mask},
            expected_output_shape=x.shape,
            # query, key, value, output kernels and two norm scales.
            expected_num_trainable_weights=6,
        )

    @pytest.mark.parametrize("name", sorted(CONFIGS))
    def test_matches_numpy_reference(self, name):
        config = CONFIGS[name]
        layer, weights = make_layer(1, **config)
        x, positions, mask = causal_inputs(2, padding_mask=np.array([[1] * 12, [1] * 8 + [0] * 4]))
        output = layer(x, positions=positions, attention_mask=mask)
        expected = attention_reference(weights, config, x, positions, mask)
        # Padded query rows attend to nothing valid in the reference: compare the rest.
        self.assert_all_close(output[0], expected[0], atol=1e-5, rtol=1e-4)
        self.assert_all_close(output[1, :8], expected[1, :8], atol=1e-5, rtol=1e-4)

    def test_sliding_window_mask(self):
        config = CONFIGS["gqa"]
        layer, weights = make_layer(3, **config)
        x, positions, mask = causal_inputs(4, window=3)
        output = layer(x, positions=positions, attention_mask=mask)
        self.assert_all_close(
            output, attention_reference(weights, config, x, positions, mask), atol=1e-5, rtol=1e-4
        )
        _, _, causal = causal_inputs(4)
        self.assert_not_all_close(output, layer(x, positions=positions, attention_mask=causal))

    def test_each_option_changes_output(self):
        x, positions, mask = causal_inputs(5)
        _, weights = make_layer(6, **BASE)
        base = attention_reference(weights, BASE, x, positions, mask)
        for name in ("query_pre_attn_scalar", "soft_cap", "rope"):
            layer, _ = make_layer(6, **CONFIGS[name])
            self.assert_not_all_close(
                layer(x, positions=positions, attention_mask=mask), base, atol=1e-4, msg=name
            )

    def test_fully_masked_rows_stay_finite(self):
        layer, _ = make_layer(7, **BASE)
        x, positions, _ = causal_inputs(8)
        mask = np.zeros((2, 12, 12), bool)
        output = keras.ops.convert_to_numpy(layer(x, positions=positions, attention_mask=mask))
        assert np.all(np.isfinite(output))

    def test_return_key_value_shapes(self):
        layer, _ = make_layer(9, **BASE)
        x, positions, mask = causal_inputs(10)
        output, (key, value) = layer(
            x, positions=positions, attention_mask=mask, return_key_value=True
        )
        assert tuple(output.shape) == (2, 12, HIDDEN_DIM)
        assert tuple(key.shape) == (2, 12, 2, 8)
        assert tuple(value.shape) == (2, 12, 2, 8)
        # Returning the keys and values changes nothing about the output.
        self.assert_all_close(output, layer(x, positions=positions, attention_mask=mask))

    def test_cache_equals_full_sequence(self):
        """Attending over (cache + new tokens) equals attending over the
        concatenated sequence, for the new tokens' rows. (Multi-token chunks
        are covered in decoder_block_test.)"""
        name, new_tokens = "everything", 1
        layer, _ = make_layer(11, **CONFIGS[name])
        length = 12
        cached = length - new_tokens
        padding_mask = np.array([[1] * length, [1] * (length - 1) + [0]], "int32")
        x, positions, mask = causal_inputs(12, length=length, padding_mask=padding_mask)
        full = layer(x, positions=positions, attention_mask=mask)

        _, (key_cache, value_cache) = layer(
            x[:, :cached],
            positions=positions[:, :cached],
            attention_mask=mask[:, :cached, :cached],
            return_key_value=True,
        )
        output, (key, value) = layer(
            x[:, cached:],
            positions=positions[:, cached:],
            attention_mask=mask[:, cached:, :],  # over cache slots then new slots
            cache=(key_cache, value_cache),
        )
        assert tuple(key.shape) == (2, new_tokens, CONFIGS[name]["num_key_value_heads"], 8)
        self.assert_all_close(output[0], full[0, cached:], atol=1e-5, rtol=1e-5)
        valid = padding_mask[1, cached:].astype(bool)
        self.assert_all_close(
            keras.ops.convert_to_numpy(output[1])[valid],
            keras.ops.convert_to_numpy(full[1, cached:])[valid],
            atol=1e-5,
            rtol=1e-5,
        )

    def test_cache_with_empty_slots_is_ignored(self):
        """Masked cache slots (garbage in them) do not change the output."""
        layer, _ = make_layer(13, **CONFIGS["everything"])
        x, positions, mask = causal_inputs(14)
        full = layer(x, positions=positions, attention_mask=mask)
        _, (key_cache, value_cache) = layer(
            x[:, :11],
            positions=positions[:, :11],
            attention_mask=mask[:, :11, :11],
            return_key_value=True,
        )
        garbage = np.full((2, 2, 1, 8), 50.0, "float32")
        key_cache = keras.ops.concatenate([key_cache, garbage], axis=1)
        value_cache = keras.ops.concatenate([value_cache, garbage], axis=1)
        step_mask = np.array([[[1] * 11 + [0, 0, 1]]] * 2, bool)
        output, _ = layer(
            x[:, 11:],
            positions=positions[:, 11:],
            attention_mask=step_mask,
            cache=(key_cache, value_cache),
        )
        self.assert_all_close(output, full[:, 11:], atol=1e-5, rtol=1e-5)
