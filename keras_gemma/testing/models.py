"""Tiny random Gemma models whose weights come from NumPy, for tests.

Weights drawn with NumPy from a fixed seed are the same on every backend, so
a model built here under JAX, PyTorch or TensorFlow gives the same logits.
"""

import keras
import numpy as np

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.vocab import DEFAULT_VOCABULARY_SIZE


def random_backbone(seed=0, family="gemma3", vocabulary_size=DEFAULT_VOCABULARY_SIZE, **overrides):
    """A tiny backbone of `family` with every weight drawn from N(0, 0.3²).

    Args:
        seed: int. NumPy seed of the weights.
        family: "gemma" (1), "gemma2" or "gemma3".
        vocabulary_size: int. Defaults to the tiny vocabulary's size.
        **overrides: any config field, `dtype` included.
    """
    backbone = GemmaBackbone(**tiny_config(family, vocabulary_size=vocabulary_size, **overrides))
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))
    return backbone


def assign_scaled_random_weights(model, seed):
    """Re-draws every weight of `model` so that each term of the forward pass matters.

    Norm scales are N(0, 0.5²) (so `1 + scale` is far from 1), embeddings
    N(0, 1), projections N(0, 1 / fan_in). Works on our backbone and on
    keras-hub's, whose variable paths use the same words.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("scale"):
            values = rng.normal(0.0, 0.5, shape)
        elif "embedding" in variable.path:
            values = rng.normal(0.0, 1.0, shape)
        else:
            fan_in = np.prod(shape[:-1]) if "attention_output" in variable.path else shape[-2]
            values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        variable.assign(values.astype("float32"))
    return model


def ragged_inputs(vocabulary_size=DEFAULT_VOCABULARY_SIZE, length=9, padding=4, seed=1):
    """Two rows of token ids in [3, vocabulary_size), the second right-padded by `padding`."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(3, vocabulary_size, (2, length)).astype("int32")
    padding_mask = np.ones((2, length), "int32")
    padding_mask[1, length - padding :] = 0
    token_ids[1, length - padding :] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def logits_of(model, inputs=None):
    """Float32 NumPy logits of `model` on `inputs` (default `ragged_inputs()`)."""
    inputs = ragged_inputs() if inputs is None else inputs
    return np.asarray(keras.ops.convert_to_numpy(model(inputs)), "float32")
