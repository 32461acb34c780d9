"""The Gemma transformer: one class for Gemma 1, 2 and 3, architecture as data."""

import math

import keras
from keras import ops

from keras_gemma.layers import architecture
from keras_gemma.layers.decoder_block import FULL_ATTENTION
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.decoder_block import GemmaDecoderBlock
from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.per_layer_embedding import PerLayerEmbedding
from keras_gemma.layers.rms_normalization import RMSNormalization
from keras_gemma.models import backbone_dtype
from keras_gemma.models import float8_order
from keras_gemma.models import keras_hub_config
from keras_gemma.models import keras_hub_task
from keras_gemma.models import layout_map as layout_map_lib
from keras_gemma.models import lora
from keras_gemma.models import preset_loading
from keras_gemma.models.backbone_config import validate_config
from keras_gemma.models.weight_checks import check_model_fits

INITIAL_WEIGHTS = ("random", "zeros")


def _scale_embeddings(x, hidden_dim):
    # HF Gemma: the sqrt(d) normalizer is rounded to the compute dtype first.
    return x * ops.cast(math.sqrt(hidden_dim), x.dtype)


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaBackbone(keras.Model):
    """Gemma 1, 2, 3 and 4 (text) as one functional model, configured by data.

    Token ids go through a tied embedding scaled by `sqrt(hidden_dim)`, then
    `num_layers` decoder blocks whose attention type comes from `layer_types`,
    then a final RMS normalization. The output is the hidden states; the
    language-model head (tied embedding, final soft-cap) is in `GemmaCausalLM`.

    keras-hub's arguments (`use_sliding_window_attention`,
    `query_head_dim_normalize`, with `intermediate_dim` the width of both
    feed-forward branches) build the model keras-hub builds from them; see
    `keras_gemma.models.keras_hub_config` for when a config counts as keras-hub's.

    Args:
        vocabulary_size: int.
        num_layers: int.
        num_query_heads: int.
        num_key_value_heads: int. 1 is multi-query attention.
        hidden_dim: int. Model width.
        intermediate_dim: int. Width of ONE feed-forward branch (HF
            `intermediate_size`).
        head_dim: int.
        layer_types: sequence of "full_attention" / "sliding_attention", one per
            layer. Defaults to all full attention.
        sliding_window_size: int or None. Keys a sliding layer sees, the query
            itself included.
        query_pre_attn_scalar: float. Queries are scaled by its `-1/2` power.
            Defaults to `head_dim`.
        attention_logit_soft_cap: float or None (Gemma 2: 50).
        final_logit_soft_cap: float or None (Gemma 2: 30).
        use_post_attention_norm: bool (Gemma 2 and 3).
        use_post_ffw_norm: bool (Gemma 2 and 3).
        use_query_key_norm: bool (Gemma 3).
        rope_wavelength: float. RoPE base of full-attention layers.
        local_rope_wavelength: float. RoPE base of sliding layers. Defaults to
            `rope_wavelength`.
        rope_scaling_factor: float. Linear RoPE scaling of full-attention layers.
        layer_norm_epsilon: float.
        dropout: float.
        global_head_dim, num_global_key_value_heads, global_keys_as_values,
        global_partial_rotary_factor, normalization_scale, use_value_norm,
        use_layer_scalar, per_layer_input_dim, num_kv_shared_layers,
        use_double_wide_mlp, num_experts, num_experts_per_token,
        expert_intermediate_dim: Gemma 4's fields, described in
            `keras_gemma/layers/architecture.py`; their defaults are Gemma 1-3.
        dtype: dtype or `keras.DTypePolicy` ("float32", "bfloat16",
            "mixed_bfloat16", ...).
        initial_weights: "random" (default) or "zeros": how the weights start.
            Loaders (`from_preset`) pass "zeros" because they overwrite every
            weight: random initialization there is wasted and not free (for
            Gemma 3 270M on a 2-core CPU it was 2.3 s of a 5.7 s load, and
            drawing the 262k x d embedding takes a few float32 copies of it in
            peak memory). Like `keras.layers.Embedding(weights=...)`, it is a
            construction choice, not part of the architecture: `get_config()`
            leaves it out, so a config (and every preset, old or new) builds a
            randomly initialized model.

    Example:
    ```python
    backbone = keras_gemma.GemmaBackbone(
        vocabulary_size=256, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=8,
    )
    hidden = backbone({"token_ids": np.ones((1, 5), "int32"),
                       "padding_mask": np.ones((1, 5), "int32")})
    ```
    """

    @keras_hub_config.accepts_keras_hub_arguments("gemma")
    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        head_dim,
        layer_types=None,
        sliding_window_size=None,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=None,
        use_post_attention_norm=False,
        use_post_ffw_norm=False,
        use_query_key_norm=False,
        rope_wavelength=10000.0,
        local_rope_wavelength=None,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        global_head_dim=None,
        num_global_key_value_heads=None,
        global_keys_as_values=False,
        global_partial_rotary_factor=1.0,
        normalization_scale="one_plus_scale",
        use_value_norm=False,
        use_layer_scalar=False,
        per_layer_input_dim=0,
        num_kv_shared_layers=0,
        use_double_wide_mlp=False,
        num_experts=0,
        num_experts_per_token=None,
        expert_intermediate_dim=None,
        dtype=None,
        initial_weights="random",
        **kwargs,
    ):
        if initial_weights not in INITIAL_WEIGHTS:
            raise ValueError(
                f"`initial_weights` must be one of {INITIAL_WEIGHTS}. "
                f"Received: initial_weights={initial_weights!r}"
            )
        zeros = initial_weights == "zeros"
        if layer_types is None and isinstance(num_layers, int):
            layer_types = [FULL_ATTENTION] * num_layers
        if isinstance(layer_types, str) or not (
            layer_types is None or isinstance(layer_types, (list, tuple))
        ):
            kind = (
                "not a string"
                if isinstance(layer_types, str)
                else f"not {type(layer_types).__name__}"
            )
            raise ValueError(
                f"`layer_types` must be a list with one entry per layer, {kind}. "
                f"Received: {layer_types!r}"
            )
        config = {
            "vocabulary_size": vocabulary_size,
            "num_layers": num_layers,
            "num_query_heads": num_query_heads,
            "num_key_value_heads": num_key_value_heads,
            "hidden_dim": hidden_dim,
            "intermediate_dim": intermediate_dim,
            "head_dim": head_dim,
            "layer_types": list(layer_types or []),
            "sliding_window_size": sliding_window_size,
            "query_pre_attn_scalar": (
                head_dim if query_pre_attn_scalar is None else query_pre_attn_scalar
            ),
            "attention_logit_soft_cap": attention_logit_soft_cap,
            "final_logit_soft_cap": final_logit_soft_cap,
            "use_post_attention_norm": use_post_attention_norm,
            "use_post_ffw_norm": use_post_ffw_norm,
            "use_query_key_norm": use_query_key_norm,
            "rope_wavelength": rope_wavelength,
            "local_rope_wavelength": (
                rope_wavelength if local_rope_wavelength is None else local_rope_wavelength
            ),
            "rope_scaling_factor": rope_scaling_factor,
            "layer_norm_epsilon": layer_norm_epsilon,
            "dropout": dropout,
        }
        arguments = locals()
        gemma4_fields = {name: arguments[name] for name in architecture.GEMMA4_DEFAULTS}
        if isinstance(head_dim, int) and isinstance(num_key_value_heads, int):
            config.update(architecture.resolve_gemma4_fields(config, gemma4_fields))
        else:
            config.update(gemma4_fields)  # validate_config reports the bad head_dim / heads
        validate_config(config)
        check_model_fits(config, dtype)
        norm_scale_offset = 1.0 if normalization_scale == "one_plus_scale" else 0.0

        # === Layers ===
        token_embedding = keras.layers.ReversibleEmbedding(
            **backbone_dtype.embedding_quantization_kwargs(dtype),
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=True,
            embeddings_initializer="zeros"
            if zeros
            else keras.initializers.VarianceScaling(
                scale=1.0, mode="fan_in", distribution="untruncated_normal", seed=None
            ),
            dtype=dtype,
            name="token_embedding",
        )
        transformer_layers = []
        for index, layer_type in enumerate(config["layer_types"]):
            is_sliding = layer_type == SLIDING_ATTENTION
            transformer_layers.append(
                GemmaDecoderBlock(
                    hidden_dim=hidden_dim,
                    num_query_heads=num_query_heads,
                    # Head dim, KV heads, width and the Gemma 4 options of this layer.
                    **architecture.block_arguments(config, index),
                    layer_type=layer_type,
                    sliding_window_size=sliding_window_size if is_sliding else None,
                    query_pre_attn_scalar=config["query_pre_attn_scalar"],
                    attention_logit_soft_cap=attention_logit_soft_cap,
                    use_post_attention_norm=use_post_attention_norm,
                    use_post_ffw_norm=use_post_ffw_norm,
                    use_query_key_norm=use_query_key_norm,
                    rope_wavelength=(
                        config["local_rope_wavelength"] if is_sliding else rope_wavelength
                    ),
                    # Gemma 3 scales only its global layers (HF `rope_parameters`).
                    rope_scaling_factor=1.0 if is_sliding else rope_scaling_factor,
                    layer_norm_epsilon=layer_norm_epsilon,
                    dropout=dropout,
                    kernel_initializer="zeros" if zeros else "glorot_uniform",
                    dtype=dtype,
                    name=f"decoder_block_{index}",
                )
            )
        final_normalization = RMSNormalization(
            layer_norm_epsilon,
            scale_offset=norm_scale_offset,
            dtype=dtype,
            name="final_normalization",
        )
        per_layer_embedding = None
        if per_layer_input_dim:
            per_layer_embedding = PerLayerEmbedding(
                vocabulary_size,
                num_layers,
                per_layer_input_dim,
                hidden_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                norm_scale_offset=norm_scale_offset,
                embeddings_initializer="zeros" if zeros else "uniform",
                kernel_initializer="zeros" if zeros else "glorot_uniform",
                dtype=dtype,
                name="per_layer_embedding",
            )
        kv_sources = architecture.kv_source_layers(config)

        # === Functional Model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = _scale_embeddings(token_embedding(token_ids), hidden_dim)
        per_layer_inputs = None
        if per_layer_embedding is not None:
            per_layer_inputs = per_layer_embedding(token_ids, x)  # (b, t, L, p)
        key_values = {}  # producer index -> its (key, value), for KV-sharing layers
        for index, layer in enumerate(transformer_layers):
            extra = {}
            if per_layer_inputs is not None:
                extra["per_layer_input"] = per_layer_inputs[:, :, index, :]
            if kv_sources[index] != index:
                extra["shared_key_value"] = key_values[kv_sources[index]]
            if index in kv_sources[len(kv_sources) - num_kv_shared_layers :]:
                x, key_values[index] = layer(
                    x, padding_mask=padding_mask, return_key_value=True, **extra
                )
            else:
                x = layer(x, padding_mask=padding_mask, **extra)
        sequence_output = final_normalization(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )
        if dtype is not None:
            # `Functional.__init__` drops `dtype`: set it so `get_config` (and
            # `.keras` files) record the policy the layers were built with.
            self.dtype_policy = dtype
            float8_order.order_like_quantize(self)

        # Layers are attached after `Model.__init__` (PyTorch modules refuse
        # attributes before it).
        self.token_embedding = token_embedding
        self.transformer_layers = transformer_layers
        self.final_normalization = final_normalization
        self.per_layer_embedding = per_layer_embedding
        # For each layer, the index of the layer whose keys/values it attends.
        self.kv_source_layers = kv_sources

        # === Config ===
        for name, value in config.items():
            setattr(self, name, value)

    def embed(self, token_ids, direct=False):
        """Scaled token embeddings `[b, t, hidden_dim]` (used by generation).

        `direct=True` calls the built embedding's `call` without
        `Layer.__call__`'s bookkeeping (see `layers/layer_calls.py`).
        """
        embeddings = call_layer(self.token_embedding, direct, token_ids)
        return _scale_embeddings(embeddings, self.hidden_dim)

    @classmethod
    def from_preset(cls, handle, dtype=None):
        """Loads a backbone from a preset name, directory, `.gguf` file or hub handle.

        Args:
            handle: see `keras_gemma.GemmaCausalLM.from_preset`.
            dtype: dtype or policy for the weights ("float32", "bfloat16", ...).
        """
        return preset_loading.load_backbone(cls, handle, dtype=dtype)

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "head_dim": self.head_dim,
            "layer_types": list(self.layer_types),
            "sliding_window_size": self.sliding_window_size,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "attention_logit_soft_cap": self.attention_logit_soft_cap,
            "final_logit_soft_cap": self.final_logit_soft_cap,
            "use_post_attention_norm": self.use_post_attention_norm,
            "use_post_ffw_norm": self.use_post_ffw_norm,
            "use_query_key_norm": self.use_query_key_norm,
            "rope_wavelength": self.rope_wavelength,
            "local_rope_wavelength": self.local_rope_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
            **{name: getattr(self, name) for name in architecture.GEMMA4_DEFAULTS},
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(backbone_dtype.config_dtype_policy(self)),
        }

    get_layout_map = layout_map_lib.ConfigMethod(layout_map_lib.backbone_layout_map)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):
            dtype = keras.dtype_policies.deserialize(dtype)
        return cls(dtype=dtype, **config)

    # === LoRA (implemented in `keras_gemma.models.lora`) ===

    def enable_lora(
        self, rank, alpha=None, target_names=("query", "value"), target_layer_names=None
    ):
        """Freezes every weight and adds trainable LoRA adapters.

        Uses Keras' own `enable_lora` on the projection layers of every block.
        `summary()` then counts only the adapters as trainable.

        Args:
            rank: int >= 1.
            alpha: float or None. Updates are scaled by `alpha / rank`;
                None means `alpha = rank`.
            target_names: layer names among "query", "key", "value",
                "attention_output", "ffw_gating", "ffw_gating_2",
                "ffw_linear", or a set name: "attention" (the four attention
                projections) or "all" (attention and feed-forward).
            target_layer_names: keras-hub's name for `target_names`; its layer
                names ("query_dense", "value_dense", ...) are accepted too.

        Example:
        ```python
        backbone.enable_lora(rank=4, target_names="attention")
        ```
        """
        target_names = keras_hub_task.lora_target_names(target_names, target_layer_names)
        lora.enable_lora(self, rank, alpha=alpha, target_names=target_names)

    def save_lora_weights(self, path):
        """Writes only the adapter (`.lora.h5` or `.safetensors`): rank, alpha, targets."""
        lora.save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Loads an adapter file; enables LoRA from the file when it is not yet enabled."""
        lora.load_lora_weights(self, path)

    def merge_lora_weights(self):
        """Folds the adapters into the base kernels and removes them."""
        lora.merge_lora_weights(self)

    def export_lora_to_peft(self, directory, overwrite=False):
        """Writes the adapter as Hugging Face PEFT files (`adapter_config.json`, safetensors).

        A `directory` holding other files is refused unless `overwrite=True`.
        """
        lora.export_lora_to_peft(self, directory, overwrite=overwrite)

    def enable_gradient_checkpointing(self):
        """Recomputes each block's activations in the backward pass to save memory.

        Sets `rematerialize = True` on every `GemmaDecoderBlock` (see there):
        training memory then grows with one block's activations plus the
        block inputs, not every intermediate of every block; the gradients
        are the same and generation is unaffected. Calling it again changes
        nothing. Call `compile()` afterwards.
        """
        for block in self.transformer_layers:
            block.rematerialize = True
