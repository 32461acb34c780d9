"""keras_gemma: Gemma 1, 2 and 3 text models for Keras 3 on JAX, PyTorch and TensorFlow."""

from keras_gemma._backend import choose_backend

choose_backend()

from keras_gemma import samplers  # noqa: E402
from keras_gemma._version import __version__  # noqa: E402, F401
from keras_gemma.formats.registry import list_presets  # noqa: E402
from keras_gemma.formats.registry import preset_config  # noqa: E402
from keras_gemma.generation.chat_session import ChatSession  # noqa: E402
from keras_gemma.models.gemma3_names import Gemma3Backbone  # noqa: E402
from keras_gemma.models.gemma3_names import Gemma3CausalLM  # noqa: E402
from keras_gemma.models.gemma3_names import Gemma3CausalLMPreprocessor  # noqa: E402
from keras_gemma.models.gemma3_names import Gemma3Tokenizer  # noqa: E402
from keras_gemma.models.gemma_backbone import GemmaBackbone  # noqa: E402
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM  # noqa: E402
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor  # noqa: E402
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer  # noqa: E402

__all__ = [
    "ChatSession",
    "Gemma3Backbone",
    "Gemma3CausalLM",
    "Gemma3CausalLMPreprocessor",
    "Gemma3Tokenizer",
    "GemmaBackbone",
    "GemmaCausalLM",
    "GemmaCausalLMPreprocessor",
    "GemmaTokenizer",
    "list_presets",
    "preset_config",
    "samplers",
]
