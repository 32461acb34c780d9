"""keras_gemma: Gemma 1, 2 and 3 text models for Keras 3 on JAX, PyTorch and TensorFlow."""

from keras_gemma import samplers
from keras_gemma.models.chat_session import ChatSession
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.models.preset_registry import list_presets
from keras_gemma.models.preset_registry import preset_config

__version__ = "0.1.0"

__all__ = [
    "ChatSession",
    "GemmaBackbone",
    "GemmaCausalLM",
    "GemmaCausalLMPreprocessor",
    "GemmaTokenizer",
    "list_presets",
    "preset_config",
    "samplers",
]
