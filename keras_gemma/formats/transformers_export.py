"""Writing a backbone (and its tokenizer) as a Hugging Face transformers checkpoint.

The writer takes the objects duck-typed: a Keras model with `get_config()`
and `weights` (variables with `path`), and a tokenizer with `proto`, the
special token ids and `id_to_token`. It never imports `models/`.
"""

import os

import keras
import numpy as np

from keras_gemma.formats.chat_templates import chat_template
from keras_gemma.formats.files import atomic_directory_write
from keras_gemma.formats.files import write_json
from keras_gemma.formats.preset import HF_TOKENIZER_FILE
from keras_gemma.formats.transformers import SAFETENSORS_FILE
from keras_gemma.formats.transformers import to_transformers_layout
from keras_gemma.formats.transformers import transformers_weight_map
from keras_gemma.formats.transformers_config import transformers_config_from_backbone

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
EXPORT_FILES = (
    "config.json",
    SAFETENSORS_FILE,
    GENERATION_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
)


def _stop_token_ids(tokenizer):
    """`<eos>` and, when the vocabulary has one, `<end_of_turn>` (HF's IT stop set)."""
    if tokenizer is None:
        return [1]
    ids = [1 if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)]
    if tokenizer.end_of_turn_token_id is not None:
        ids.append(int(tokenizer.end_of_turn_token_id))
    return ids


def _write_export(backbone, tokenizer, directory):
    """Writes config, safetensors weights, generation config and tokenizer into `directory`."""
    from safetensors.numpy import save_file

    config = backbone.get_config()
    hf_config = transformers_config_from_backbone(config)
    variables = {variable.path: variable for variable in backbone.weights}
    tensors = {}
    dtypes = set()
    expert_halves = {}  # Gemma 4 `experts.gate_up_proj`: our gate and up kernels, fused
    for hf_name, path, conversion in transformers_weight_map(config):
        array = keras.ops.convert_to_numpy(variables[path].value)
        dtypes.add(str(array.dtype))
        array = to_transformers_layout(array, conversion, config)
        if conversion in ("expert_gate", "expert_up"):  # gate comes first in the map
            expert_halves.setdefault(hf_name, []).append(array)
            continue
        tensors["model." + hf_name] = np.ascontiguousarray(array)
    for hf_name, (gate, up) in expert_halves.items():
        tensors["model." + hf_name] = np.ascontiguousarray(np.concatenate([gate, up], axis=1))
    if dtypes == {"bfloat16"}:
        hf_config["torch_dtype"] = hf_config["dtype"] = "bfloat16"
    elif dtypes == {"float16"}:
        hf_config["torch_dtype"] = hf_config["dtype"] = "float16"
    else:
        hf_config["dtype"] = hf_config["torch_dtype"]
    if tokenizer is not None:
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, key)
            if value is not None:
                hf_config[key] = int(value)
    save_file(tensors, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(directory, "config.json"), hf_config)
    generation = {
        "bos_token_id": hf_config["bos_token_id"],
        "eos_token_id": _stop_token_ids(tokenizer),
        "pad_token_id": hf_config["pad_token_id"],
    }
    write_json(os.path.join(directory, GENERATION_CONFIG_FILE), generation)
    if tokenizer is not None:
        with open(os.path.join(directory, HF_TOKENIZER_FILE), "wb") as file:
            file.write(tokenizer.proto)
        special = {}
        for key, name in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("pad_token", "pad_token_id"),
            ("unk_token", "unk_token_id"),
        ):
            value = getattr(tokenizer, name)
            if value is not None:
                special[key] = tokenizer.id_to_token(value)
        tokenizer_config = {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": hf_config["max_position_embeddings"],
            "padding_side": "left",
            **special,
            # `transformers serve`, vLLM and `apply_chat_template` read the turn format here.
            "chat_template": chat_template(tokenizer.turn_tokens),
        }
        write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), tokenizer_config)


def export_backbone(backbone, directory, tokenizer=None, overwrite=False):
    """Writes `backbone` (and optionally its tokenizer) as a transformers checkpoint.

    The directory gets `config.json` (model type `gemma`, `gemma2` or
    `gemma3_text`, chosen from the config), `model.safetensors` in the
    weights' dtype, `generation_config.json` and, with a tokenizer,
    `tokenizer.model` plus `tokenizer_config.json` (with the vocabulary's chat
    template, `formats.chat_templates`). Written atomically: a
    failure leaves an existing directory as it was. A `directory` holding
    files other than a previous export's is refused unless `overwrite`.
    """
    # Fails early, before writing anything, for configs transformers cannot express.
    transformers_config_from_backbone(backbone.get_config())
    atomic_directory_write(
        directory,
        lambda staging: _write_export(backbone, tokenizer, staging),
        EXPORT_FILES,
        overwrite=overwrite,
    )


def export_causal_lm(causal_lm, directory, overwrite=False):
    """`export_backbone` for a `GemmaCausalLM`, with its preprocessor's tokenizer."""
    tokenizer = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor is not None else None
    export_backbone(causal_lm.backbone, directory, tokenizer=tokenizer, overwrite=overwrite)
