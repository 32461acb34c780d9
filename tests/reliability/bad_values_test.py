"""Bad values found at load time, not at generate (issue 19, cases 8, 9 and part of 12).

8. NaN / inf weights and adapters load with a `RuntimeWarning` naming the tensor.
9. A garbage or zero-byte `tokenizer.model` / `vocabulary.spm` is a
   `ValueError` naming the file, at load.
12. A tokenizer larger than the model's vocabulary is refused when the
   causal LM is built.
"""

import os
import warnings

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.models import random_backbone

NAN_VARIABLE = "decoder_block_1/attention/value/kernel"


def poisoned_lm(tiny_lm, value):
    lm = GemmaCausalLM(random_backbone(seed=0), tiny_lm.preprocessor)
    for variable in lm.backbone.weights:
        if variable.path == NAN_VARIABLE:
            array = np.array(keras.ops.convert_to_numpy(variable.value))
            array[0, 0, 0] = value
            variable.assign(array)
    return lm


def no_warnings(load):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return load()


# === Case 8 ===


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("save", ["save_to_preset", "export_to_transformers"])
def test_non_finite_weights_warn_naming_the_tensor(save, value, tiny_lm, tmp_path):
    directory = str(tmp_path / "poisoned")
    getattr(poisoned_lm(tiny_lm, value), save)(directory)
    with pytest.warns(RuntimeWarning, match="hold NaN or infinite values") as caught:
        GemmaCausalLM.from_preset(directory)
    (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert f"`{NAN_VARIABLE}`" in str(warning.message) and directory in str(warning.message)


def test_finite_weights_load_without_a_warning(saved_preset):
    no_warnings(lambda: GemmaCausalLM.from_preset(saved_preset))


@pytest.mark.parametrize("suffix", [".lora.h5", ".safetensors"])
def test_a_non_finite_adapter_warns_naming_the_tensor(suffix, tmp_path):
    lm = GemmaCausalLM(random_backbone(seed=0))
    lm.backbone.enable_lora(rank=2)
    layer = lm.backbone.transformer_layers[0].attention.query
    poisoned = np.full(tuple(layer.lora_kernel_b.shape), np.nan, "float32")
    layer.lora_kernel_b.assign(poisoned)
    path = str(tmp_path / f"adapter{suffix}")
    lm.save_lora_weights(path)
    fresh = GemmaBackbone.from_config(lm.backbone.get_config())
    with pytest.warns(RuntimeWarning, match="hold NaN or infinite values") as caught:
        fresh.load_lora_weights(path)
    message = str(caught[0].message)
    assert "`decoder_block_0/attention/query/lora_kernel_b`" in message and path in message


# === Case 9 ===


@pytest.mark.parametrize(
    "content", [b"", b"\x00\xffnot a model\x01" * 30], ids=["empty", "garbage"]
)
def test_a_damaged_vocabulary_names_the_file_at_load(content, preset_copy, tiny_lm, tmp_path):
    hf = str(tmp_path / "hf")
    tiny_lm.export_to_transformers(hf)
    files = [
        os.path.join(hf, "tokenizer.model"),
        os.path.join(preset_copy, "assets", "tokenizer", "vocabulary.spm"),
    ]
    for file in files:
        with open(file, "wb") as handle:
            handle.write(content)
        directory = os.path.dirname(file) if file.endswith(".model") else preset_copy
        for load in (GemmaCausalLM.from_preset, GemmaTokenizer.from_preset):
            with pytest.raises(
                ValueError, match="is not a SentencePiece tokenizer model"
            ) as raised:
                load(directory)
            assert f"`{file}`" in str(raised.value)
    with pytest.raises(ValueError, match="is not a SentencePiece tokenizer model"):
        GemmaTokenizer.from_preset(files[0])  # The file itself as the handle.


@pytest.mark.parametrize("proto", [b"", b"\x00\xffnot a model\x01" * 30], ids=["empty", "garbage"])
def test_tokenizer_from_bad_bytes(proto):
    with pytest.raises(ValueError, match="`proto` is not a SentencePiece tokenizer model"):
        GemmaTokenizer(proto)


# === Case 12: a tokenizer larger than the model's vocabulary ===


def test_a_tokenizer_larger_than_the_embedding_is_refused(tokenizer, tmp_path):
    small = random_backbone(seed=0, vocabulary_size=tokenizer.vocabulary_size - 10)
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    with pytest.raises(ValueError, match="embedding has only 390 rows") as raised:
        GemmaCausalLM(small, preprocessor)
    assert f"The tokenizer has {tokenizer.vocabulary_size} pieces" in str(raised.value)
    # The same mismatch in files: a preset whose vocabulary outgrew its model.
    directory = str(tmp_path / "mismatch")
    GemmaCausalLM(small).save_to_preset(directory)
    tokenizer.save_to_preset(directory)
    with pytest.raises(ValueError, match="embedding has only 390 rows"):
        GemmaCausalLM.from_preset(directory)
