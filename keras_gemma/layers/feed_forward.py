"""Gemma's gated feed-forward block (GeGLU)."""

import keras
from keras import ops

from keras_gemma.layers.layer_calls import call_layer


@keras.saving.register_keras_serializable(package="keras_gemma")
class GatedFeedForward(keras.layers.Layer):
    """`down(gelu_tanh(gate(x)) * up(x))`, no biases.

    GELU is the tanh approximation (HF `gelu_pytorch_tanh`; DeepMind's Gemma
    uses the same). Sublayer names follow keras-hub so its checkpoints map one
    to one: `ffw_gating` (gate), `ffw_gating_2` (up), `ffw_linear` (down).

    Args:
        hidden_dim: int. Model width `d`.
        intermediate_dim: int. Width of ONE branch (HF `intermediate_size`).
        kernel_initializer: initializer name or config of the three kernels;
            "zeros" when a loader overwrites them anyway.

    Call arguments:
        inputs: tensor `[batch, seq, hidden_dim]`.
        direct: bool. Call the built sublayers' own `call`, without
            `Layer.__call__`'s bookkeeping (generation's decode path; see
            `layers/layer_calls.py`).

    Returns:
        A tensor `[batch, seq, hidden_dim]`.
    """

    def __init__(self, hidden_dim, intermediate_dim, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.kernel_initializer = kernel_initializer
        dense_kwargs = {
            "dtype": self.dtype_policy,
            "use_bias": False,
            "kernel_initializer": kernel_initializer,
        }
        self.ffw_gating = keras.layers.Dense(intermediate_dim, name="ffw_gating", **dense_kwargs)
        self.ffw_gating_2 = keras.layers.Dense(
            intermediate_dim, name="ffw_gating_2", **dense_kwargs
        )
        self.ffw_linear = keras.layers.Dense(hidden_dim, name="ffw_linear", **dense_kwargs)

    def build(self, input_shape):
        self.ffw_gating.build(input_shape)
        self.ffw_gating_2.build(input_shape)
        self.ffw_linear.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, inputs, direct=False):
        gate = ops.gelu(call_layer(self.ffw_gating, direct, inputs), approximate=True)
        up = call_layer(self.ffw_gating_2, direct, inputs)
        return call_layer(self.ffw_linear, direct, gate * up)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "kernel_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.kernel_initializer)
                ),
            }
        )
        return config
