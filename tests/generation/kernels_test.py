"""Decode kernels for quantized layers (`generation/kernels.py`).

On PyTorch every int8/int4 layer, and the tied embedding's logits projection,
get a packed weight-only kernel; its output is checked against the layer's
own (Keras) output. On JAX and TensorFlow no kernel is registered: their
compilers have no faster spelling (figures in the module docstring).
"""

import keras
import numpy as np
import pytest

from keras_gemma.generation import decoding
from keras_gemma.generation import kernels
from keras_gemma.generation import kv_cache
from keras_gemma.layers import layer_calls
from keras_gemma.layers.tied_logits import logits_from_hidden_states
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing import models

TORCH = keras.config.backend() == "torch"
# Widths the PyTorch int4 kernel takes (output channels in multiples of 16).
WIDE = {"hidden_dim": 64, "intermediate_dim": 128, "head_dim": 16}


def quantized_backbone(mode, seed=0):
    backbone = models.random_backbone(seed, **WIDE)
    backbone.quantize(mode)
    return backbone


def quantized_layers(backbone):
    return [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None) in ("int8", "int4")
    ]


def to_numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), "float32")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_kernels_registered_per_backend(mode):
    backbone = quantized_backbone(mode)
    generation = kernels.prepare(backbone)
    layers = quantized_layers(backbone)
    embedding = backbone.token_embedding
    registered = [layer for layer in layers if layer in layer_calls.DECODE_KERNELS]
    if not TORCH:
        assert generation == 0 and not kernels.supported()
        assert registered == [] and embedding not in layer_calls.REVERSE_KERNELS
        return
    assert kernels.supported()
    dense_layers = [layer for layer in layers if layer is not embedding]
    assert set(registered) >= set(dense_layers)
    assert embedding in layer_calls.REVERSE_KERNELS
    # int4 embeddings also get a lookup that unpacks only the rows asked for.
    assert (embedding in layer_calls.DECODE_KERNELS) == (mode == "int4")
    # Nothing changed: nothing is packed again.
    assert kernels.prepare(backbone) == generation


@pytest.mark.skipif(not TORCH, reason="the packed kernels are PyTorch's (see module docstring)")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_kernel_outputs_follow_the_layers_own(mode):
    """Each kernel's output is as close to the float32 layer's as Keras' quantized call is.

    int8 packs exactly Keras' grid (Keras also rounds the inputs to int8; the
    kernel rounds them to bfloat16). int4 re-quantizes Keras' dequantized
    kernel in its own groups (Keras groups an EinsumDense kernel along other
    axes), so its error is held to Keras' own int4 error plus a margin.
    """
    rng = np.random.default_rng(1)
    reference = models.random_backbone(0, **WIDE)
    backbone = quantized_backbone(mode)
    kernels.prepare(backbone)
    float_layers = {layer.path: layer for layer in reference._flatten_layers(include_self=False)}
    for layer in quantized_layers(backbone):
        if layer is backbone.token_embedding:
            continue
        shape = (3, 2) + tuple(layer._build_shapes_dict["input_shape"][2:])
        inputs = keras.ops.convert_to_tensor(rng.standard_normal(shape).astype("float32"))
        exact = to_numpy(float_layers[layer.path](inputs))
        own = to_numpy(layer(inputs))
        got = to_numpy(layer_calls.call_layer(layer, True, inputs))
        assert got.shape == own.shape, layer.path
        own_error = np.abs(own - exact).max()
        margin = 1.1 if mode == "int8" else 2.0
        assert np.abs(got - exact).max() <= margin * own_error + 0.01 * np.abs(exact).max()
        # Off the direct path the layer's own call runs.
        np.testing.assert_array_equal(to_numpy(layer_calls.call_layer(layer, False, inputs)), own)

    hidden = keras.ops.convert_to_tensor(rng.standard_normal((2, 1, 64)).astype("float32"))
    exact = to_numpy(logits_from_hidden_states(reference, hidden))
    own = to_numpy(logits_from_hidden_states(backbone, hidden))
    got = to_numpy(logits_from_hidden_states(backbone, hidden, decoding=True))
    own_error = np.abs(own - exact).max()
    assert np.abs(got - exact).max() <= 2.0 * own_error + 0.01 * np.abs(exact).max()
    if mode == "int4":
        token_ids = keras.ops.convert_to_tensor(np.array([[0, 5, 399]], "int32"))
        exact = to_numpy(reference.token_embedding(token_ids))
        own = to_numpy(backbone.token_embedding(token_ids))
        got = to_numpy(layer_calls.call_layer(backbone.token_embedding, True, token_ids))
        own_error = np.abs(own - exact).max()
        assert np.abs(got - exact).max() <= 2.0 * own_error + 0.01 * np.abs(exact).max()


@pytest.mark.skipif(not TORCH, reason="the packed kernels are PyTorch's (see module docstring)")
def test_layers_the_kernels_do_not_take_are_not_tried_again():
    # The default tiny widths: key/value have 8 output channels, which the
    # int4 kernel does not take.
    backbone = models.random_backbone(0)
    backbone.quantize("int4")
    generation = kernels.prepare(backbone)
    key = backbone.transformer_layers[0].attention.key
    assert key not in layer_calls.DECODE_KERNELS
    assert kernels.prepare(backbone) == generation


@pytest.mark.skipif(not TORCH, reason="the packed kernels are PyTorch's (see module docstring)")
def test_assigned_weights_are_packed_again():
    backbone = quantized_backbone("int8")
    generation = kernels.prepare(backbone)
    layer = backbone.transformer_layers[0].feed_forward.ffw_gating
    inputs = keras.ops.convert_to_tensor(np.ones((1, 1, 64), "float32"))
    before = to_numpy(layer_calls.call_layer(layer, True, inputs))
    layer._kernel.assign(keras.ops.negative(layer._kernel))
    assert kernels.prepare(backbone) > generation
    after = to_numpy(layer_calls.call_layer(layer, True, inputs))
    np.testing.assert_allclose(after, -before, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(after, to_numpy(layer(inputs)), rtol=0.05, atol=0.05)


@pytest.mark.skipif(not TORCH, reason="the packed kernels are PyTorch's (see module docstring)")
def test_lora_layers_keep_their_own_call():
    backbone = quantized_backbone("int8")
    backbone.enable_lora(2)
    kernels.prepare(backbone)
    layer = backbone.transformer_layers[0].attention.query
    layer.lora_kernel_b.assign(keras.ops.ones(layer.lora_kernel_b.shape))
    inputs = keras.ops.convert_to_tensor(np.ones((1, 1, 64), "float32"))
    np.testing.assert_array_equal(
        to_numpy(layer_calls.call_layer(layer, True, inputs)), to_numpy(layer(inputs))
    )


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_decode_step_logits_follow_the_quantized_model(mode):
    """A decode step on the kernels gives the quantized model's own next-token logits."""
    backbone = quantized_backbone(mode, seed=3)
    kernels.prepare(backbone)
    token_ids = np.array([[2, 17, 41, 9, 33]], "int32")
    full = to_numpy(
        GemmaCausalLM(backbone=backbone, preprocessor=None)(
            {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
        )
    )
    caches = kv_cache.empty_caches(backbone, 1, 16, "float32")
    steps = []
    for position, token in enumerate(token_ids[0]):
        logits, caches = decoding.next_logits(
            backbone,
            caches,
            keras.ops.convert_to_tensor(np.array([token], "int32")),
            keras.ops.convert_to_tensor(np.array([position], "int32")),
            keras.ops.convert_to_tensor(np.array([True])),
        )
        steps.append(to_numpy(logits)[0])
    steps = np.stack(steps)
    scale = np.abs(full[0]).max()
    assert np.abs(steps - full[0]).max() <= (0.05 if mode == "int8" else 0.1) * scale
