"""Calling built sublayers without `Layer.__call__`'s bookkeeping while decoding.

`Layer.__call__` does real work (building, input casting, masking, name
scopes, training flags). Once a model is built and runs one decode step at a
time, that bookkeeping costs more than the step's math on eager backends:
measured on this repo's 2-core CPU with PyTorch, ~150 us per call against a
few microseconds of arithmetic, hundreds of times per token. Inside
`direct_layer_calls()` the model's layers invoke their sublayers' `call`
directly when that is exactly equivalent: the layer is built, not quantized,
and computes in its variables' dtype (no autocasting needed). Anything else
still goes through `__call__`.
"""

from keras_gemma._thread_flag import ThreadFlag

_DIRECT = ThreadFlag()


def direct_layer_calls(enabled=True):
    """Context manager: built sublayers are called directly in this thread."""
    return _DIRECT.on(enabled)


def direct_calls_active():
    return _DIRECT.active


def is_plain(layer):
    """Whether `layer.call` is exactly what `layer(...)` would do here."""
    return _is_plain(layer)


def call_layer(layer, *args, **kwargs):
    """`layer(*args, **kwargs)`, or `layer.call(...)` inside `direct_layer_calls()`."""
    if _DIRECT.active and _is_plain(layer):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


def _is_plain(layer):
    policy = layer.dtype_policy
    return (
        layer.built
        and getattr(layer, "quantization_mode", None) is None
        and policy.compute_dtype == policy.variable_dtype
    )
