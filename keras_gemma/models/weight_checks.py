"""Checks on a model's weights: the size a config asks for, and non-finite values.

`check_model_fits` refuses a model too large for this machine before any
weight is allocated: a config asking for 10^12 parameters would otherwise
fail deep in the backend's allocator (JAX's raw `RESOURCE_EXHAUSTED`,
seconds into TensorFlow's attempt). The estimate counts the variables the
config describes (`formats.variables`) at their stored width.

`warn_non_finite` warns, naming the tensors, when loaded weights or
adapters hold NaN or infinite values (they would generate garbage).
"""

import math
import os
import warnings

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


def _is_finite(value):
    """Whether every element is finite: a sum first (one read, no temporary), exact if not.

    A NaN or inf anywhere makes the sum NaN or inf; a finite sum proves the
    values finite. A non-finite sum of finite values (overflow) is settled by
    the exact elementwise check.
    """
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            return True
        return bool(np.isfinite(value.sum())) or bool(np.isfinite(value).all())
    if "float" not in str(value.dtype):
        return True  # Quantized (integer) weights cannot hold NaN.
    ops = keras.ops
    return bool(ops.isfinite(ops.sum(value))) or bool(ops.all(ops.isfinite(value)))


def warn_non_finite(named_values, source):
    """Warns (`RuntimeWarning`) naming every tensor of `named_values` with a NaN or inf.

    Args:
        named_values: `(name, value)` pairs; values are NumPy arrays or
            backend tensors / variables (checked on their device, one
            reduction each). Integer (quantized) values are skipped.
        source: how the message names where they were loaded from.
    """
    bad = [name for name, value in named_values if not _is_finite(value)]
    if bad:
        shown = ", ".join(f"`{name}`" for name in bad[:5]) + (", ..." if bad[5:] else "")
        warnings.warn(
            f"{len(bad)} tensors loaded from {source} hold NaN or infinite values ({shown}): "
            "the model will generate garbage. The file is damaged, or was saved after training "
            "diverged.",
            RuntimeWarning,
            stacklevel=3,
        )
