import keras
import numpy as np
import pytest

from keras_gemma.layers.rms_normalization import RMSNormalization
from keras_gemma.testing.test_case import TestCase


def rms_norm_reference(x, scale, epsilon):
    """x * rsqrt(mean(x^2) + eps) * (1 + scale), in float32."""
    x = np.asarray(x, "float32")
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True)
    return x / np.sqrt(mean_square + epsilon) * (1.0 + np.asarray(scale, "float32"))


class TestRMSNormalization(TestCase):
    def test_layer_lifecycle(self):
        self.run_layer_test(
            RMSNormalization,
            init_kwargs={"epsilon": 1e-5},
            input_data=np.random.default_rng(0).normal(size=(2, 12, 32)).astype("float32"),
            expected_output_shape=(2, 12, 32),
            expected_num_trainable_weights=1,
        )

    def test_fresh_layer_is_plain_rms_norm(self):
        x = np.random.default_rng(1).normal(size=(2, 12, 32)).astype("float32")
        layer = RMSNormalization()
        self.assert_all_close(layer(x), rms_norm_reference(x, 0.0, 1e-6), atol=1e-5, rtol=1e-5)
        self.assert_all_close(layer.scale, np.zeros(32))

    @pytest.mark.parametrize("epsilon", [1e-6, 1e-2, 1.0])
    def test_matches_numpy_formula(self, epsilon):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(2, 12, 32)).astype("float32") * 0.1
        scale = rng.normal(size=(32,)).astype("float32")
        layer = RMSNormalization(epsilon=epsilon)
        layer.build(x.shape)
        layer.scale.assign(scale)
        self.assert_all_close(layer(x), rms_norm_reference(x, scale, epsilon), atol=1e-5, rtol=1e-5)

    def test_epsilon_changes_output(self):
        x = np.full((2, 12, 32), 0.01, "float32")
        small = RMSNormalization(epsilon=1e-6)(x)
        large = RMSNormalization(epsilon=1e-2)(x)
        self.assert_not_all_close(small, large, atol=1e-3)

    def test_float16_computes_in_float32(self):
        # x^2 = 9e4 overflows float16 (max 65504): the float32 upcast avoids it.
        x = np.full((1, 2, 4), 300.0, "float32")
        layer = RMSNormalization(dtype="float16")
        output = layer(x)
        assert keras.backend.standardize_dtype(output.dtype) == "float16"
        self.assert_all_close(output, np.ones((1, 2, 4)), atol=1e-3)

    def test_bfloat16_output_dtype_and_values(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2, 12, 32)).astype("float32")
        scale = rng.normal(size=(32,)).astype("float32") * 0.5
        layer = RMSNormalization(dtype="bfloat16")
        layer.build(x.shape)
        layer.scale.assign(scale)
        output = layer(x)
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        x_bf16 = keras.ops.convert_to_numpy(keras.ops.cast(x, "bfloat16")).astype("float32")
        scale_bf16 = keras.ops.convert_to_numpy(layer.scale).astype("float32")
        expected = rms_norm_reference(x_bf16, scale_bf16, 1e-6)
        self.assert_all_close(output, expected, atol=2e-2, rtol=2e-2)
