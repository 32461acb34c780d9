"""keras-hub's `MockGemma3Tokenizer` (17 pieces: the special ones and seven words), as ours."""

import os

from keras_hub_test_case import test_data_dir

from keras_gemma import Gemma3Tokenizer


def MockGemma3Tokenizer():
    """A `Gemma3Tokenizer` on a 17-piece word vocabulary built in the test."""
    return Gemma3Tokenizer(proto=os.path.join(test_data_dir(), "mock_gemma3_vocab.spm"))
