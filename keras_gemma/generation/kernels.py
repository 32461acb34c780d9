"""Weight-only quantized matmuls for decoding, chosen per backend.

Keras' int8 and int4 layers compute each call on their stored integers in a
way that is slow on a CPU: int8 quantizes the activations too and runs an
integer dot; int4 unpacks its nibbles and dequantizes the whole kernel every
step. Measured on a 2-core CPU (AVX512-BF16), the 262,144 x 640 logits head of
Gemma 3 270M at one decode row (`benchmarks/matvec_kernels.py`):

- PyTorch: float32 73 ms, bfloat16 33 ms, `aten._weight_int8pack_mm` 17.5 ms,
  `aten._weight_int4pack_mm_for_cpu` 5.4 ms (both with bfloat16 activations;
  with float32 activations they are slower than float32). So on PyTorch every
  quantized layer, and the quantized tied embedding's logits projection, get
  a kernel on those packed weights here.
- JAX 0.10 (XLA:CPU) and TensorFlow 2.21: float32 42-73 ms; every bfloat16,
  int8-to-float and int8 x int8 spelling measured is slower (390-610 ms on
  XLA, 72-307 ms on TensorFlow), with XNNPACK, YNNPACK or oneDNN fusions on
  or off. Their compilers have no faster weight-only matmul for one row on
  this CPU, so they keep Keras' own calls (no kernels registered).

`prepare(backbone)` packs the weights once, from what the layer itself
computes (its output for an identity input, LoRA switched off), so any of
Keras' int8/int4 layouts (per channel, sub-channel groups with zero points)
is read the same way: int8 as per-output-channel symmetric int8 (exact for
Keras' own int8 grid), int4 as asymmetric groups of `INT4_GROUP` input
channels. It repacks a layer whose variables changed (a new `quantize`, an
assignment), and returns a number that changes whenever it repacked, for
callers that cache programs holding the packed weights. Prefill chunks use
them too: a 32-token chunk of Gemma 3 270M takes 0.21 s (int8) and 0.23 s
(int4) with them, 0.55 s and 1.33 s through Keras' layers, 0.31 s in float32.
Registered kernels are used on the direct (generation) path only: training,
`__call__` and `score()` keep Keras' layers.
"""

import math
import weakref

import keras

from keras_gemma.layers.layer_calls import DECODE_KERNELS
from keras_gemma.layers.layer_calls import REVERSE_KERNELS

BACKEND = keras.config.backend()
# Input channels per int4 scale/zero group (PyTorch takes 32, 64, 128 or 256).
INT4_GROUP = 128
# The PyTorch int4 kernel needs output channels in multiples of 16.
_INT4_OUTPUT_MULTIPLE = 16

_generation = [0]
# layer -> the fingerprint of its variables when it was last packed.
_packed = weakref.WeakKeyDictionary()


def supported():
    """Whether this backend has the packed kernels (PyTorch with the aten ops)."""
    if BACKEND != "torch":
        return False
    import torch

    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu"
    )


def prepare(backbone):
    """Registers decode kernels for `backbone`'s quantized layers; returns a generation number.

    A no-op (returning 0) on backends without the kernels. A layer whose
    shapes the kernels do not take gets none, and is not tried again until
    its variables change.
    """
    if not supported():
        return 0
    for layer in backbone._flatten_layers(include_self=False):
        mode = getattr(layer, "quantization_mode", None)
        if mode not in ("int8", "int4") or not layer.built:
            continue
        fingerprint = _fingerprint(layer)
        if _packed.get(layer) == fingerprint:
            continue
        kernel, lookup = _make_kernels(layer, mode)
        _packed[layer] = fingerprint
        _generation[0] += 1
        # An embedding's matmul is its reverse (logits) call; its lookup, if
        # any, is its own call. Any other layer's matmul is its own call.
        entries = ((REVERSE_KERNELS, kernel), (DECODE_KERNELS, lookup))
        if not _is_embedding(layer):
            entries = ((DECODE_KERNELS, kernel),)
        for table, entry in entries:
            table.pop(layer, None)
            if entry is not None:
                table[layer] = entry
    return _generation[0]


def _is_embedding(layer):
    return isinstance(layer, keras.layers.Embedding)


def _fingerprint(layer):
    """Changes when any of the layer's non-trainable (quantized) variables changes."""
    values = [v.value for v in layer.non_trainable_variables]
    return (layer.quantization_mode,) + tuple((v.data_ptr(), v._version) for v in values)


def _make_kernels(layer, mode):
    """`(kernel, lookup)` for `layer`: its packed matmul (or None) and, for an
    int4 embedding, a lookup that unpacks only the rows asked for (else None)."""
    import torch

    if mode == "int8":
        if _is_embedding(layer) and _tied_int8_table(layer):
            # Keras' own table is already (vocabulary, width) int8 with one
            # scale per row (dividing): read it in place, no second copy.
            quantized = layer._embeddings.value.detach()
            scale = 1.0 / layer.embeddings_scale.value.detach().float()
        else:
            dense = _float_kernel(layer)  # (out, in) float32, or None
            if dense is None:
                return None, None
            scale = dense.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            quantized = torch.round(dense / scale[:, None]).clamp(-127, 127).to(torch.int8)
        scale = scale.to(torch.bfloat16)
        out_features, in_features = quantized.shape

        def matmul(rows):
            return torch.ops.aten._weight_int8pack_mm(rows, quantized, scale)

        return _Kernel(layer, matmul, in_features, out_features), None

    dense = _float_kernel(layer)
    grid = None if dense is None else _int4_grid(dense)
    if grid is None:
        return None, None
    levels, step, low, group = grid
    out_features, in_features = levels.shape
    # The kernel computes (q - 8) * scale + zero per group.
    scale_zero = torch.stack([step, low + 8.0 * step], dim=-1).transpose(0, 1)
    scale_zero = scale_zero.contiguous().to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 2)

    def matmul(rows):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group, scale_zero)

    lookup = _Lookup(levels, step, low, group) if _is_embedding(layer) else None
    return _Kernel(layer, matmul, in_features, out_features), lookup


def _int4_grid(dense):
    """`dense` `(out, in)` as int4 levels `(out, in)` int32, step and low `(out, groups)`, group."""
    import torch

    out_features, in_features = dense.shape
    group = INT4_GROUP
    while group > 32 and in_features % group:
        group //= 2
    if in_features % group or out_features % _INT4_OUTPUT_MULTIPLE:
        return None
    grouped = dense.reshape(out_features, in_features // group, group)
    low = grouped.amin(dim=-1)
    step = ((grouped.amax(dim=-1) - low) / 15.0).clamp(min=1e-12)
    levels = torch.round((grouped - low[..., None]) / step[..., None]).clamp(0, 15)
    return levels.to(torch.int32).reshape(out_features, in_features), step, low, group


class _Lookup:
    """An int4 embedding's lookup from two levels per byte: only the rows asked for unpack.

    Keras' int4 `Embedding` unpacks and dequantizes its whole table on every
    call (168M entries on Gemma 3 270M: about a second per decode step).
    """

    def __init__(self, levels, step, low, group):
        import torch

        levels = levels.to(torch.uint8)
        self.packed = levels[:, 0::2] | (levels[:, 1::2] << 4)
        self.step, self.low, self.group = step, low, group

    def __call__(self, token_ids):
        import torch

        token_ids = token_ids.long()
        rows = self.packed[token_ids]
        levels = torch.stack([rows & 15, rows >> 4], dim=-1).reshape(rows.shape[:-1] + (-1,))
        lead = tuple(levels.shape[:-1])
        grouped = levels.reshape(lead + (-1, self.group)).float()
        values = grouped * self.step[token_ids][..., None] + self.low[token_ids][..., None]
        return values.reshape(lead + (-1,))


def _tied_int8_table(layer):
    table = getattr(layer, "_embeddings", None)
    scale = getattr(layer, "embeddings_scale", None)
    return (
        getattr(layer, "tie_weights", False)
        and table is not None
        and scale is not None
        and tuple(scale.shape) == tuple(table.shape[:1])
    )


class _Kernel:
    """`layer(inputs)` through a packed matmul, decode steps and prefill chunks alike.

    A layer with LoRA switched on keeps its own call (None here): the
    adapters of QLoRA train and decode through Keras' quantized layers.
    """

    def __init__(self, layer, matmul, in_features, out_features):
        self.layer = layer
        self.matmul = matmul
        self.in_features = in_features
        self.embedding = _is_embedding(layer)
        if self.embedding:
            self.input_dims, self.output_tail = 1, (out_features,)
        else:
            shape = tuple(layer._build_shapes_dict["input_shape"])
            self.input_dims = len(shape) - 2
            output = layer.compute_output_shape((1, 1) + shape[2:])
            self.output_tail = tuple(int(d) for d in output[2:])

    def __call__(self, inputs):
        import torch

        if getattr(self.layer, "lora_enabled", False):
            return None
        lead = tuple(inputs.shape[: inputs.ndim - self.input_dims])
        rows = math.prod(int(size) for size in lead)
        if rows == 0:
            return None
        flat = inputs.reshape(rows, self.in_features).to(torch.bfloat16).contiguous()
        return self.matmul(flat).to(inputs.dtype).reshape(lead + self.output_tail)


def _float_kernel(layer):
    """The layer's effective float32 kernel `(out, in)`, from its output on an identity.

    None when the layer has a bias or an input shape this cannot read.
    """
    import torch

    if _is_embedding(layer):
        width = layer.output_dim
        eye = torch.eye(width, dtype=torch.float32)[None]
        with torch.no_grad():
            columns = layer(keras.ops.convert_to_tensor(eye), reverse=True)  # (1, d, vocab)
        return columns[0].float().T.contiguous()
    if getattr(layer, "bias", None) is not None:
        return None
    shape = getattr(layer, "_build_shapes_dict", {}).get("input_shape")
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    tail = tuple(int(d) for d in shape[2:])
    width = math.prod(tail)
    eye = torch.eye(width, dtype=torch.float32).reshape((1, width) + tail)
    lora = getattr(layer, "lora_enabled", False)
    layer.lora_enabled = False
    try:
        with torch.no_grad():
            columns = layer(keras.ops.convert_to_tensor(eye))  # (1, in, *out_tail)
    finally:
        layer.lora_enabled = lora
    return columns.reshape(width, -1).float().T.contiguous()
