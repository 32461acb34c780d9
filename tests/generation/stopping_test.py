"""Stop tokens: resolution and the one truncation every consumer uses."""

import types

import numpy as np
import pytest
from keras import ops

from keras_gemma.generation import stopping


def test_truncate_at_stop_cuts_before_the_first_stop_token():
    assert stopping.truncate_at_stop([5, 6, 1, 7, 1], (1, 106)) == [5, 6]
    assert stopping.truncate_at_stop([5, 106, 1], (1, 106)) == [5]
    assert stopping.truncate_at_stop([1, 5], (1,)) == []
    assert stopping.truncate_at_stop([5, 6, 7], (1,)) == [5, 6, 7]
    assert stopping.truncate_at_stop([5, 1, 6], ()) == [5, 1, 6]
    assert stopping.truncate_at_stop([], (1,)) == []


def test_truncate_at_stop_takes_numpy_rows_and_returns_python_ints():
    tokens = stopping.truncate_at_stop(np.array([9, 8, 107, 3], "int32"), (107,))
    assert tokens == [9, 8] and all(type(t) is int for t in tokens)


def test_until_stop_reads_no_further_than_the_stop_token():
    read = []

    def tokens():
        for token in (4, 5, 1, 6, 7):
            read.append(token)
            yield token

    assert list(stopping.until_stop(tokens(), (1,))) == [4, 5]
    assert read == [4, 5, 1]  # streaming stops pulling tokens at the stop


def test_stop_mask_marks_stop_tokens():
    tokens = ops.convert_to_tensor([[5, 1], [106, 7]], "int32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(stopping.stop_mask(tokens, (1, 106))), [[False, True], [True, False]]
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(stopping.stop_mask(tokens, ())), False)


def _model(preprocessor=None, use_query_key_norm=True):
    backbone = types.SimpleNamespace(vocabulary_size=300, use_query_key_norm=use_query_key_norm)
    return types.SimpleNamespace(backbone=backbone, preprocessor=preprocessor)


def test_resolve_stop_token_ids():
    tokenizer = types.SimpleNamespace(eos_token_id=1, end_of_turn_token_id=None)
    with_tokenizer = _model(types.SimpleNamespace(tokenizer=tokenizer))
    assert stopping.resolve_stop_token_ids(with_tokenizer, "auto") == (1,)
    assert stopping.resolve_stop_token_ids(_model(), "auto") == (1, 106)
    assert stopping.resolve_stop_token_ids(_model(use_query_key_norm=False), "auto") == (1, 107)
    assert stopping.resolve_stop_token_ids(_model(), None) == ()
    assert stopping.resolve_stop_token_ids(_model(), [3, np.int64(4)]) == (3, 4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        stopping.resolve_stop_token_ids(_model(), [300])
    with pytest.raises(ValueError, match="must be 'auto', None or a list"):
        stopping.resolve_stop_token_ids(_model(), "eos")
