"""Grouped-query attention with Gemma's options and a read-only KV cache.

Einsum letters, fixed for this file: b batch, t query length, s key length,
n query heads, k key/value heads, g query heads per key/value head (n = k*g),
h head_dim, d hidden_dim.
"""

import keras
from keras import ops

from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.layer_calls import is_plain
from keras_gemma.layers.rms_normalization import RMSNormalization
from keras_gemma.layers.rms_normalization import unscaled_rms_normalize
from keras_gemma.layers.rotary_embedding import RotaryEmbedding

# Added to masked logits. Large but finite so fully masked (padding) rows stay
# finite in float32 and in bfloat16.
MASKED_LOGIT = -1e9


def project_heads(layer, inputs, heads, direct=False):
    """`layer(inputs)` for the (heads, d, h) projections, `[b, t, heads, h]`.

    For one decode token (t == 1) on the direct path, the heads are made the
    batch axis of a batched matmul, `(n, b, d) @ (n, d, h)`: the kernel is
    read in its stored layout. Written as `btd,ndh->btnh`, XLA and PyTorch
    first copy the kernel into (d, n, h) order, at every step (measured:
    1.2 ms per call on Gemma 3 270M with PyTorch, more than the product).
    """
    if inputs.shape[1] == 1 and direct and is_plain(layer):
        batch, _, hidden = ops.shape(inputs)
        rows = ops.broadcast_to(ops.reshape(inputs, (1, batch, hidden)), (heads, batch, hidden))
        projected = ops.matmul(rows, layer.kernel)  # (n, b, h)
        return ops.transpose(projected, (1, 0, 2))[:, None, :, :]  # (b, 1, n, h)
    return call_layer(layer, direct, inputs)


def project_output(layer, attended, direct=False):
    """`layer(attended)` for the (n, h, d) output projection, `[b, t, d]`.

    Same idea as `project_heads` for one decode token: heads as the batch
    axis, then a sum over heads, so the kernel is never transposed.
    """
    if attended.shape[1] == 1 and direct and is_plain(layer):
        per_head = ops.transpose(attended[:, 0], (1, 0, 2))  # (n, b, h)
        return ops.sum(ops.matmul(per_head, layer.kernel), axis=0)[:, None, :]  # (b, 1, d)
    return call_layer(layer, direct, attended)


def soft_cap(logits, cap):
    """`cap * tanh(logits / cap)`; identity when `cap` is None."""
    if cap is None:
        return logits
    return ops.tanh(logits / cap) * cap


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaAttention(keras.layers.Layer):
    """Multi-query / grouped-query attention as Gemma 1, 2 and 3 use it.

    Queries are scaled by `query_pre_attn_scalar ** -0.5` (not always
    `head_dim ** -0.5`: Gemma 2 27B uses 144 and Gemma 3 27B 168). Gemma 3
    normalizes queries and keys over `head_dim` before RoPE. Logits are
    optionally soft-capped (Gemma 2). The mask (causal, padding and sliding
    window) is built by the caller, so one layer serves both layer types.

    With `cache=(key_cache, value_cache)` the layer attends over the cached
    keys and values *and* the new ones, without writing the cache: the new
    keys and values are returned and the caller stores them (in place where
    the backend allows). Keeping writes out of the layer keeps it pure.

    Args:
        num_query_heads: int.
        num_key_value_heads: int, divides `num_query_heads`.
        head_dim: int.
        query_pre_attn_scalar: float. Queries are multiplied by its -1/2 power.
        attention_logit_soft_cap: float or None.
        use_query_key_norm: bool. RMS-normalize queries and keys (Gemma 3).
        rope_wavelength: float. RoPE base for this layer.
        rope_scaling_factor: float. Linear RoPE position scaling.
        layer_norm_epsilon: float. For the query/key norms.
        dropout: float. Dropout on the attention probabilities in training.
        kernel_initializer: initializer name or config of the four projection
            kernels; "zeros" when a loader overwrites them anyway.
        use_value_norm: bool. RMS-normalize values over `head_dim`, no
            weight (Gemma 4 `v_norm`).
        keys_as_values: bool. No value projection: values are the key
            projection's output, before the key norm and RoPE (Gemma 4
            `attention_k_eq_v`, full layers of 26B-A4B and 31B).
        reads_shared_key_value: bool. The layer has no key/value projections
            and attends the `shared_key_value` it is given (Gemma 4 KV
            sharing: the last layers reuse an earlier layer's keys/values).
        norm_scale_offset: float. `scale_offset` of the query/key norms (1.0
            for Gemma 3, 0.0 for Gemma 4).
        partial_rotary_factor: float. See `RotaryEmbedding`.

    Call arguments:
        inputs: `[b, t, d]`.
        positions: int `[b, t]`, RoPE positions of the inputs.
        attention_mask: bool `[b, t, s]`; `s = t` without a cache and
            `s = cache_length + t` with one (cache slots first).
        cache: optional `(key_cache, value_cache)`, each `[b, cache_length, k, h]`.
        shared_key_value: `(key, value)` `[b, t, k, h]`, post-norm and
            post-RoPE, from the producer layer; required exactly when
            `reads_shared_key_value`.
        return_key_value: bool. Also return this call's `(key, value)`.
        training: bool.
        direct: bool. Call the built sublayers' own `call`, without
            `Layer.__call__`'s bookkeeping, and project one decode token with
            the heads as the batch axis (generation's decode path).

    Returns:
        `[b, t, d]`, or `(output, (key, value))` with key and value `[b, t, k, h]`
        when `return_key_value` is true or a cache is given.
    """

    def __init__(
        self,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        query_pre_attn_scalar,
        attention_logit_soft_cap=None,
        use_query_key_norm=False,
        rope_wavelength=10000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        use_value_norm=False,
        keys_as_values=False,
        reads_shared_key_value=False,
        norm_scale_offset=1.0,
        partial_rotary_factor=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.use_query_key_norm = use_query_key_norm
        self.rope_wavelength = rope_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.kernel_initializer = kernel_initializer
        self.groups = num_query_heads // num_key_value_heads
        self.use_value_norm = use_value_norm
        self.keys_as_values = keys_as_values
        self.reads_shared_key_value = reads_shared_key_value
        self.norm_scale_offset = norm_scale_offset
        self.partial_rotary_factor = partial_rotary_factor
        has_key = not reads_shared_key_value
        has_value = has_key and not keys_as_values

        policy = self.dtype_policy
        # Kernel layouts follow keras-hub: query (n, d, h), key/value (k, d, h),
        # output (n, h, d).
        self.query = keras.layers.EinsumDense(
            "btd,ndh->btnh",
            output_shape=(None, num_query_heads, head_dim),
            name="query",
            kernel_initializer=kernel_initializer,
            dtype=policy,
        )
        for name, wanted in (("key", has_key), ("value", has_value)):
            if wanted:
                projection = keras.layers.EinsumDense(
                    "bsd,kdh->bskh",
                    output_shape=(None, num_key_value_heads, head_dim),
                    name=name,
                    kernel_initializer=kernel_initializer,
                    dtype=policy,
                )
                setattr(self, name, projection)
        if use_query_key_norm:
            norm_kwargs = {"scale_offset": norm_scale_offset, "dtype": policy}
            self.query_norm = RMSNormalization(layer_norm_epsilon, name="query_norm", **norm_kwargs)
            if has_key:
                self.key_norm = RMSNormalization(layer_norm_epsilon, name="key_norm", **norm_kwargs)
        self.rotary_embedding = RotaryEmbedding(
            rope_wavelength,
            rope_scaling_factor,
            partial_rotary_factor,
            name="rotary_embedding",
            dtype=policy,
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        self.query.build(input_shape)
        for name in ("key", "value"):
            if hasattr(self, name):
                getattr(self, name).build(input_shape)
        # Built here because the output width `d` is only known now.
        self.attention_output = keras.layers.EinsumDense(
            "btnh,nhd->btd",
            output_shape=(None, hidden_dim),
            name="attention_output",
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
        )
        self.attention_output.build((None, None, self.num_query_heads, self.head_dim))
        if self.use_query_key_norm:
            head_shape = (None, None, None, self.head_dim)
            self.query_norm.build(head_shape)
            if hasattr(self, "key_norm"):
                self.key_norm.build(head_shape)

    def _project_key_value(self, inputs, rotation, direct):
        heads = self.num_key_value_heads
        key = project_heads(self.key, inputs, heads, direct)  # (b, t, k, h)
        if self.keys_as_values:
            value = key  # HF Gemma 4: `value_states = key_states` before k_norm and RoPE.
        else:
            value = project_heads(self.value, inputs, heads, direct)  # (b, t, k, h)
        if self.use_value_norm:
            value = unscaled_rms_normalize(value, self.layer_norm_epsilon)
        if self.use_query_key_norm:
            key = call_layer(self.key_norm, direct, key)
        key = self.rotary_embedding.rotate(key, rotation)
        return key, value

    def call(
        self,
        inputs,
        positions,
        attention_mask,
        cache=None,
        return_key_value=False,
        training=False,
        direct=False,
        shared_key_value=None,
    ):
        if (shared_key_value is not None) != self.reads_shared_key_value:
            raise ValueError(
                f"Attention layer {self.name!r}: `shared_key_value` must be given exactly "
                f"when `reads_shared_key_value` is true (it is {self.reads_shared_key_value})."
            )
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        k, g, h = self.num_key_value_heads, self.groups, self.head_dim

        query = project_heads(self.query, inputs, self.num_query_heads, direct)  # (b, t, n, h)
        if self.use_query_key_norm:
            query = call_layer(self.query_norm, direct, query)
        # One rotation (cos, sin) for queries and keys: same positions.
        rotation = self.rotary_embedding.rotation(positions, h)
        query = self.rotary_embedding.rotate(query, rotation)
        query = query * ops.cast(self.query_pre_attn_scalar**-0.5, query.dtype)
        query = ops.reshape(query, (batch, length, k, g, h))  # (b, t, k, g, h)
        if shared_key_value is not None:
            key, value = shared_key_value  # (b, t, k, h) each, from the producer layer
        else:
            key, value = self._project_key_value(inputs, rotation, direct)

        logits = ops.einsum("btkgh,bskh->bkgts", query, key)
        if cache is not None:
            key_cache, value_cache = cache
            cache_logits = ops.einsum("btkgh,bskh->bkgts", query, key_cache)
            logits = ops.concatenate([cache_logits, logits], axis=-1)
        logits = soft_cap(ops.cast(logits, "float32"), self.attention_logit_soft_cap)
        mask = attention_mask[:, None, None, :, :]  # (b, 1, 1, t, s)
        logits = ops.where(mask, logits, MASKED_LOGIT)
        probabilities = ops.softmax(logits, axis=-1)
        probabilities = ops.cast(probabilities, self.compute_dtype)
        probabilities = call_layer(self.dropout_layer, direct, probabilities, training=training)

        if cache is not None:
            cache_length = ops.shape(key_cache)[1]
            cache_probabilities = probabilities[..., :cache_length]
            probabilities = probabilities[..., cache_length:]
            attended = ops.einsum(
                "bkgts,bskh->btkgh", cache_probabilities, value_cache
            ) + ops.einsum("bkgts,bskh->btkgh", probabilities, value)
        else:
            attended = ops.einsum("bkgts,bskh->btkgh", probabilities, value)
        attended = ops.reshape(attended, (batch, length, k * g, h))
        output = project_output(self.attention_output, attended, direct)  # (b, t, d)
        if return_key_value or cache is not None:
            return output, (key, value)
        return output

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "attention_logit_soft_cap": self.attention_logit_soft_cap,
                "use_query_key_norm": self.use_query_key_norm,
                "rope_wavelength": self.rope_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.kernel_initializer)
                ),
                "use_value_norm": self.use_value_norm,
                "keys_as_values": self.keys_as_values,
                "reads_shared_key_value": self.reads_shared_key_value,
                "norm_scale_offset": self.norm_scale_offset,
                "partial_rotary_factor": self.partial_rotary_factor,
            }
        )
        return config
