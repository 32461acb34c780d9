"""Calling a built sublayer with or without `Layer.__call__`'s bookkeeping.

`Layer.__call__` does real work (building, input casting, masking, name
scopes, training flags). Once a model is built and runs one decode step at a
time, that bookkeeping costs more than the step's math on eager backends:
measured on this repo's 2-core CPU with PyTorch, ~150 us per call against a
few microseconds of arithmetic, hundreds of times per token. Generation's
decode path therefore passes `direct=True` down the layers (a call argument
of `GemmaDecoderBlock`, `GemmaAttention`, `GatedFeedForward` and
`GemmaBackbone.embed`), and each of them calls its sublayers through
`call_layer(sublayer, direct, ...)`: `sublayer.call(...)` when that is exactly
what `sublayer(...)` would do (the layer is built, not quantized, and computes
in its variables' dtype), `sublayer(...)` otherwise.

A quantized layer may have a decode kernel (`DECODE_KERNELS`, filled by
`generation/kernels.py` on backends with fast weight-only quantized
matmuls): on the direct path `call_layer` uses it when it accepts the input
(it returns None otherwise). The layers stay backend-neutral: they only look
the kernel up.
"""

import weakref

# layer -> `kernel(inputs)`: the layer's output, or None when the kernel does
# not take these inputs (the layer's own call runs then).
DECODE_KERNELS = weakref.WeakKeyDictionary()
# The same for a quantized `ReversibleEmbedding`'s reverse (logits) projection.
REVERSE_KERNELS = weakref.WeakKeyDictionary()


def is_plain(layer):
    """Whether `layer.call(...)` is exactly what `layer(...)` would do here."""
    policy = layer.dtype_policy
    return (
        layer.built
        and getattr(layer, "quantization_mode", None) is None
        and policy.compute_dtype == policy.variable_dtype
    )


def call_layer(layer, direct, /, *args, **kwargs):
    """`layer(*args, **kwargs)`, or `layer.call(*args, **kwargs)` when `direct` allows.

    `direct` is positional-only, so a layer that takes the mode itself gets it
    as a keyword too: `call_layer(self.attention, direct, x, direct=direct)`.
    """
    if direct:
        if is_plain(layer):
            return layer.call(*args, **kwargs)
        kernel = DECODE_KERNELS.get(layer)
        if kernel is not None and not kwargs and len(args) == 1:
            result = kernel(args[0])
            if result is not None:
                return result
    return layer(*args, **kwargs)
