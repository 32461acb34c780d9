"""Names shared by the preset readers and writers: handle kinds and file names.

A handle resolves (see `keras_gemma.formats.loader`) to one of four kinds:
our Keras preset directory, a keras-hub preset directory, a Hugging Face
transformers checkpoint directory, or a GGUF file.
"""

import os

KERAS_PRESET = "keras"
KERAS_HUB_PRESET = "keras_hub"
HF_CHECKPOINT = "transformers"
GGUF_FILE = "gguf"

KERAS_TOKENIZER_ASSET = os.path.join("assets", "tokenizer", "vocabulary.spm")
HF_TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
# Where a preset directory keeps its SentencePiece model (Keras, then transformers).
PROTO_FILES = (KERAS_TOKENIZER_ASSET, HF_TOKENIZER_FILE)
