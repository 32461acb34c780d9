"""One Gemma transformer block."""

import keras
from keras import ops

from keras_gemma.layers.attention import GemmaAttention
from keras_gemma.layers.feed_forward import GatedFeedForward
from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.masks import attention_mask as build_attention_mask
from keras_gemma.layers.masks import positions_from_padding_mask
from keras_gemma.layers.mixture_of_experts import MixtureOfExperts
from keras_gemma.layers.rms_normalization import RMSNormalization

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaDecoderBlock(keras.layers.Layer):
    """Pre-norm attention and GeGLU feed-forward with residual connections.

    Gemma 1 normalizes only the inputs of each branch; Gemma 2 and 3 also
    normalize each branch's output (`use_post_attention_norm`,
    `use_post_ffw_norm`). The block owns no mask logic: its caller passes the
    mask matching `layer_type`.

    Args:
        hidden_dim: int.
        intermediate_dim: int. Width of one feed-forward branch.
        num_query_heads: int.
        num_key_value_heads: int.
        head_dim: int.
        layer_type: "full_attention" or "sliding_attention".
        sliding_window_size: int or None. Used when the block builds its own
            mask (sliding layers only).
        query_pre_attn_scalar: float.
        attention_logit_soft_cap: float or None.
        use_post_attention_norm: bool.
        use_post_ffw_norm: bool.
        use_query_key_norm: bool.
        rope_wavelength: float. RoPE base of this layer.
        rope_scaling_factor: float.
        layer_norm_epsilon: float.
        dropout: float. Applied to each branch's output in training.
        kernel_initializer: initializer name or config of the attention and
            feed-forward kernels; "zeros" when a loader overwrites them anyway.
        rematerialize: bool. Gradient checkpointing: in training, the plain
            forward pass (`padding_mask` only: no cache, no explicit mask, not
            `direct`) runs through `keras.remat` (`jax.checkpoint`,
            `torch.utils.checkpoint`, `tf.recompute_grad`), so the backward
            pass recomputes the block's activations instead of storing them.
            The gradients are the same; the cached (decode) path never
            rematerializes. Also a public attribute: setting it on a built
            block (what `GemmaBackbone.enable_gradient_checkpointing` does)
            applies from the next call or trace, so `compile()` again. Use it
            rather than `keras.RematScope(mode="full")` around construction:
            that scope also passes the call's `training` flag through
            `keras.remat`, which JAX traces into an array and TensorFlow's
            graph mode refuses as a keyword (only PyTorch trains under it).
            Gemma 4 blocks given `per_layer_input` or `shared_key_value` do
            not rematerialize.
        norm_scale_offset: float. `scale_offset` of every norm (1.0 Gemma 1-3,
            0.0 Gemma 4).
        use_value_norm, keys_as_values, reads_shared_key_value,
        partial_rotary_factor: see `GemmaAttention` (Gemma 4).
        per_layer_input_dim: int. Gemma 4 PLE width `p`; 0 for none. After the
            feed-forward, `h += norm(W_proj(gelu_tanh(W_gate h) * p_l))`.
        use_layer_scalar: bool. Multiply the block's output (the whole
            residual stream) by a learned scalar (Gemma 4 `layer_scalar`).
        num_experts: int. 0 for a dense block; else Gemma 4's mixture of
            experts runs beside the dense feed-forward:
            `m = post_dense_ffw_norm(MLP(pre_ffw_norm(r))) +
            post_expert_norm(MoE(router: r, experts: pre_expert_norm(r)))`,
            then `h = r + post_ffw_norm(m)`.
        num_experts_per_token, expert_intermediate_dim: ints, with experts.

    Call arguments:
        inputs: `[batch, seq, hidden_dim]`.
        padding_mask: `[batch, seq]`, 1 for real tokens. When given (and
            `attention_mask` is not), the block derives positions and its
            causal / sliding mask from it: the plain forward pass.
        positions: int `[batch, seq]`.
        attention_mask: bool `[batch, seq, keys]`.
        cache: optional `(key_cache, value_cache)`, see `GemmaAttention`.
        per_layer_input: `[batch, seq, per_layer_input_dim]` (PLE blocks).
        shared_key_value: `(key, value)` of the producer layer, see
            `GemmaAttention` (KV-sharing blocks).
        return_key_value: bool.
        training: bool.
        direct: bool. Call the built sublayers' own `call`, without
            `Layer.__call__`'s bookkeeping (generation's decode path; see
            `layers/layer_calls.py`).

    Returns:
        `[batch, seq, hidden_dim]`, or `(outputs, (key, value))` when a cache
        is given or `return_key_value` is true.
    """

    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        layer_type=FULL_ATTENTION,
        sliding_window_size=None,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        use_post_attention_norm=False,
        use_post_ffw_norm=False,
        use_query_key_norm=False,
        rope_wavelength=10000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        rematerialize=False,
        norm_scale_offset=1.0,
        use_value_norm=False,
        keys_as_values=False,
        reads_shared_key_value=False,
        partial_rotary_factor=1.0,
        per_layer_input_dim=0,
        use_layer_scalar=False,
        num_experts=0,
        num_experts_per_token=None,
        expert_intermediate_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"`layer_type` must be one of {LAYER_TYPES}. Received: {layer_type!r}")
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.layer_type = layer_type
        self.sliding_window_size = sliding_window_size
        self.query_pre_attn_scalar = (
            head_dim if query_pre_attn_scalar is None else query_pre_attn_scalar
        )
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.use_post_attention_norm = use_post_attention_norm
        self.use_post_ffw_norm = use_post_ffw_norm
        self.use_query_key_norm = use_query_key_norm
        self.rope_wavelength = rope_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.kernel_initializer = kernel_initializer
        self.rematerialize = rematerialize
        self.norm_scale_offset = norm_scale_offset
        self.use_value_norm = use_value_norm
        self.keys_as_values = keys_as_values
        self.reads_shared_key_value = reads_shared_key_value
        self.partial_rotary_factor = partial_rotary_factor
        self.per_layer_input_dim = per_layer_input_dim
        self.use_layer_scalar = use_layer_scalar
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.expert_intermediate_dim = expert_intermediate_dim

        policy = self.dtype_policy

        def norm(name):
            return RMSNormalization(
                layer_norm_epsilon, scale_offset=norm_scale_offset, name=name, dtype=policy
            )

        self.pre_attention_norm = norm("pre_attention_norm")
        self.attention = GemmaAttention(
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            attention_logit_soft_cap=attention_logit_soft_cap,
            use_query_key_norm=use_query_key_norm,
            rope_wavelength=rope_wavelength,
            rope_scaling_factor=rope_scaling_factor,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            kernel_initializer=kernel_initializer,
            use_value_norm=use_value_norm,
            keys_as_values=keys_as_values,
            reads_shared_key_value=reads_shared_key_value,
            norm_scale_offset=norm_scale_offset,
            partial_rotary_factor=partial_rotary_factor,
            name="attention",
            dtype=policy,
        )
        if use_post_attention_norm:
            self.post_attention_norm = norm("post_attention_norm")
        self.pre_ffw_norm = norm("pre_ffw_norm")
        self.feed_forward = GatedFeedForward(
            hidden_dim,
            intermediate_dim,
            kernel_initializer=kernel_initializer,
            name="feed_forward",
            dtype=policy,
        )
        if use_post_ffw_norm:
            self.post_ffw_norm = norm("post_ffw_norm")
        if num_experts:
            self.mixture_of_experts = MixtureOfExperts(
                hidden_dim,
                expert_intermediate_dim,
                num_experts,
                num_experts_per_token,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=kernel_initializer,
                name="mixture_of_experts",
                dtype=policy,
            )
            self.pre_expert_norm = norm("pre_expert_norm")
            self.post_dense_ffw_norm = norm("post_dense_ffw_norm")
            self.post_expert_norm = norm("post_expert_norm")
        if per_layer_input_dim:
            dense_kwargs = {
                "use_bias": False,
                "kernel_initializer": kernel_initializer,
                "dtype": policy,
            }
            self.per_layer_input_gate = keras.layers.Dense(
                per_layer_input_dim, name="per_layer_input_gate", **dense_kwargs
            )
            self.per_layer_projection = keras.layers.Dense(
                hidden_dim, name="per_layer_projection", **dense_kwargs
            )
            self.post_per_layer_input_norm = norm("post_per_layer_input_norm")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy)

    @property
    def use_sliding_window_attention(self):
        """Whether this is a sliding-window layer (keras-hub's attribute name)."""
        return self.layer_type == SLIDING_ATTENTION

    def build(self, input_shape):
        self.pre_attention_norm.build(input_shape)
        self.attention.build(input_shape)
        if self.use_post_attention_norm:
            self.post_attention_norm.build(input_shape)
        self.pre_ffw_norm.build(input_shape)
        self.feed_forward.build(input_shape)
        if self.use_post_ffw_norm:
            self.post_ffw_norm.build(input_shape)
        if self.num_experts:
            self.mixture_of_experts.build(input_shape)
            for norm in (self.pre_expert_norm, self.post_dense_ffw_norm, self.post_expert_norm):
                norm.build(input_shape)
        if self.per_layer_input_dim:
            self.per_layer_input_gate.build(input_shape)
            self.per_layer_projection.build((None, None, self.per_layer_input_dim))
            self.post_per_layer_input_norm.build(input_shape)
        if self.use_layer_scalar:
            self.layer_scalar = self.add_weight(name="layer_scalar", shape=(), initializer="ones")

    def call(
        self,
        inputs,
        padding_mask=None,
        positions=None,
        attention_mask=None,
        cache=None,
        return_key_value=False,
        training=False,
        direct=False,
        per_layer_input=None,
        shared_key_value=None,
    ):
        plain_forward = (
            padding_mask is not None
            and attention_mask is None
            and cache is None
            and not return_key_value
            and not direct
            and per_layer_input is None
            and shared_key_value is None
        )
        if self.rematerialize and training and plain_forward:
            # Only array arguments go through `keras.remat`; `training` stays Python.
            def forward(inputs, padding_mask):
                return self._forward(inputs, padding_mask, training=training)

            return keras.remat(forward)(inputs, padding_mask)
        return self._forward(
            inputs,
            padding_mask,
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            return_key_value=return_key_value,
            training=training,
            direct=direct,
            per_layer_input=per_layer_input,
            shared_key_value=shared_key_value,
        )

    def _forward(
        self,
        inputs,
        padding_mask,
        positions=None,
        attention_mask=None,
        cache=None,
        return_key_value=False,
        training=False,
        direct=False,
        per_layer_input=None,
        shared_key_value=None,
    ):
        if attention_mask is None:
            positions = positions_from_padding_mask(padding_mask)
            slots = ops.arange(ops.shape(inputs)[1], dtype="int32")
            window = self.sliding_window_size if self.layer_type == SLIDING_ATTENTION else None
            attention_mask = build_attention_mask(slots, slots, padding_mask, window)
        normed = call_layer(self.pre_attention_norm, direct, inputs)
        attended = call_layer(
            self.attention,
            direct,
            normed,
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            return_key_value=return_key_value,
            training=training,
            direct=direct,
            shared_key_value=shared_key_value,
        )
        key_value = None
        if cache is not None or return_key_value:
            attended, key_value = attended
        if self.use_post_attention_norm:
            attended = call_layer(self.post_attention_norm, direct, attended)
        x = inputs + call_layer(self.dropout_layer, direct, attended, training=training)

        normed = call_layer(self.pre_ffw_norm, direct, x)
        transformed = call_layer(self.feed_forward, direct, normed, direct=direct)
        if self.num_experts:
            transformed = call_layer(self.post_dense_ffw_norm, direct, transformed)
            expert_inputs = call_layer(self.pre_expert_norm, direct, x)
            experts = call_layer(self.mixture_of_experts, direct, x, expert_inputs, direct=direct)
            transformed = transformed + call_layer(self.post_expert_norm, direct, experts)
        if self.use_post_ffw_norm:
            transformed = call_layer(self.post_ffw_norm, direct, transformed)
        x = x + call_layer(self.dropout_layer, direct, transformed, training=training)
        if self.per_layer_input_dim:
            gate = ops.gelu(call_layer(self.per_layer_input_gate, direct, x), approximate=True)
            projected = call_layer(self.per_layer_projection, direct, gate * per_layer_input)
            x = x + call_layer(self.post_per_layer_input_norm, direct, projected)
        if self.use_layer_scalar:
            x = x * ops.cast(self.layer_scalar, x.dtype)
        if key_value is not None:
            return x, key_value
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, return_key_value=False, cache=None, **kwargs):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not (return_key_value or cache is not None):
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        shape = (batch, length, self.num_key_value_heads, self.head_dim)
        key_value = (
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype=self.compute_dtype),
        )
        return output, key_value

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "layer_type": self.layer_type,
                "sliding_window_size": self.sliding_window_size,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "attention_logit_soft_cap": self.attention_logit_soft_cap,
                "use_post_attention_norm": self.use_post_attention_norm,
                "use_post_ffw_norm": self.use_post_ffw_norm,
                "use_query_key_norm": self.use_query_key_norm,
                "rope_wavelength": self.rope_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.kernel_initializer)
                ),
                "rematerialize": self.rematerialize,
                "norm_scale_offset": self.norm_scale_offset,
                "use_value_norm": self.use_value_norm,
                "keys_as_values": self.keys_as_values,
                "reads_shared_key_value": self.reads_shared_key_value,
                "partial_rotary_factor": self.partial_rotary_factor,
                "per_layer_input_dim": self.per_layer_input_dim,
                "use_layer_scalar": self.use_layer_scalar,
                "num_experts": self.num_experts,
                "num_experts_per_token": self.num_experts_per_token,
                "expert_intermediate_dim": self.expert_intermediate_dim,
            }
        )
        return config
