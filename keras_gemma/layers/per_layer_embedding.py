"""Gemma 4's per-layer input embeddings (PLE)."""

import math

import keras
from keras import ops

from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.rms_normalization import RMSNormalization


@keras.saving.register_keras_serializable(package="keras_gemma")
class PerLayerEmbedding(keras.layers.Layer):
    """One small input vector per decoder layer, from the token and its context.

    HF `Gemma4TextModel.get_per_layer_inputs` / `project_per_layer_inputs`:
    `token = E_ple[ids] * sqrt(p)` (the scale rounded to the compute dtype,
    like the main embedding), `context = norm(embeddings @ W * d^-1/2)`, both
    reshaped to `[b, t, num_layers, p]`, and the result is
    `(context + token) * 2^-1/2`. Layer `l` reads `[:, :, l]`.

    Args:
        vocabulary_size: int.
        num_layers: int.
        per_layer_input_dim: int `p` (256 in Gemma 4 E2B / E4B).
        hidden_dim: int `d`.
        layer_norm_epsilon: float.
        norm_scale_offset: float. `scale_offset` of the projection norm.
        embeddings_initializer: initializer of the per-layer token table.
        kernel_initializer: initializer of the context projection.

    Call arguments:
        token_ids: int `[b, t]`.
        embeddings: `[b, t, d]`, the scaled main token embeddings.
        direct: bool. See `layers/layer_calls.py`.

    Returns:
        `[b, t, num_layers, p]`.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        per_layer_input_dim,
        hidden_dim,
        layer_norm_epsilon=1e-6,
        norm_scale_offset=0.0,
        embeddings_initializer="uniform",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.per_layer_input_dim = per_layer_input_dim
        self.hidden_dim = hidden_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm_scale_offset = norm_scale_offset
        self.embeddings_initializer = embeddings_initializer
        self.kernel_initializer = kernel_initializer
        policy = self.dtype_policy
        width = num_layers * per_layer_input_dim
        self.per_layer_token_embedding = keras.layers.Embedding(
            vocabulary_size,
            width,
            embeddings_initializer=embeddings_initializer,
            name="per_layer_token_embedding",
            dtype=policy,
        )
        self.per_layer_model_projection = keras.layers.Dense(
            width,
            use_bias=False,
            kernel_initializer=kernel_initializer,
            name="per_layer_model_projection",
            dtype=policy,
        )
        self.per_layer_projection_norm = RMSNormalization(
            layer_norm_epsilon,
            scale_offset=norm_scale_offset,
            name="per_layer_projection_norm",
            dtype=policy,
        )

    def build(self, token_ids_shape, embeddings_shape=None):
        self.per_layer_token_embedding.build(token_ids_shape)
        self.per_layer_model_projection.build((None, None, self.hidden_dim))
        self.per_layer_projection_norm.build((None, None, None, self.per_layer_input_dim))

    def call(self, token_ids, embeddings, direct=False):
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        shape = (batch, length, self.num_layers, self.per_layer_input_dim)
        token = call_layer(self.per_layer_token_embedding, direct, token_ids)
        token = token * ops.cast(math.sqrt(self.per_layer_input_dim), token.dtype)
        token = ops.reshape(token, shape)  # (b, t, L, p)
        context = call_layer(self.per_layer_model_projection, direct, embeddings)
        context = ops.reshape(context * ops.cast(self.hidden_dim**-0.5, context.dtype), shape)
        context = call_layer(self.per_layer_projection_norm, direct, context)  # (b, t, L, p)
        return (context + token) * ops.cast(2.0**-0.5, context.dtype)

    def compute_output_shape(self, token_ids_shape, embeddings_shape=None):
        return tuple(token_ids_shape) + (self.num_layers, self.per_layer_input_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "per_layer_input_dim": self.per_layer_input_dim,
                "hidden_dim": self.hidden_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "norm_scale_offset": self.norm_scale_offset,
                "embeddings_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.embeddings_initializer)
                ),
                "kernel_initializer": keras.initializers.serialize(
                    keras.initializers.get(self.kernel_initializer)
                ),
            }
        )
        return config
