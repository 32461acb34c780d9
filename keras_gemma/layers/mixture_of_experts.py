"""Gemma 4's mixture of experts: a routed bank of GeGLU experts.

Einsum letters: b batch, t length, d hidden_dim, e experts, f one expert's
intermediate width.
"""

import keras
from keras import ops

from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.rms_normalization import unscaled_rms_normalize


@keras.saving.register_keras_serializable(package="keras_gemma")
class MixtureOfExperts(keras.layers.Layer):
    """Top-k routed GeGLU experts with Gemma 4's router (HF `Gemma4TextRouter`).

    The router reads `router_inputs` (the residual stream after attention):
    `z = rms(x) * router_scale * d^-1/2` (an RMS normalization without weight),
    `P = softmax(z @ router)` in float32, the top `num_experts_per_token`
    probabilities are renormalised to sum to one and then multiplied by
    `per_expert_scale` of their expert. Each expert computes
    `down(gelu_tanh(gate(x)) * up(x))` on `expert_inputs`; the output is the
    routing-weighted sum over the chosen experts.

    Every expert is evaluated on every token and the unchosen ones get weight
    zero: one dense program on every backend, no data-dependent shapes. It
    costs `num_experts / num_experts_per_token` times the routed FLOPs (16x
    for 26B-A4B); a gathered dispatch is a later optimisation.

    Args:
        hidden_dim: int.
        intermediate_dim: int. Width of one expert (HF `moe_intermediate_size`).
        num_experts: int.
        num_experts_per_token: int. The router's top-k (HF `top_k_experts`).
        layer_norm_epsilon: float. Of the router's normalization.
        kernel_initializer: initializer of the router and expert kernels.

    Call arguments:
        router_inputs: `[b, t, d]`.
        expert_inputs: `[b, t, d]`.
        direct: bool. See `layers/layer_calls.py`.

    Returns:
        `[b, t, d]`.
    """

    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        num_experts,
        num_experts_per_token,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = kernel_initializer
        policy = self.dtype_policy
        self.router = keras.layers.Dense(
            num_experts,
            use_bias=False,
            kernel_initializer=kernel_initializer,
            name="router",
            dtype=policy,
        )
        expert_kwargs = {"kernel_initializer": kernel_initializer, "dtype": policy}
        self.expert_gating = keras.layers.EinsumDense(
            "btd,edf->btef",
            output_shape=(None, num_experts, intermediate_dim),
            name="expert_gating",
            **expert_kwargs,
        )
        self.expert_gating_2 = keras.layers.EinsumDense(
            "btd,edf->btef",
            output_shape=(None, num_experts, intermediate_dim),
            name="expert_gating_2",
            **expert_kwargs,
        )
        self.expert_linear = keras.layers.EinsumDense(
            "btef,efd->bted",
            output_shape=(None, num_experts, hidden_dim),
            name="expert_linear",
            **expert_kwargs,
        )

    def build(self, input_shape):
        self.router_scale = self.add_weight(
            name="router_scale", shape=(self.hidden_dim,), initializer="ones"
        )
        self.per_expert_scale = self.add_weight(
            name="per_expert_scale", shape=(self.num_experts,), initializer="ones"
        )
        self.router.build(input_shape)
        self.expert_gating.build(input_shape)
        self.expert_gating_2.build(input_shape)
        self.expert_linear.build((None, None, self.num_experts, self.intermediate_dim))

    def routing_weights(self, router_inputs, direct=False):
        """Float32 `[b, t, e]`: each expert's weight per token, zero when not chosen."""
        x = unscaled_rms_normalize(router_inputs, self.layer_norm_epsilon)
        x = x * ops.cast(self.router_scale, x.dtype) * ops.cast(self.hidden_dim**-0.5, x.dtype)
        probabilities = ops.softmax(ops.cast(call_layer(self.router, direct, x), "float32"))
        top_weights, top_index = ops.top_k(probabilities, self.num_experts_per_token)  # (b, t, k)
        top_weights = top_weights / ops.sum(top_weights, axis=-1, keepdims=True)
        top_weights = top_weights * ops.take(ops.cast(self.per_expert_scale, "float32"), top_index)
        chosen = ops.one_hot(top_index, self.num_experts, dtype="float32")  # (b, t, k, e)
        return ops.sum(chosen * top_weights[..., None], axis=-2)

    def call(self, router_inputs, expert_inputs, direct=False):
        weights = self.routing_weights(router_inputs, direct)  # (b, t, e)
        gate = ops.gelu(call_layer(self.expert_gating, direct, expert_inputs), approximate=True)
        up = call_layer(self.expert_gating_2, direct, expert_inputs)
        outputs = call_layer(self.expert_linear, direct, gate * up)  # (b, t, e, d)
        return ops.einsum("bted,bte->btd", outputs, ops.cast(weights, outputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_experts": self.num_experts,
                "num_experts_per_token": self.num_experts_per_token,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.kernel_initializer)
                ),
            }
        )
        return config
