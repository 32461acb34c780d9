"""One order of float8 variables, however the layer became float8.

`Model.quantize("float8")` adds a layer's scale and amax-history variables
after its existing kernel, while a layer built float8 from its policy (as
`from_config` builds a quantized model's layers) creates them before the
kernel. `get_weights()` / `set_weights()` are positional, so the two orders
made `from_config(get_config())` then `set_weights(get_weights())` fail with
a shape mismatch. A model built from a float8 policy puts its variables in
the order `quantize` leaves: kernel (and any bias) first, then the scales.
Keras keeps no public handle on that order, so this reorders the layer's own
tracked list (`_trainable_variables`).
"""

_FLOAT8_SUFFIXES = ("_scale", "_amax_history")


def order_like_quantize(model):
    """Reorders the variables of `model`'s float8 layers as `quantize("float8")` leaves them."""
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "quantization_mode", None) != "float8":
            continue
        variables = layer._trainable_variables
        scales = [variable for variable in variables if variable.name.endswith(_FLOAT8_SUFFIXES)]
        others = [
            variable for variable in variables if not variable.name.endswith(_FLOAT8_SUFFIXES)
        ]
        variables[:] = others + scales
