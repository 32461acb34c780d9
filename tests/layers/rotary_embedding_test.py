import keras
import numpy as np
import pytest

from keras_gemma.layers.rotary_embedding import RotaryEmbedding
from keras_gemma.testing.test_case import TestCase


def rope_reference(x, positions, wavelength, scaling_factor=1.0):
    """Half-split RoPE: pair (i, i + h/2) rotated by (position / factor) * base^(-2i/h)."""
    x = np.asarray(x, "float64")
    head_dim = x.shape[-1]
    half = head_dim // 2
    inverse_frequencies = wavelength ** (-np.arange(half) * 2.0 / head_dim)
    angles = (np.asarray(positions, "float64") / scaling_factor)[..., None] * inverse_frequencies
    cos = np.cos(angles)[:, :, None, :]  # (b, t, 1, h/2)
    sin = np.sin(angles)[:, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def random_inputs(seed=0, shape=(2, 12, 4, 8)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype("float32")
    positions = np.stack([np.arange(shape[1]), np.arange(shape[1]) * 7 + 3]).astype("int32")
    return x, positions


class TestRotaryEmbedding(TestCase):
    def test_layer_lifecycle(self):
        x, positions = random_inputs()
        self.run_layer_test(
            RotaryEmbedding,
            init_kwargs={"wavelength": 500.0, "scaling_factor": 2.0},
            input_data=x,
            call_kwargs={"positions": positions},
            expected_output_shape=x.shape,
            expected_num_trainable_weights=0,
        )

    @pytest.mark.parametrize(
        "wavelength,scaling_factor", [(10000.0, 1.0), (1_000_000.0, 8.0), (100.0, 1.0)]
    )
    def test_matches_numpy_formula(self, wavelength, scaling_factor):
        x, positions = random_inputs(1)
        output = RotaryEmbedding(wavelength, scaling_factor)(x, positions)
        expected = rope_reference(x, positions, wavelength, scaling_factor)
        self.assert_all_close(output, expected, atol=1e-4, rtol=1e-4)

    def test_linear_scaling_divides_positions(self):
        x, positions = random_inputs(2)
        positions = positions * 4
        scaled = RotaryEmbedding(10000.0, 4.0)(x, positions)
        plain = RotaryEmbedding(10000.0, 1.0)(x, positions // 4)
        self.assert_all_close(scaled, plain, atol=1e-5, rtol=1e-5)
        self.assert_not_all_close(scaled, RotaryEmbedding(10000.0, 1.0)(x, positions))

    def test_position_zero_is_identity_and_norm_is_kept(self):
        x, _ = random_inputs(3)
        zeros = np.zeros(x.shape[:2], "int32")
        self.assert_all_close(RotaryEmbedding()(x, zeros), x, atol=1e-6)
        _, positions = random_inputs(3)
        rotated = keras.ops.convert_to_numpy(RotaryEmbedding()(x, positions))
        self.assert_all_close(
            np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), atol=1e-5, rtol=1e-5
        )

    def test_dot_product_depends_on_relative_position_only(self):
        rng = np.random.default_rng(4)
        query = rng.normal(size=(1, 1, 1, 8)).astype("float32")
        key = rng.normal(size=(1, 1, 1, 8)).astype("float32")
        layer = RotaryEmbedding(100.0)

        def score(query_position, key_position):
            q = keras.ops.convert_to_numpy(layer(query, np.array([[query_position]], "int32")))
            k = keras.ops.convert_to_numpy(layer(key, np.array([[key_position]], "int32")))
            return float(np.sum(q * k))

        np.testing.assert_allclose(score(5, 2), score(13, 10), atol=1e-4)
        assert abs(score(5, 2) - score(5, 4)) > 1e-3

    def test_bfloat16_dtype_preserved(self):
        x, positions = random_inputs(5)
        x = keras.ops.cast(x, "bfloat16")
        output = RotaryEmbedding(dtype="bfloat16")(x, positions)
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        x_float32 = keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))
        expected = rope_reference(x_float32, positions, 10000.0)
        self.assert_all_close(output, expected, atol=5e-2, rtol=5e-2)
