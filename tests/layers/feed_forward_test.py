import math

import keras
import numpy as np

from keras_gemma.layers.feed_forward import GatedFeedForward
from keras_gemma.testing.test_case import TestCase


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def geglu_reference(x, gate, up, down, gelu=gelu_tanh):
    """down(gelu_tanh(x @ gate) * (x @ up))."""
    x = np.asarray(x, "float64")
    return (gelu(x @ gate) * (x @ up)) @ down


def make_layer(seed=0, hidden_dim=32, intermediate_dim=48, dtype=None):
    layer = GatedFeedForward(hidden_dim, intermediate_dim, dtype=dtype)
    layer.build((None, None, hidden_dim))
    rng = np.random.default_rng(seed)
    weights = []
    for variable in (layer.ffw_gating.kernel, layer.ffw_gating_2.kernel, layer.ffw_linear.kernel):
        value = rng.normal(0.0, 1.0, tuple(variable.shape)).astype("float32")
        variable.assign(value)
        weights.append(value.astype("float64"))
    return layer, weights


class TestGatedFeedForward(TestCase):
    def test_layer_lifecycle(self):
        self.run_layer_test(
            GatedFeedForward,
            init_kwargs={"hidden_dim": 32, "intermediate_dim": 48},
            input_data=np.random.default_rng(0).normal(size=(2, 12, 32)).astype("float32"),
            expected_output_shape=(2, 12, 32),
            expected_num_trainable_weights=3,
        )

    def test_shapes_and_no_bias(self):
        layer, _ = make_layer()
        assert tuple(layer.ffw_gating.kernel.shape) == (32, 48)
        assert tuple(layer.ffw_gating_2.kernel.shape) == (32, 48)
        assert tuple(layer.ffw_linear.kernel.shape) == (48, 32)
        assert layer.count_params() == 3 * 32 * 48

    def test_matches_numpy_geglu_with_tanh_gelu(self):
        layer, (gate, up, down) = make_layer(1)
        x = np.random.default_rng(2).normal(size=(2, 12, 32)).astype("float32") * 0.2
        output = layer(x)
        self.assert_all_close(output, geglu_reference(x, gate, up, down), atol=1e-4, rtol=1e-4)
        # The tanh approximation, not the exact erf GELU: the difference shows.
        exact = geglu_reference(x, gate, up, down, gelu=gelu_exact)
        assert np.max(np.abs(keras.ops.convert_to_numpy(output) - exact)) > 1e-3

    def test_branches_are_not_interchangeable(self):
        """gelu goes on the gate branch (`ffw_gating`), not on the up branch."""
        layer, (gate, up, down) = make_layer(3)
        x = np.random.default_rng(4).normal(size=(2, 12, 32)).astype("float32") * 0.2
        swapped = geglu_reference(x, up, gate, down)
        self.assert_not_all_close(layer(x), swapped, atol=1e-3)
