"""Initial weights, skipped when a loader overwrites every weight anyway."""

from keras_gemma._thread_flag import ThreadFlag

_LOADING = ThreadFlag()


def weights_loaded_later():
    """Layers built inside get zero initial weights instead of random ones.

    For loaders that assign every weight right after construction. Random
    initialization is wasted there, and it is not free: for Gemma 3 270M on a
    2-core CPU it was 2.3 s of a 5.7 s load (126 random kernels, plus the
    compilation of the random functions on JAX), and drawing the 262k x d
    embedding takes a few float32 copies of it in peak memory. Zeros cost one
    allocation in the variable's own dtype.
    """
    return _LOADING.on()


def initializer(default):
    """`default`, or `"zeros"` inside `weights_loaded_later()`."""
    return "zeros" if _LOADING.active else default
