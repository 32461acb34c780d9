"""Per-layer key/value caches: preallocated buffers with `write` and `read`.

Layout. Prompts are left-padded to a bucket length `P`, so every row's last
prompt token sits in slot `P - 1` and all rows decode in lockstep; each row's
RoPE position is its slot minus its padding count. Each layer owns one cache
of keys and values, each `[batch, cache_length, kv_heads, head_dim]`:

- `KVCache`: `total_length` entries, slot `s` at entry `s` (full-attention
  layers, and sliding layers whose window covers the whole sequence).
- `RingKVCache`: `sliding_window_size` entries, slot `s` at entry
  `s % cache_length` (sliding-window layers): a sliding layer keeps only
  its window.

Nothing is re-stacked or copied per token: a one-token write goes through a
`write_slots(buffer, index, update)` function, `ops.slice_update` by default
(XLA does it in place inside JAX / TensorFlow loops); the engine passes an
in-place write on PyTorch. Caches are `NamedTuple`s of two tensors, so they
travel through `ops.while_loop`, `jax.jit` and `tf.function` as they are;
their class (full or ring) is part of the structure, never a tensor.
"""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_gemma.layers.architecture import block_arguments
from keras_gemma.layers.architecture import kv_source_layers
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.masks import attention_mask as build_attention_mask


def functional_write(buffer, index, update):
    """`buffer` `[b, cache, k, h]` with `update` `[b, n, k, h]` at entries `index..index+n-1`."""
    return ops.slice_update(buffer, (0, index, 0, 0), update)


class KVCache(NamedTuple):
    """One layer's keys and values; slot `s` lives at entry `s`.

    Attributes:
        key: `[batch, cache_length, kv_heads, head_dim]`.
        value: same shape as `key`.
    """

    key: Any
    value: Any

    @property
    def length(self):
        """Entries held (static)."""
        return self.key.shape[1]

    @classmethod
    def from_prompt(cls, key, value, cache_length):
        """A cache of `cache_length` entries holding `key`, `value` `[b, P, k, h]` at 0..P-1."""
        pad = [[0, 0], [0, cache_length - key.shape[1]], [0, 0], [0, 0]]
        return cls(ops.pad(key, pad), ops.pad(value, pad))

    def read(self):
        """`(key, value)`, each `[batch, cache_length, kv_heads, head_dim]`."""
        return self.key, self.value

    def write(self, start, key, value, write_slots=functional_write):
        """The cache with `key`, `value` `[b, n, k, h]` stored at slots `start..start+n-1`.

        `start` may be a tensor. `write_slots(buffer, index, update)` does
        the storing (in place on PyTorch).
        """
        return type(self)(write_slots(self.key, start, key), write_slots(self.value, start, value))

    def slots(self, next_slot):
        """Absolute slot held by each entry `[cache_length]` when `next_slot` is next.

        Entries that were never written get a negative slot.
        """
        entries = ops.arange(self.length, dtype="int32")
        return ops.where(entries < next_slot, entries, -1)

    def attention_mask(self, next_slot, query_slots, padding_counts, window=None):
        """Bool `[b, t, cache_length]`: may each query see each entry.

        Args:
            next_slot: the slot the first query will be written to.
            query_slots: int `[t]`, the queries' slots.
            padding_counts: int `[b]`, each row's left padding.
            window: the sliding window, or None.
        """
        cache_slots = self.slots(next_slot)  # (cache,)
        valid = ops.logical_and(
            cache_slots[None, :] >= 0, cache_slots[None, :] >= padding_counts[:, None]
        )  # (b, cache)
        return build_attention_mask(query_slots, cache_slots, valid, window)

    def map(self, function):
        """The cache with `function` applied to keys and values (e.g. reordering rows)."""
        return type(self)(function(self.key), function(self.value))


class RingKVCache(KVCache):
    """A sliding-window layer's cache: slot `s` lives at entry `s % cache_length`."""

    __slots__ = ()

    @classmethod
    def from_prompt(cls, key, value, cache_length):
        """A ring of `cache_length` entries holding the prompt's last slots."""
        shape = (key.shape[0], cache_length) + tuple(key.shape[2:])
        empty = ops.zeros(shape, dtype=key.dtype)
        return cls(_ring_write(empty, key, 0), _ring_write(empty, value, 0))

    def write(self, start, key, value, write_slots=functional_write):
        """As `KVCache.write`; one token is one `write_slots`, more rewrite the ring."""
        if key.shape[1] == 1:
            index = start % self.length
            return RingKVCache(
                write_slots(self.key, index, key), write_slots(self.value, index, value)
            )
        return RingKVCache(_ring_write(self.key, key, start), _ring_write(self.value, value, start))

    def slots(self, next_slot):
        last = next_slot - 1
        entries = ops.arange(self.length, dtype="int32")
        return last - ((last - entries) % self.length)


def _ring_write(buffer, new, start):
    """Writes `new` `[b, n, k, h]` into ring `buffer` at slots `start..start+n-1`.

    Multi-token writes (prefill, chat turns); `start` may be a tensor.
    """
    ring_length = buffer.shape[1]
    count = new.shape[1]
    if count >= ring_length:
        # Only the last `ring_length` tokens survive; slot s goes to s % ring_length.
        tail = new[:, count - ring_length :]
        shift = (start + count - ring_length) % ring_length
        return ops.roll(tail, shift, axis=1)
    padded = ops.pad(new, [[0, 0], [0, ring_length - count], [0, 0], [0, 0]])
    rolled = ops.roll(padded, start % ring_length, axis=1)
    entries = ops.arange(ring_length, dtype="int32")
    written = ((entries - start) % ring_length) < count  # (ring,)
    return ops.where(written[None, :, None, None], rolled, buffer)


def cache_lengths_for_config(config, total_length):
    """Entries each layer's cache holds for sequences of `total_length`."""
    window = config["sliding_window_size"]
    return [
        min(window, total_length) if layer_type == SLIDING_ATTENTION else total_length
        for layer_type in config["layer_types"]
    ]


def cache_bytes_for_config(config, total_length, batch_size=1, bytes_per_value=2):
    """Bytes of keys and values the caches hold for sequences of `total_length`.

    Per producing layer (Gemma 4's KV-sharing layers keep none, see
    `decoding.py`): `2 * batch * entries * kv_heads * head_dim * bytes`, with
    the layer's own head dim and KV-head count (`layers.architecture`).
    `bytes_per_value` 2 is bfloat16.
    """
    sources = kv_source_layers(config)
    total = 0
    for index, length in enumerate(cache_lengths_for_config(config, total_length)):
        if sources[index] != index:
            continue
        layer = block_arguments(config, index)
        total += 2 * batch_size * length * layer["num_key_value_heads"] * layer["head_dim"]
    return total * bytes_per_value


def cache_lengths(backbone, total_length):
    """`cache_lengths_for_config` of a backbone."""
    config = {
        "sliding_window_size": backbone.sliding_window_size,
        "layer_types": backbone.layer_types,
    }
    return cache_lengths_for_config(config, total_length)


def cache_class(layer_type, cache_length, total_length):
    """`RingKVCache` for a sliding layer whose window is shorter than the sequence."""
    if layer_type == SLIDING_ATTENTION and cache_length < total_length:
        return RingKVCache
    return KVCache
