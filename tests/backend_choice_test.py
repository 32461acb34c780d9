"""Which backend `import keras_gemma` picks when the user has not chosen one."""

import pytest

from keras_gemma._backend import backend_to_set


def installed(*names):
    return lambda backend: backend in names


@pytest.mark.parametrize(
    "configured, available, expected",
    [
        # Nothing configured: Keras' TensorFlow default if it is there, else JAX, then PyTorch.
        (None, ("jax", "torch", "tensorflow"), None),
        (None, ("jax", "torch"), "jax"),
        (None, ("torch",), "torch"),
        # keras.json as Keras writes it on first import ("tensorflow") on a machine
        # without TensorFlow: it cannot work, so an installed backend is chosen.
        ("tensorflow", ("jax",), "jax"),
        ("tensorflow", ("torch",), "torch"),
        # An installed configured backend is Keras' to use.
        ("tensorflow", ("jax", "tensorflow"), None),
        ("torch", ("jax", "torch"), None),
        # A configured backend that is missing: the first installed one.
        ("jax", ("torch", "tensorflow"), "torch"),
        # A name Keras does not know is left for Keras to report.
        ("theano", ("jax",), None),
        # Nothing installed: nothing to choose.
        (None, (), None),
    ],
)
def test_backend_to_set(configured, available, expected):
    assert backend_to_set(configured, installed(*available)) == expected
