"""Property tests (hypothesis): tokenizer, preprocessor and config validation.

tests/models/gemma_tokenizer_test.py already checks `detokenize(tokenize(t))
== t` on single strings; here: batches, id ranges, arbitrary id lists, the
preprocessor's packing invariants, and config validation never raising
anything but a clean `ValueError`.
"""

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.configs import tiny_config

FUZZ = hypothesis.settings(
    max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
SPECIAL_LITERALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def round_trippable(text):
    # As in gemma_tokenizer_test.py: "▁" (U+2581) is SentencePiece's space
    # marker and decodes as " "; a control piece's literal text encodes to
    # the piece, which decodes to nothing.
    return "\u2581" not in text and not any(piece in text for piece in SPECIAL_LITERALS)


TEXT = st.text(max_size=40).filter(round_trippable)


@FUZZ
@hypothesis.given(st.lists(TEXT, min_size=1, max_size=5))
def test_tokenizer_batch_round_trip(tokenizer, texts):
    batch = tokenizer(texts)
    assert batch == [tokenizer(text) for text in texts]
    for ids in batch:
        assert all(0 <= i < tokenizer.vocabulary_size for i in ids)
        assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids
    assert tokenizer.detokenize(batch) == texts


@FUZZ
@hypothesis.given(st.lists(st.integers(0, 399), max_size=30))
def test_detokenize_any_ids(tokenizer, ids):
    text = tokenizer.detokenize(ids)
    assert isinstance(text, str)
    assert tokenizer.detokenize([ids]) == [text]


@FUZZ
@hypothesis.given(
    st.lists(st.integers(), min_size=1, max_size=5).filter(
        lambda ids: any(not 0 <= i < 400 for i in ids)
    )
)
def test_detokenize_rejects_ids_outside_the_vocabulary(tokenizer, ids):
    # Documented here: SentencePiece's own errors pass through (IndexError
    # "piece id is out of range"; TypeError for ids beyond int32). Never text.
    with pytest.raises((IndexError, TypeError)) as info:
        tokenizer.detokenize(ids)
    assert "out of range" in str(info.value) or "integer" in str(info.value)


@FUZZ
@hypothesis.given(
    texts=st.lists(st.text(max_size=30), min_size=1, max_size=4),
    sequence_length=st.integers(1, 24),
    add_start_token=st.booleans(),
    add_end_token=st.booleans(),
    truncate=st.sampled_from(["error", "right", "left"]),
)
def test_preprocessor_packing(
    tokenizer, texts, sequence_length, add_start_token, add_end_token, truncate
):
    preprocessor = GemmaCausalLMPreprocessor(
        tokenizer,
        sequence_length,
        add_start_token=add_start_token,
        add_end_token=add_end_token,
        truncate=truncate,
    )
    start = [tokenizer.bos_token_id] if add_start_token else []
    end = [tokenizer.eos_token_id] if add_end_token else []
    contents = tokenizer(texts)
    room = sequence_length + 1 - len(start) - len(end)
    too_long = [i for i, ids in enumerate(contents) if len(ids) > room]
    if too_long and (truncate == "error" or room < 0):
        with pytest.raises(ValueError) as info:
            preprocessor(texts)
        if truncate == "error":
            assert f"{too_long[0]}" in str(info.value)
        return
    x, labels, weights = preprocessor(texts)
    token_ids, mask = x["token_ids"], x["padding_mask"]
    batch = len(texts)
    assert (
        token_ids.shape == mask.shape == labels.shape == weights.shape == (batch, sequence_length)
    )
    assert (
        token_ids.dtype == labels.dtype == np.int32
        and mask.dtype == bool
        and weights.dtype == np.float32
    )
    for row, ids in enumerate(contents):
        if len(ids) > room:
            ids = ids[:room] if truncate == "right" else ids[len(ids) - room :]
        full = start + ids + end
        packed = np.full(sequence_length + 1, tokenizer.pad_token_id)
        packed[: len(full)] = full
        np.testing.assert_array_equal(token_ids[row], packed[:-1])
        np.testing.assert_array_equal(
            labels[row], packed[1:]
        )  # Labels are the inputs shifted by one.
        np.testing.assert_array_equal(mask[row], np.arange(sequence_length) < len(full))
        np.testing.assert_array_equal(
            weights[row], (np.arange(1, sequence_length + 1) < len(full)).astype("float32")
        )


# === Config validation ===

ODD_VALUES = st.one_of(
    st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.lists(st.sampled_from(["full_attention", "sliding_attention", "global", 1]), max_size=3),
)
FIELDS = sorted(tiny_config("gemma3"))


@FUZZ
@hypothesis.given(st.dictionaries(st.sampled_from(FIELDS), ODD_VALUES, min_size=1, max_size=3))
def test_config_validation_raises_only_value_error(overrides):
    config = tiny_config(
        "gemma3",
        vocabulary_size=64,
        num_layers=2,
        layer_types=["sliding_attention", "full_attention"],
    )
    config.update(overrides)
    try:
        backbone = GemmaBackbone(**config)
    except ValueError as error:
        assert "Received" in str(error) or "must" in str(error), str(error)
        return
    assert backbone.count_params() > 0


@pytest.mark.parametrize("dropout", ["0.1", None])
def test_non_numeric_dropout_is_a_value_error(dropout):
    with pytest.raises(ValueError, match="dropout"):
        GemmaBackbone(**tiny_config("gemma", dropout=dropout))


def test_non_list_layer_types_is_a_value_error():
    with pytest.raises(ValueError, match="layer_types"):
        GemmaBackbone(**tiny_config("gemma", layer_types=5))


@pytest.mark.parametrize(
    "field", ["layer_norm_epsilon", "query_pre_attn_scalar", "rope_wavelength"]
)
def test_non_finite_float_fields_are_rejected(field):
    with pytest.raises(ValueError, match=field):
        GemmaBackbone(**tiny_config("gemma", **{field: math.nan}))
