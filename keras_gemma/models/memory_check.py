"""Refusing a model too large for this machine before any weight is allocated.

A config asking for 10^12 parameters would otherwise fail deep in the
backend's allocator (JAX's raw `RESOURCE_EXHAUSTED`, seconds into
TensorFlow's attempt). The estimate counts the variables the config
describes (`formats.variables`) at their stored width.
"""

import math
import os

import keras
import numpy as np

from keras_gemma.formats.variables import variable_shapes


def parameter_count(config):
    """The number of weights of the backbone `config` describes."""
    return sum(math.prod(shape) for shape in variable_shapes(config).values())


def physical_memory_bytes():
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _bytes_per_weight(dtype):
    """The stored width of one weight; a quantized policy map's smallest (int4)."""
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return 0.5
    policy = keras.dtype_policies.get(dtype or keras.config.floatx())
    if policy.quantization_mode is not None:
        return 0.5 if policy.quantization_mode == "int4" else 1.0
    return np.dtype(policy.variable_dtype).itemsize


def check_model_fits(config, dtype):
    """Raises `ValueError` with the estimate when the weights alone exceed this machine's memory.

    Skipped under a `keras.distribution` (the weights are then split across
    devices).
    """
    memory = physical_memory_bytes()
    if memory is None or keras.distribution.distribution() is not None:
        return
    count = parameter_count(config)
    needed = count * _bytes_per_weight(dtype)
    if needed > memory:
        raise ValueError(
            f"This config describes a model of {count:,} parameters: about {needed / 2**30:,.1f} "
            f"GiB for the weights alone, more than this machine's {memory / 2**30:,.1f} GiB of "
            f"memory (vocabulary_size={config['vocabulary_size']}, "
            f"num_layers={config['num_layers']}, hidden_dim={config['hidden_dim']}, "
            f"intermediate_dim={config['intermediate_dim']}). Check the config, or load the "
            "model in a narrower dtype or split across devices with a `keras.distribution`."
        )
