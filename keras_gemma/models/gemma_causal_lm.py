"""Gemma as a causal language model: backbone plus the tied-embedding head."""

import keras
from keras import ops

from keras_gemma.models.gemma_causal_lm_head import logits_from_hidden_states


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaCausalLM(keras.Model):
    """A Gemma backbone with its language-model head.

    Calling the model maps `{"token_ids", "padding_mask"}` `[batch, seq]` to
    next-token logits `[batch, seq, vocabulary_size]` (float32): the final
    hidden states times the transposed token embedding, soft-capped by
    `final_logit_soft_cap` when the backbone has one.

    Args:
        backbone: a `GemmaBackbone`.
        preprocessor: a `GemmaCausalLMPreprocessor` or None.

    Example:
    ```python
    lm = keras_gemma.GemmaCausalLM(backbone)
    logits = lm({"token_ids": ids, "padding_mask": mask})
    ```
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = logits_from_hidden_states(backbone, hidden_states)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.preprocessor = preprocessor

    @classmethod
    def from_preset(cls, handle, dtype=None):
        """Loads a causal LM (with its preprocessor when a vocabulary is found).

        Args:
            handle: a registered preset name (`keras_gemma.list_presets()`), a
                local Keras preset directory, a local transformers checkpoint
                directory, a `.gguf` file, or a `kaggle://` / `hf://` handle.
            dtype: dtype or policy for the weights ("float32", "bfloat16", ...).
        """
        from keras_gemma.formats import loader

        backbone = loader.load_backbone(handle, dtype=dtype)
        return cls(backbone=backbone)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(
                config["preprocessor"]
            )
        return cls(**config)
