"""keras_gemma: Gemma 1, 2 and 3 text models for Keras 3 on JAX, PyTorch and TensorFlow.

`import keras_gemma` imports Keras and the public classes. In the
`keras-gemma` command's own process (`keras-gemma ...` or
`python -m keras_gemma ...`) the public names are imported on first use
instead, so that `--help` and argument errors answer without importing Keras
or a backend (see `keras_gemma.cli`).
"""

import importlib
import os
import sys

from keras_gemma._backend import choose_backend
from keras_gemma._version import __version__  # noqa: F401

choose_backend()

# Public name -> the module that defines it.
_EXPORTS = {
    "ChatSession": "keras_gemma.generation.chat_session",
    "Gemma3Backbone": "keras_gemma.models.gemma3_names",
    "Gemma3CausalLM": "keras_gemma.models.gemma3_names",
    "Gemma3CausalLMPreprocessor": "keras_gemma.models.gemma3_names",
    "Gemma3Tokenizer": "keras_gemma.models.gemma3_names",
    "GemmaBackbone": "keras_gemma.models.gemma_backbone",
    "GemmaCausalLM": "keras_gemma.models.gemma_causal_lm",
    "GemmaCausalLMPreprocessor": "keras_gemma.models.gemma_causal_lm_preprocessor",
    "GemmaTokenizer": "keras_gemma.models.gemma_tokenizer",
    "list_presets": "keras_gemma.formats.registry",
    "preset_config": "keras_gemma.formats.registry",
    "samplers": "keras_gemma.samplers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_gemma' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "samplers" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _is_command_line_process():
    # The console script sets argv[0] to its path; `python -m` sets it to
    # "-m" while it imports the package.
    return os.path.basename(sys.argv[0] if sys.argv else "") in ("keras-gemma", "-m")


if not _is_command_line_process():
    for _name in __all__:
        __getattr__(_name)
