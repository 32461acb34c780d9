"""Per-layer KV caches against a NumPy reference: rows at their own slots, rings, trash, growth."""

import numpy as np
import pytest
from keras import ops

import keras_gemma
from keras_gemma.generation import kv_cache
from keras_gemma.generation.engine import WRITE
from keras_gemma.generation.kv_cache import KVCache
from keras_gemma.generation.kv_cache import RingKVCache

ROWS, HEADS, HEAD_DIM = 2, 1, 3
# The functional write (JAX, TensorFlow) and this backend's engine write
# (in place on PyTorch).
WRITES = {"functional": kv_cache.functional_write, "engine": WRITE}


def _tokens(starts, count):
    """Keys `[R, count, k, h]` naming their row and slot (1000 * row + slot); values negated."""
    slots = np.asarray(starts)[:, None] + np.arange(count)[None, :]
    rows = np.arange(ROWS)[:, None]
    key = np.broadcast_to((1000 * rows + slots)[:, :, None, None], (ROWS, count, HEADS, HEAD_DIM))
    key = np.ascontiguousarray(key, dtype="float32")
    return key, -key


class Reference:
    """What each row's entries must hold: slot `s` at `s` (full) or `s % window` (ring)."""

    def __init__(self, entries, ring):
        self.entries, self.ring = entries, ring
        self.key = np.zeros((ROWS, entries + 1, HEADS, HEAD_DIM), "float32")
        self.held = np.full((ROWS, entries), -1)

    def write(self, starts, counts, key):
        for row in range(ROWS):
            for offset in range(counts[row]):
                slot = starts[row] + offset
                entry = slot % self.entries if self.ring else slot
                self.key[row, entry] = key[row, offset]
                self.held[row, entry] = slot


def _check(cache, reference, next_slots):
    key, value = (ops.convert_to_numpy(t) for t in cache.read())
    body = slice(0, reference.entries)  # The trash entry holds anything.
    np.testing.assert_array_equal(key[:, body], reference.key[:, body])
    np.testing.assert_array_equal(value[:, body], -reference.key[:, body])
    slots = ops.convert_to_numpy(cache.slots(ops.convert_to_tensor(next_slots, "int32")))
    assert np.all(slots[:, -1] < 0)  # The trash entry is never a slot.
    written = reference.held >= 0
    np.testing.assert_array_equal(slots[:, body][written], reference.held[written])
    assert np.all(slots[:, body][~written] < 0)


def _write(cache, starts, counts, width, write):
    key, value = _tokens(starts, width)
    slots = np.asarray(starts)[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < np.asarray(counts)[:, None]
    tensors = (ops.convert_to_tensor(a) for a in (slots.astype("int32"), valid, key, value))
    return cache.write(*tensors, write), key


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
@pytest.mark.parametrize("ring", [False, True], ids=["full", "ring"])
def test_rows_write_at_their_own_slots_padding_goes_to_trash(write, ring):
    entries = 5 if ring else 24
    kind = RingKVCache if ring else KVCache
    cache = kind.empty(ROWS, entries, HEADS, HEAD_DIM, "float32")
    reference = Reference(entries, ring)
    positions = np.array([0, 0])
    # Chunks of a fixed width with a count per row (0: the row feeds nothing),
    # rows drifting apart; rings wrap several times, a chunk may exceed the ring.
    for width, counts in [(4, (3, 1)), (1, (1, 1)), (4, (0, 4)), (8, (7, 2)), (1, (1, 0))]:
        cache, key = _write(cache, positions, counts, width, write)
        assert type(cache) is kind and cache.length == entries + 1
        # In order, so of more tokens than a ring holds only the last ones stay.
        reference.write(positions, counts, key)
        positions = positions + np.array(counts)
        _check(cache, reference, positions)


def test_attention_mask_per_row_slot_window_and_unwritten_entries():
    window, entries = 3, 4
    cache = RingKVCache.empty(ROWS, entries, HEADS, HEAD_DIM, "float32")
    cache, _ = _write(cache, [0, 0], [6, 2], 8, kv_cache.functional_write)
    next_slots = ops.convert_to_tensor([6, 2], "int32")
    query_slots = ops.convert_to_tensor([[6], [2]], "int32")
    mask = ops.convert_to_numpy(cache.attention_mask(next_slots, query_slots, window))
    assert mask.shape == (ROWS, 1, entries + 1)
    held = [np.array([4, 5, 2, 3]), np.array([0, 1, -1, -1])]  # latest slot per entry
    for row, query in enumerate((6, 2)):
        expected = (held[row] >= 0) & (held[row] <= query) & (query - held[row] < window)
        np.testing.assert_array_equal(mask[row, 0, :entries], expected)
        assert not mask[row, 0, entries]  # trash


def test_a_reused_row_sees_nothing_of_its_previous_sequence():
    cache = RingKVCache.empty(ROWS, 4, HEADS, HEAD_DIM, "float32")
    cache, _ = _write(cache, [0, 0], [7, 7], 8, kv_cache.functional_write)
    # Row 0 restarts at slot 0 with two tokens: only those are valid.
    slots = ops.convert_to_numpy(cache.slots(ops.convert_to_tensor([2, 7], "int32")))
    np.testing.assert_array_equal(slots[0], [0, 1, -1, -1, -1])
    np.testing.assert_array_equal(slots[1], [4, 5, 6, 3, -1])


def test_grow_keeps_slots_and_turns_a_full_sliding_cache_into_a_ring():
    lm_config = {"sliding_window_size": 8, "layer_types": ["sliding_attention", "full_attention"]}

    class Layer:
        def __init__(self, layer_type):
            self.layer_type = layer_type

    class Backbone:
        sliding_window_size = 8
        transformer_layers = [Layer(t) for t in lm_config["layer_types"]]
        kv_source_layers = [0, 1]

    sliding = KVCache.empty(ROWS, 6, HEADS, HEAD_DIM, "float32")  # window >= capacity 6
    full = KVCache.empty(ROWS, 6, HEADS, HEAD_DIM, "float32")
    sliding, key = _write(sliding, [0, 0], [5, 3], 5, kv_cache.functional_write)
    full, _ = _write(full, [0, 0], [5, 3], 5, kv_cache.functional_write)
    grown = kv_cache.grow(Backbone(), (sliding, full), 20)
    assert type(grown[0]) is RingKVCache and grown[0].length == 9
    assert type(grown[1]) is KVCache and grown[1].length == 21
    for cache in grown:
        slots = ops.convert_to_numpy(cache.slots(ops.convert_to_tensor([5, 3], "int32")))
        np.testing.assert_array_equal(slots[0, :5], np.arange(5))
        np.testing.assert_array_equal(slots[1, :3], np.arange(3))
        assert np.all(slots[1, 3:] < 0)
        stored = ops.convert_to_numpy(cache.key)
        np.testing.assert_array_equal(stored[0, :5], key[0])
        np.testing.assert_array_equal(stored[1, :3], key[1, :3])
    # Slots beyond the old capacity land where the new layout puts them.
    ring, _ = _write(grown[0], [5, 3], [6, 6], 6, kv_cache.functional_write)
    slots = ops.convert_to_numpy(ring.slots(ops.convert_to_tensor([11, 9], "int32")))
    np.testing.assert_array_equal(np.sort(slots[0, :8]), np.arange(3, 11))


def test_cache_map_keeps_the_cache_kind():
    cache = RingKVCache.empty(ROWS, 2, HEADS, HEAD_DIM, "float32")
    doubled = cache.map(lambda tensor: ops.repeat(tensor, 2, axis=0))
    assert isinstance(doubled, RingKVCache)
    assert tuple(doubled.key.shape) == (2 * ROWS, 3, HEADS, HEAD_DIM)


def test_cache_memory_of_sliding_layers_is_a_ring():
    config = keras_gemma.preset_config("gemma3_1b")
    entries = kv_cache.cache_entries_for_config(config, 8192)
    full = sum(1 for t in config["layer_types"] if t == "full_attention")
    assert sum(entries) == full * 8192 + (config["num_layers"] - full) * 512
    ratio = sum(entries) / (8192 * config["num_layers"])
    assert ratio < 0.21  # 4 of 26 layers keep the whole context, 22 keep 512 slots
