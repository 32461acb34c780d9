import numpy as np
import pytest
from keras import ops

from keras_gemma.layers.masks import attention_mask
from keras_gemma.layers.masks import positions_from_padding_mask
from keras_gemma.testing.test_case import TestCase


def mask_matrix(padding_mask, window=None):
    padding_mask = np.asarray(padding_mask, "int32")
    slots = np.arange(padding_mask.shape[1], dtype="int32")
    mask = ops.convert_to_numpy(attention_mask(slots, slots, padding_mask, window))
    assert mask.dtype == np.bool_
    return mask.astype("int32")


CAUSAL_4 = [
    [1, 0, 0, 0],
    [1, 1, 0, 0],
    [1, 1, 1, 0],
    [1, 1, 1, 1],
]


class TestMasks(TestCase):
    def test_causal(self):
        np.testing.assert_array_equal(mask_matrix([[1, 1, 1, 1]]), [CAUSAL_4])

    def test_right_padding(self):
        expected = [
            [1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 0, 0],
        ]
        np.testing.assert_array_equal(mask_matrix([[1, 1, 0, 0]]), [expected])

    def test_left_padding(self):
        expected = [
            [0, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 1],
        ]
        np.testing.assert_array_equal(mask_matrix([[0, 1, 1, 1]]), [expected])

    def test_batch_rows_are_independent(self):
        mask = mask_matrix([[1, 1, 1, 1], [1, 1, 1, 0]])
        np.testing.assert_array_equal(mask[0], CAUSAL_4)
        np.testing.assert_array_equal(mask[1][:, 3], [0, 0, 0, 0])
        np.testing.assert_array_equal(mask[1][:3, :3], np.array(CAUSAL_4)[:3, :3])

    def test_sliding_window_1_sees_only_itself(self):
        np.testing.assert_array_equal(mask_matrix([[1] * 4], window=1), [np.eye(4, dtype="int32")])

    def test_sliding_window_3(self):
        expected = [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ]
        np.testing.assert_array_equal(mask_matrix([[1] * 6], window=3), [expected])

    def test_sliding_window_with_padding(self):
        expected = [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ]
        np.testing.assert_array_equal(mask_matrix([[1, 1, 1, 0, 0]], window=2), [expected])

    def test_window_at_least_length_is_causal(self):
        np.testing.assert_array_equal(mask_matrix([[1] * 4], window=4), [CAUSAL_4])
        np.testing.assert_array_equal(mask_matrix([[1] * 4], window=100), [CAUSAL_4])

    def test_cache_slots_then_new_tokens(self):
        # Two cached slots (0, 1), one empty slot (2), a new query at slot 3
        # attending over [cache slots 0..2, new slot 3].
        query_slots = np.array([3], "int32")
        key_slots = np.array([0, 1, 2, 3], "int32")
        valid = np.array([[1, 1, 0, 1]], "int32")
        mask = ops.convert_to_numpy(attention_mask(query_slots, key_slots, valid))
        np.testing.assert_array_equal(mask.astype("int32"), [[[1, 1, 0, 1]]])
        mask = ops.convert_to_numpy(attention_mask(query_slots, key_slots, valid, 2))
        np.testing.assert_array_equal(mask.astype("int32"), [[[0, 0, 0, 1]]])

    @pytest.mark.parametrize(
        "padding_mask,expected",
        [
            ([[1, 1, 1, 1]], [[0, 1, 2, 3]]),
            ([[1, 1, 0, 0]], [[0, 1, -1, -1]]),
            ([[0, 0, 1, 1]], [[-1, -1, 0, 1]]),
        ],
    )
    def test_positions_from_padding_mask(self, padding_mask, expected):
        positions = ops.convert_to_numpy(positions_from_padding_mask(np.array(padding_mask)))
        # Each real token's index among the real tokens; padded slots (-1
        # here) are masked out, so their value does not matter.
        expected = np.array(expected)
        real = expected >= 0
        np.testing.assert_array_equal(positions[real], expected[real])
