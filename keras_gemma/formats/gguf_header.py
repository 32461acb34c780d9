"""The header of a GGUF file (llama.cpp's format), parsed without the `gguf` reader.

The `gguf` package's own reader takes seconds on a 262k-token vocabulary;
this one reads the key/values and tensor infos directly and leaves the tensor
data memory-mapped. Only the quantization tables come from `gguf`.
"""

import dataclasses
import os
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"

# GGUF tensor name (inside `blk.N.`) -> HF name (inside `model.layers.N.`), shared by the
# Gemma 1-3 reader (gguf.py) and Gemma 4's (gguf_gemma4.py).
BLOCK_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 1 has one pre-FFN norm, which HF calls `post_attention_layernorm`.
GEMMA1_BLOCK_NORMS = {"ffn_norm.weight": "post_attention_layernorm.weight"}
# Gemma 2 and 3 have four norms per block.
GEMMA2_BLOCK_NORMS = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}

# GGUF metadata value types: struct format of each scalar type.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little-endian GGUF header values from a bytes-like buffer."""

    def __init__(self, buffer):
        self.buffer = buffer
        self.offset = 0

    def take(self, size):
        end = self.offset + size
        if end > len(self.buffer):
            raise _Truncated(f"needs {end} bytes to read the header, has {len(self.buffer)}")
        chunk = self.buffer[self.offset : end]
        self.offset = end
        return chunk

    def scalar(self, value_type):
        fmt = _SCALAR_FORMATS[value_type]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        return bytes(self.take(self.scalar(10))).decode("utf-8")

    def value(self, value_type):
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.scalar(4), self.scalar(10)
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _SCALAR_FORMATS:
                dtype = np.dtype(_SCALAR_FORMATS[item_type])
                array = np.frombuffer(self.take(dtype.itemsize * count), dtype)
                return array.tolist() if item_type == 7 or count <= 64 else array
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {value_type}")
        return self.scalar(value_type)


def parse_gguf(path):
    """Returns ({metadata key: value}, [tensor info]) of a GGUF file."""
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path!r} is not a GGUF file: it starts with {magic!r}, "
            f"expected the magic {GGUF_MAGIC!r}."
        )
    file_size = os.path.getsize(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(memoryview(data))
    try:
        cursor.take(4)
        version = cursor.scalar(4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2, 3)")
        tensor_count, kv_count = cursor.scalar(10), cursor.scalar(10)
        fields = {}
        for _ in range(kv_count):
            key = cursor.string()
            fields[key] = cursor.value(cursor.scalar(4))
        raw_infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            dims = [cursor.scalar(10) for _ in range(cursor.scalar(4))]
            raw_infos.append((name, dims, cursor.scalar(4), cursor.scalar(10)))
    except _Truncated as error:
        raise ValueError(f"GGUF file {path!r} is truncated: {error}.") from None
    except (ValueError, UnicodeDecodeError, struct.error) as error:
        raise ValueError(
            f"GGUF file {path!r} is corrupt: its header could not be parsed ({error})."
        ) from None
    alignment = int(fields.get("general.alignment", 32))
    data_start = -(-cursor.offset // alignment) * alignment
    tensor_infos = []
    for name, dims, raw_type, offset in raw_infos:
        try:
            quant_type = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise ValueError(
                f"GGUF file {path!r}: tensor {name!r} has unknown type {raw_type}."
            ) from None
        block_size, type_size = gguf.GGML_QUANT_SIZES[quant_type]
        shape = tuple(int(dim) for dim in reversed(dims))  # Outermost first.
        num_elements = int(np.prod(shape))
        start = data_start + offset
        end = start + num_elements // block_size * type_size
        if end > file_size:
            raise ValueError(
                f"GGUF file {path!r} is truncated: tensor {name!r} needs bytes "
                f"up to {end} but the file has {file_size}."
            )
        byte_shape = shape[:-1] + (shape[-1] // block_size * type_size,)
        tensor_infos.append(
            TensorInfo(name, shape, quant_type, data[start:end].reshape(byte_shape))
        )
    return fields, tensor_infos


class Metadata:
    """One architecture's metadata keys of a GGUF file, read with checks that name the file.

    Args:
        path: the file (for error messages).
        fields: its `{key: value}` metadata, as `parse_gguf` returns it.
        architecture: the key prefix (`general.architecture`, e.g. "gemma3").
    """

    def __init__(self, path, fields, architecture):
        self.path = path
        self.fields = fields
        self.architecture = architecture

    def get(self, key, default=None):
        """The value of `{architecture}.{key}`, or `default`."""
        return self.fields.get(f"{self.architecture}.{key}", default)

    def positive_int(self, key, default=None):
        """`get(key, default)` as an int; `ValueError` when absent or not a positive int."""
        value = self.get(key, default)
        if value is None:
            raise ValueError(
                f"GGUF file {self.path!r} lacks the metadata key '{self.architecture}.{key}'."
            )
        if not _is_positive_int(value):
            raise ValueError(
                f"GGUF file {self.path!r} has '{self.architecture}.{key}' = {value!r}; it must be "
                "a positive integer. The file is damaged or was written wrongly."
            )
        return int(value)

    def float32(self, key, default):
        """`get(key, default)` as a float with float32's 7 digits: 1e-6 stored as float32 reads
        9.999999974752427e-07 and is returned as 1e-6."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(
                f"GGUF file {self.path!r} has '{self.architecture}.{key}' = {value!r}; it must "
                "be a number. The file is damaged or was written wrongly."
            )
        return float(f"{float(np.float32(value)):.7g}")

    def per_layer(self, key, num_layers, default=None):
        """`get(key, default)` as one positive int per layer: llama.cpp writes either one
        value for every layer or an array (`llama_model_loader::get_key_or_arr`)."""
        value = self.get(key, default)
        if value is None or np.ndim(value) == 0:
            return [self.positive_int(key, default)] * num_layers
        values = list(np.asarray(value).tolist())
        if len(values) != num_layers or not all(_is_positive_int(v) for v in values):
            raise ValueError(
                f"GGUF file {self.path!r} has '{self.architecture}.{key}' = {values!r}; it must "
                f"be a positive integer or {num_layers} of them, one per layer of "
                f"'{self.architecture}.block_count' = {num_layers}. The file's metadata "
                "disagrees with itself: it is damaged or was written wrongly."
            )
        return [int(v) for v in values]


def _is_positive_int(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # HF layout, outermost dimension first.
    quant_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # Memory-mapped raw bytes, [*shape[:-1], row_bytes].
