"""Gemma's RMS normalization."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_gemma")
class RMSNormalization(keras.layers.Layer):
    """Root-mean-square normalization with Gemma's `(1 + scale)` weight.

    `y = x * rsqrt(mean(x^2) + epsilon) * (1 + scale)`, computed in float32
    whatever the compute dtype (HF `GemmaRMSNorm`: the float32 upcast avoids
    bfloat16 overflow in `x^2`), then cast back. The scale starts at zero, so a
    fresh layer is a plain RMS normalization.

    Args:
        epsilon: float. Added to the mean square before the reciprocal root.

    Call arguments:
        inputs: tensor `[..., features]`.

    Returns:
        A tensor of the same shape and compute dtype.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer="zeros",
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(mean_square + self.epsilon)
        x = x * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
