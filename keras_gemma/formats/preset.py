"""Resolution of `from_preset` handles to local files.

A handle is a registered preset name, a local Keras preset directory, a local
Hugging Face transformers directory, a `.gguf` file, or a `kaggle://` /
`hf://` handle. This module only finds files; the loaders live beside it.
"""

import os

KERAS_PRESET = "keras"
KERAS_HUB_PRESET = "keras_hub"
HF_CHECKPOINT = "transformers"
GGUF_FILE = "gguf"

KERAS_TOKENIZER_ASSET = os.path.join("assets", "tokenizer", "vocabulary.spm")
HF_TOKENIZER_FILE = "tokenizer.model"


def load_tokenizer_proto(handle):
    """Returns the SentencePiece model bytes for `handle`.

    Accepts a `.model`/`.spm` file, a Keras preset directory
    (`assets/tokenizer/vocabulary.spm`) or a transformers directory
    (`tokenizer.model`). Other handle kinds are wired in by the preset loader.
    """
    handle = os.fspath(handle)
    if os.path.isfile(handle) and not handle.endswith(".gguf"):
        with open(handle, "rb") as f:
            return f.read()
    for relative in (KERAS_TOKENIZER_ASSET, HF_TOKENIZER_FILE):
        path = os.path.join(handle, relative)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    raise FileNotFoundError(
        f"No SentencePiece vocabulary found for {handle!r}: expected a "
        f"`{KERAS_TOKENIZER_ASSET}` (Keras preset) or `{HF_TOKENIZER_FILE}` "
        "(transformers checkpoint) inside it."
    )
