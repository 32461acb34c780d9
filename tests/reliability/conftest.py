"""Shared fixtures of the reliability suite: one tiny model, built once per session.

Every test here uses tiny models (a few kilobytes of weights, a 400-piece
vocabulary trained on the spot), so the suite runs in about a minute per
backend on two CPU cores.
"""

import os

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.vocab import build_tiny_vocabulary

VOCABULARY_SIZE = 400
SEQUENCE_LENGTH = 32


def random_backbone(seed=0, family="gemma3", **overrides):
    """A tiny backbone whose weights come from NumPy (the same on every backend)."""
    backbone = GemmaBackbone(**tiny_config(family, vocabulary_size=VOCABULARY_SIZE, **overrides))
    assign_random_weights(backbone, seed)
    return backbone


def assign_random_weights(backbone, seed):
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))


def fixed_inputs():
    """A ragged batch of token ids (right-padded) for logits comparisons."""
    rng = np.random.default_rng(1)
    token_ids = rng.integers(3, VOCABULARY_SIZE, (2, 9)).astype("int32")
    padding_mask = np.ones((2, 9), "int32")
    padding_mask[1, -4:] = 0
    token_ids[1, -4:] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def logits_of(model, inputs=None):
    return np.asarray(keras.ops.convert_to_numpy(model(inputs or fixed_inputs())), "float32")


def snapshot(directory):
    """`{relative path: bytes}` of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


@pytest.fixture(scope="session")
def vocabulary_path(tmp_path_factory):
    return build_tiny_vocabulary(tmp_path_factory.mktemp("reliability_vocab"))


@pytest.fixture(scope="session")
def tokenizer(vocabulary_path):
    return GemmaTokenizer(proto=vocabulary_path)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """A Gemma 3-shaped tiny causal LM with a tokenizer (sliding layers, q/k norms)."""
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
    return GemmaCausalLM(random_backbone(seed=0), preprocessor)


@pytest.fixture(scope="session")
def saved_preset(tiny_lm, tmp_path_factory):
    """`tiny_lm` saved as a Keras preset directory (treat as read-only)."""
    directory = str(tmp_path_factory.mktemp("reliability_preset") / "tiny")
    tiny_lm.save_to_preset(directory)
    return directory


@pytest.fixture
def preset_copy(saved_preset, tmp_path):
    """A writable copy of `saved_preset`, for tests that damage files."""
    import shutil

    directory = str(tmp_path / "copy")
    shutil.copytree(saved_preset, directory)
    return directory
