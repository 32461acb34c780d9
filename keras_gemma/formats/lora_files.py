"""LoRA adapter files written by `save_lora_weights`: `.lora.h5` or `.safetensors`.

One file holds the adapter tensors, keyed `decoder_block_{i}/{parent}/{target}/
lora_kernel_{a,b}`, and a JSON metadata record (`format`, `format_version`,
`rank`, `alpha`, `target_names`, `num_layers`): an HDF5 attribute, or the
safetensors header's `keras_gemma_lora` entry. Writes are atomic.
"""

import json
import os

from keras_gemma.formats.files import atomic_file_write
from keras_gemma.formats.files import parse_json

ADAPTER_SUFFIXES = (".lora.h5", ".safetensors")
FORMAT_NAME = "keras_gemma.lora"
FORMAT_VERSION = 1
SAFETENSORS_METADATA_KEY = "keras_gemma_lora"


def adapter_format(path):
    """The file's suffix among `ADAPTER_SUFFIXES`; `ValueError` for any other name."""
    path = os.fspath(path)
    for suffix in ADAPTER_SUFFIXES:
        if path.endswith(suffix):
            return suffix
    raise ValueError(
        f"An adapter filename must end in one of {list(ADAPTER_SUFFIXES)}. Received: path={path!r}"
    )


def write_lora_file(path, settings, tensors):
    """Writes `tensors` (`{key: float32 array}`) and `settings` to `path`, atomically.

    Args:
        path: ends in `.lora.h5` or `.safetensors`.
        settings: dict with `rank`, `alpha`, `target_names` and `num_layers`.
        tensors: the adapter arrays.
    """
    suffix = adapter_format(path)
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **settings}

    def write_h5(staging):
        import h5py

        with h5py.File(staging, "w") as file:
            file.attrs["metadata"] = json.dumps(metadata)
            for key, array in tensors.items():
                file.create_dataset(key, data=array)

    def write_safetensors(staging):
        from safetensors.numpy import save_file

        save_file(tensors, staging, metadata={SAFETENSORS_METADATA_KEY: json.dumps(metadata)})

    atomic_file_write(path, write_h5 if suffix == ".lora.h5" else write_safetensors)


def read_lora_file(path):
    """`(metadata, {key: array})` from a file written by `write_lora_file`."""
    suffix = adapter_format(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No adapter file at {path!r}.")
    try:
        if suffix == ".lora.h5":
            import h5py

            tensors = {}

            def visit(key, item):
                if isinstance(item, h5py.Dataset):
                    tensors[key] = item[()]

            with h5py.File(path, "r") as file:
                metadata = parse_json(file.attrs["metadata"], path)
                file.visititems(visit)
        else:
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as file:
                metadata = parse_json(file.metadata()[SAFETENSORS_METADATA_KEY], path)
                tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path!r} is not a keras_gemma LoRA adapter file ({type(error).__name__}: {error})."
        ) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a keras_gemma LoRA adapter file (metadata: {metadata}).")
    return metadata, tensors
