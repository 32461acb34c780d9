"""Per-layer KV caches against a NumPy reference: writes, reads, ring wraparound."""

import numpy as np
import pytest
from keras import ops

import keras_gemma
from keras_gemma.generation import kv_cache
from keras_gemma.generation.engine import WRITE
from keras_gemma.generation.kv_cache import KVCache
from keras_gemma.generation.kv_cache import RingKVCache

BATCH, HEADS, HEAD_DIM = 2, 1, 3
# The functional write (JAX, TensorFlow) and this backend's engine write
# (in place on PyTorch).
WRITES = {"functional": kv_cache.functional_write, "engine": WRITE}


def _tokens(first_slot, count):
    """Keys `[b, count, k, h]` whose values name their row and slot; values are their negatives."""
    slots = np.arange(first_slot, first_slot + count, dtype="float32")
    rows = np.arange(BATCH, dtype="float32")[:, None]
    key = np.broadcast_to((1000 * rows + slots)[:, :, None, None], (BATCH, count, HEADS, HEAD_DIM))
    return np.ascontiguousarray(key), -np.ascontiguousarray(key)


def _tensors(*arrays):
    return tuple(ops.convert_to_tensor(array) for array in arrays)


class ReferenceCache:
    """What each entry must hold: slot `s` at entry `s` (full) or `s % length` (ring)."""

    def __init__(self, length, ring):
        self.length, self.ring = length, ring
        self.key = np.zeros((BATCH, length, HEADS, HEAD_DIM), "float32")
        self.value = np.zeros_like(self.key)
        self.held = np.full((length,), -1)  # absolute slot of each entry

    def write(self, start, key, value):
        for offset in range(key.shape[1]):
            slot = start + offset
            entry = slot % self.length if self.ring else slot
            self.key[:, entry], self.value[:, entry] = key[:, offset], value[:, offset]
            self.held[entry] = slot


def _check(cache, reference, next_slot):
    key, value = cache.read()
    np.testing.assert_array_equal(ops.convert_to_numpy(key), reference.key)
    np.testing.assert_array_equal(ops.convert_to_numpy(value), reference.value)
    slots = ops.convert_to_numpy(cache.slots(ops.convert_to_tensor(next_slot, "int32")))
    written = reference.held >= 0
    np.testing.assert_array_equal(slots[written], reference.held[written])
    assert np.all(slots[~written] < 0)


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
@pytest.mark.parametrize("prompt_length", [3, 5, 11])
def test_ring_cache_wraps_around_like_the_reference(write, prompt_length):
    length = 5
    key, value = _tokens(0, prompt_length)
    cache = RingKVCache.from_prompt(*_tensors(key, value), length)
    reference = ReferenceCache(length, ring=True)
    reference.write(0, key, value)
    _check(cache, reference, prompt_length)
    slot = prompt_length
    for count in (1, 1, 3, 1, 7, 1, 2, 1, 1, 1, 1):  # one-token steps and chunks, many laps
        key, value = _tokens(slot, count)
        start = ops.convert_to_tensor(slot, "int32")
        cache = cache.write(start, *_tensors(key, value), write)
        assert isinstance(cache, RingKVCache) and cache.length == length
        reference.write(slot, key, value)
        slot += count
        _check(cache, reference, slot)


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_full_cache_writes_each_slot_at_its_entry(write):
    length = 12
    key, value = _tokens(0, 4)
    cache = KVCache.from_prompt(*_tensors(key, value), length)
    reference = ReferenceCache(length, ring=False)
    reference.write(0, key, value)
    _check(cache, reference, 4)
    slot = 4
    for count in (1, 3, 1, 2, 1):
        key, value = _tokens(slot, count)
        start = ops.convert_to_tensor(slot, "int32")
        cache = cache.write(start, *_tensors(key, value), write)
        assert type(cache) is KVCache
        reference.write(slot, key, value)
        slot += count
        _check(cache, reference, slot)


def test_attention_mask_hides_padding_unwritten_and_out_of_window_entries():
    length, window, next_slot = 4, 3, 6
    key, value = _tokens(0, next_slot)
    cache = RingKVCache.from_prompt(*_tensors(key, value), length)
    query_slots = ops.convert_to_tensor([6], "int32")
    padding_counts = ops.convert_to_tensor([0, 5], "int32")
    mask = ops.convert_to_numpy(cache.attention_mask(6, query_slots, padding_counts, window))
    held = np.array([4, 5, 2, 3])  # entry e holds slot s, s % 4 == e, the latest
    for row, padding in enumerate((0, 5)):
        expected = (held >= padding) & (held <= 6) & (6 - held < window)
        np.testing.assert_array_equal(mask[row, 0], expected)
    assert mask.shape == (BATCH, 1, length)


def test_cache_map_keeps_the_cache_kind():
    key, value = _tokens(0, 2)
    cache = RingKVCache.from_prompt(*_tensors(key, value), 2)
    doubled = cache.map(lambda tensor: ops.repeat(tensor, 2, axis=0))
    assert isinstance(doubled, RingKVCache)
    assert tuple(doubled.key.shape) == (2 * BATCH, 2, HEADS, HEAD_DIM)
    for mapped, original in ((doubled.key, cache.key), (doubled.value, cache.value)):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(mapped), np.repeat(ops.convert_to_numpy(original), 2, axis=0)
        )


def test_cache_class_of_each_layer():
    assert kv_cache.cache_class("sliding_attention", 512, 8192) is RingKVCache
    assert kv_cache.cache_class("sliding_attention", 512, 512) is KVCache
    assert kv_cache.cache_class("full_attention", 8192, 8192) is KVCache


def test_cache_memory_of_sliding_layers_is_a_ring():
    config = keras_gemma.preset_config("gemma3_1b")
    lengths = kv_cache.cache_lengths_for_config(config, 8192)
    full = sum(1 for t in config["layer_types"] if t == "full_attention")
    assert sum(lengths) == full * 8192 + (config["num_layers"] - full) * 512
    ratio = sum(lengths) / (8192 * config["num_layers"])
    assert ratio < 0.21  # 4 of 26 layers keep the whole context, 22 keep 512 slots
