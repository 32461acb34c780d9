"""keras_gemma: Gemma 1, 2 and 3 text models for Keras 3 on JAX, PyTorch and TensorFlow."""

__version__ = "0.1.0"
