import os

import pytest
from sentencepiece import sentencepiece_model_pb2

from keras_gemma.testing.vocab import build_tiny_vocabulary

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def load_model_proto(path):
    model = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as file:
        model.ParseFromString(file.read())
    return model


def test_vocabulary_is_shaped_like_gemma(tmp_path):
    model = load_model_proto(build_tiny_vocabulary(tmp_path))
    pieces = [(piece.piece, piece.type) for piece in model.pieces]
    assert pieces[:4] == [
        ("<pad>", CONTROL),
        ("<eos>", CONTROL),
        ("<bos>", CONTROL),
        ("<unk>", UNKNOWN),
    ]
    # As in Gemma's own tokenizer.model: turn markers are user-defined.
    assert ("<start_of_turn>", USER_DEFINED) in pieces
    assert ("<end_of_turn>", USER_DEFINED) in pieces
    assert sum(piece_type == BYTE for _, piece_type in pieces) == 256
    assert len(pieces) == 400
    assert model.trainer_spec.model_type == model.trainer_spec.BPE
    assert model.trainer_spec.byte_fallback
    assert model.trainer_spec.split_digits
    assert model.normalizer_spec.name == "identity"
    assert not model.normalizer_spec.add_dummy_prefix
    assert not model.normalizer_spec.remove_extra_whitespaces


def test_vocabulary_is_deterministic_and_self_contained(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    first_path = build_tiny_vocabulary(first, vocabulary_size=350)
    second_path = build_tiny_vocabulary(second, vocabulary_size=350)
    assert os.path.dirname(first_path) == str(first)
    with open(first_path, "rb") as a, open(second_path, "rb") as b:
        assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path)) == ["first", "second"]


def test_missing_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="existing directory"):
        build_tiny_vocabulary(tmp_path / "missing")
