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

    Gemma 4 multiplies by the weight itself (HF `Gemma4RMSNorm`: `x * w`):
    `scale_offset=0.0` gives `y = ... * scale`, with the scale starting at one.

    Args:
        epsilon: float. Added to the mean square before the reciprocal root.
        scale_offset: float. 1.0 (Gemma 1-3, `1 + scale`) or 0.0 (Gemma 4).

    Call arguments:
        inputs: tensor `[..., features]`.

    Returns:
        A tensor of the same shape and compute dtype.
    """

    def __init__(self, epsilon=1e-6, scale_offset=1.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.scale_offset = scale_offset

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer="zeros" if self.scale_offset else "ones",
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(mean_square + self.epsilon)
        x = x * (self.scale_offset + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "scale_offset": self.scale_offset})
        return config


def unscaled_rms_normalize(inputs, epsilon):
    """`x * rsqrt(mean(x^2) + epsilon)` in float32, no weight (HF Gemma 4 `v_norm`, router norm)."""
    x = ops.cast(inputs, "float32")
    mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
    return ops.cast(x * ops.rsqrt(mean_square + epsilon), inputs.dtype)
