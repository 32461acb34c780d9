"""keras-hub's Gemma 3 class names, for code written against keras-hub.

One set of classes serves every Gemma family here; these subclasses add only
what keras-hub's Gemma 3 classes take differently: `Gemma3Backbone` reads
keras-hub's `Gemma3Backbone` arguments (`intermediate_dim` is one branch,
as ours; sliding layers `i % 6 < 5`, RoPE bases 10k / 1M) unless given one of
our own config keys, and `Gemma3CausalLMPreprocessor` takes keras-hub's vision
arguments at their text-only values. Each saves and loads under its own name.
"""

import keras

from keras_gemma.models import keras_hub_config
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer


@keras.saving.register_keras_serializable(package="keras_gemma")
class Gemma3Backbone(GemmaBackbone):
    """`GemmaBackbone` taking keras-hub's `Gemma3Backbone` arguments.

    Example:
    ```python
    backbone = keras_gemma.Gemma3Backbone(
        vocabulary_size=256, num_layers=6, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, head_dim=4, use_sliding_window_attention=True,
    )
    ```
    """

    @keras_hub_config.accepts_keras_hub_arguments("gemma3")
    def __init__(self, **kwargs):
        super().__init__(**kwargs)


@keras.saving.register_keras_serializable(package="keras_gemma")
class Gemma3Tokenizer(GemmaTokenizer):
    """`GemmaTokenizer` under keras-hub's Gemma 3 name."""


@keras.saving.register_keras_serializable(package="keras_gemma")
class Gemma3CausalLMPreprocessor(GemmaCausalLMPreprocessor):
    """`GemmaCausalLMPreprocessor` taking keras-hub's text-only Gemma 3 arguments.

    Args:
        image_converter: must be None (text only).
        max_images_per_prompt: must be 0.
        num_vision_tokens_per_image: must be 0.
        **kwargs: `GemmaCausalLMPreprocessor` arguments.
    """

    def __init__(
        self,
        tokenizer,
        image_converter=None,
        sequence_length=1024,
        max_images_per_prompt=0,
        num_vision_tokens_per_image=0,
        **kwargs,
    ):
        for name, value, text_only in (
            ("image_converter", image_converter, None),
            ("max_images_per_prompt", max_images_per_prompt, 0),
            ("num_vision_tokens_per_image", num_vision_tokens_per_image, 0),
        ):
            if value != text_only:
                raise ValueError(
                    f"`{name}` must be {text_only!r}: keras_gemma runs Gemma's text models "
                    f"only. Received: {name}={value!r}"
                )
        super().__init__(tokenizer, sequence_length=sequence_length, **kwargs)


@keras.saving.register_keras_serializable(package="keras_gemma")
class Gemma3CausalLM(GemmaCausalLM):
    """`GemmaCausalLM` under keras-hub's Gemma 3 name."""
