"""Rotary position embedding (RoPE), half-split layout as in HF Gemma."""

import keras
import numpy as np
from keras import ops


def rope_inverse_frequencies(head_dim, wavelength):
    """`1 / wavelength ** (2i / head_dim)` for i in [0, head_dim / 2), float32.

    A NumPy constant: computed once per trace, not per call of the graph.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(wavelength), exponents)).astype(np.float32)


@keras.saving.register_keras_serializable(package="keras_gemma")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates the feature pairs `(i, i + head_dim / 2)` by `position * freq_i`.

    Positions are divided by `scaling_factor` first (linear RoPE scaling, used
    by Gemma 3 4B and larger on their global layers). Angles are computed in
    float32, the result is cast back to the input's dtype.

    Args:
        wavelength: float. The RoPE base (10,000 or 1,000,000 for Gemma).
        scaling_factor: float >= 1. Linear position scaling.
        partial_rotary_factor: float in (0, 1]. Gemma 4's "proportional" RoPE
            on full layers (HF `_compute_proportional_rope_parameters`): only
            the first `int(factor * head_dim // 2)` frequencies are kept, still
            with exponents `2i / head_dim`; the rest are zero, so those pairs
            are not rotated.

    Call arguments:
        inputs: tensor `[batch, seq, heads, head_dim]`.
        positions: int tensor `[batch, seq]`, the position of each token.

    Returns:
        The rotated tensor, same shape and dtype as `inputs`.

    `rotation(positions, head_dim)` and `rotate(inputs, rotation)` split the
    call, so queries and keys at the same positions share one rotation.
    """

    def __init__(self, wavelength=10000.0, scaling_factor=1.0, partial_rotary_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.wavelength = wavelength
        self.scaling_factor = scaling_factor
        self.partial_rotary_factor = partial_rotary_factor
        # No weights: built from the start (like `keras.layers.Dropout`), so
        # `Model.quantize` accepts a freshly loaded model.
        self.built = True

    def call(self, inputs, positions):
        return self.rotate(inputs, self.rotation(positions, inputs.shape[-1]))

    def rotation(self, positions, head_dim):
        """`(cos, sin)`, each float32 `[b, t, 1, head_dim]`, for `positions` `[b, t]`."""
        inverse_frequencies = rope_inverse_frequencies(head_dim, self.wavelength)
        if self.partial_rotary_factor != 1.0:
            rotated = int(self.partial_rotary_factor * head_dim // 2)
            inverse_frequencies[rotated:] = 0.0
        if self.scaling_factor != 1.0:
            inverse_frequencies = inverse_frequencies / np.float32(self.scaling_factor)
        # (h,): the same frequency for both halves.
        frequencies = ops.convert_to_tensor(np.concatenate([inverse_frequencies] * 2))
        # (b, t, 1, h): the angle of every feature at every position.
        angles = ops.cast(positions, "float32")[:, :, None, None] * frequencies
        return ops.cos(angles), ops.sin(angles)

    def rotate(self, inputs, rotation):
        """Rotates `inputs` `[b, t, heads, head_dim]` by `rotation(...)`."""
        cos, sin = rotation
        x = ops.cast(inputs, "float32")
        first_half, second_half = ops.split(x, 2, axis=-1)
        rotated_half = ops.concatenate([-second_half, first_half], axis=-1)
        return ops.cast(x * cos + rotated_half * sin, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "wavelength": self.wavelength,
                "scaling_factor": self.scaling_factor,
                "partial_rotary_factor": self.partial_rotary_factor,
            }
        )
        return config
