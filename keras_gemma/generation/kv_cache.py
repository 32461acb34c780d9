"""Per-layer key/value caches whose rows sit at their own positions.

Each row of a batch is one sequence; its tokens occupy slots 0, 1, 2, ...
(the slot is the RoPE position: nothing is padded on the left), and each row
has its own next slot, so rows at different positions decode together. Each
layer owns one cache of keys and values, each `[rows, entries, kv_heads,
head_dim]`:

- `KVCache`: `capacity + 1` entries, slot `s` at entry `s` (full-attention
  layers, and sliding layers whose window covers the capacity).
- `RingKVCache`: `window + 1` entries, slot `s` at entry `s % window`
  (sliding-window layers keep only their window).

The last entry of either is a trash entry: writes that must not land (the
padding of a prefill chunk, rows with no request) go there, and no query
ever sees it. So a write never needs a branch, and a row can be reused by a
new request without clearing: a sequence's entries are valid only below its
next slot, which restarts at 0.

A write stores `[rows, n]` new keys at per-row slots through a
`write_entries(buffer, rows, entries, update)` function: `ops.scatter_update`
by default; the engine passes an in-place write on PyTorch. Caches are
`NamedTuple`s of two tensors, so they travel through `ops.while_loop`,
`jax.jit` and `tf.function` as they are; their class (full or ring) is part
of the structure, never a tensor.
"""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_gemma.layers.architecture import block_arguments
from keras_gemma.layers.architecture import kv_source_layers
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.masks import attention_mask as build_attention_mask


def functional_write(buffer, rows, entries, update):
    """`buffer` `[R, E, k, h]` with `update[r, i]` stored at `(rows[r, i], entries[r, i])`."""
    count = rows.shape[0] * rows.shape[1]
    indices = ops.stack([ops.reshape(rows, (count,)), ops.reshape(entries, (count,))], axis=1)
    updates = ops.reshape(update, (count,) + tuple(update.shape[2:]))
    return ops.scatter_update(buffer, indices, ops.cast(updates, buffer.dtype))


class KVCache(NamedTuple):
    """One layer's keys and values; slot `s` lives at entry `s`, the last entry is trash.

    Attributes:
        key: `[rows, entries, kv_heads, head_dim]`.
        value: same shape as `key`.
    """

    key: Any
    value: Any

    @property
    def length(self):
        """Entries held, the trash entry included (static)."""
        return self.key.shape[1]

    @property
    def trash(self):
        return self.length - 1

    @classmethod
    def empty(cls, rows, entries, kv_heads, head_dim, dtype):
        """A cache of `entries` slots (plus the trash entry), zeros."""
        shape = (rows, entries + 1, kv_heads, head_dim)
        return cls(ops.zeros(shape, dtype=dtype), ops.zeros(shape, dtype=dtype))

    def read(self):
        """`(key, value)`, each `[rows, entries, kv_heads, head_dim]`."""
        return self.key, self.value

    def entries_of(self, slots):
        return slots

    def write(self, slots, valid, key, value, write_entries=functional_write, row_ids=None):
        """The cache with `key`, `value` `[R, n, k, h]` at `slots` `[R, n]` where `valid`.

        Invalid tokens go to the trash entry. `row_ids` `[R]` names the cache
        row each of the `R` rows of `slots` goes to (default: row `r` to row `r`).
        """
        entries = ops.where(valid, self.entries_of(slots), self.trash)
        if row_ids is None:
            row_ids = ops.arange(slots.shape[0], dtype="int32")
        rows = ops.broadcast_to(ops.cast(row_ids, "int32")[:, None], slots.shape)
        return type(self)(
            write_entries(self.key, rows, entries, key),
            write_entries(self.value, rows, entries, value),
        )

    def slots(self, next_slots):
        """Slot held by each entry `[R, entries]` when `next_slots` `[R]` is next; -1 if none."""
        entries = ops.arange(self.length, dtype="int32")[None, :]
        held = ops.logical_and(entries < next_slots[:, None], entries < self.trash)
        return ops.where(held, entries, -1)

    def attention_mask(self, next_slots, query_slots, window=None):
        """Bool `[R, t, entries]`: may each query (at `query_slots` `[R, t]`) see each entry."""
        cache_slots = self.slots(next_slots)  # (R, entries)
        return build_attention_mask(query_slots, cache_slots, cache_slots >= 0, window)

    def within(self, span):
        """For reading: entries `0..span-1` as a full cache, or `self` if it holds no more.

        Exact for rows whose queries all sit at slots `<= span`: their entries
        are below `span`, and a ring has not wrapped (slot `s` is entry `s`).
        Entry `span` becomes the view's trash entry, which no query sees.
        """
        if span is None or span + 1 >= self.length:
            return self
        return KVCache(self.key[:, : span + 1], self.value[:, : span + 1])

    def take_rows(self, row_ids):
        """The cache of rows `row_ids` `[k]` only (a copy, for reading)."""
        return self.map(lambda buffer: ops.take(buffer, row_ids, axis=0))

    def map(self, function):
        """The cache with `function` applied to keys and values (e.g. reordering rows)."""
        return type(self)(function(self.key), function(self.value))


class RingKVCache(KVCache):
    """A sliding-window layer's cache: slot `s` lives at entry `s % window`."""

    __slots__ = ()

    @property
    def window(self):
        return self.length - 1

    def entries_of(self, slots):
        return slots % self.window

    def write(self, slots, valid, key, value, write_entries=functional_write, row_ids=None):
        # Of a chunk longer than the ring only the last `window` tokens survive:
        # the others would share entries with them.
        last = ops.max(ops.where(valid, slots, -1), axis=1, keepdims=True)
        valid = ops.logical_and(valid, slots > last - self.window)
        return super().write(slots, valid, key, value, write_entries, row_ids)

    def slots(self, next_slots):
        last = next_slots[:, None] - 1  # (R, 1)
        entries = ops.arange(self.length, dtype="int32")[None, :]
        held = last - ((last - entries) % self.window)
        return ops.where(ops.logical_and(held >= 0, entries < self.trash), held, -1)


def cache_entries_for_config(config, capacity):
    """Entries (trash excluded) each layer's cache holds for sequences of `capacity` slots."""
    window = config["sliding_window_size"]
    return [
        min(window, capacity) if layer_type == SLIDING_ATTENTION else capacity
        for layer_type in config["layer_types"]
    ]


def cache_bytes_for_config(config, capacity, batch_size=1, bytes_per_value=2):
    """Bytes of keys and values the caches hold for sequences of `capacity` slots.

    Per producing layer (Gemma 4's KV-sharing layers keep none):
    `2 * batch * entries * kv_heads * head_dim * bytes`, with the layer's own
    head dim and KV-head count (`layers.architecture`); trash entries not
    counted. `bytes_per_value` 2 is bfloat16.
    """
    sources = kv_source_layers(config)
    total = 0
    for index, entries in enumerate(cache_entries_for_config(config, capacity)):
        if sources[index] != index:
            continue
        layer = block_arguments(config, index)
        total += 2 * batch_size * entries * layer["num_key_value_heads"] * layer["head_dim"]
    return total * bytes_per_value


def producing_layers(backbone):
    """The layers that keep a cache: all but Gemma 4's KV-sharing layers, in order."""
    sources = backbone.kv_source_layers
    return [layer for i, layer in enumerate(backbone.transformer_layers) if sources[i] == i]


def _layout(backbone, capacity):
    """`(cache class, entries)` of each producing layer for sequences of `capacity` slots."""
    window = backbone.sliding_window_size
    layout = []
    for layer in producing_layers(backbone):
        ring = layer.layer_type == SLIDING_ATTENTION and window < capacity
        layout.append((RingKVCache, window) if ring else (KVCache, capacity))
    return layout


def empty_caches(backbone, rows, capacity, dtype):
    """One empty cache per producing layer for `rows` sequences of `capacity` slots."""
    caches = []
    for layer, (kind, entries) in zip(producing_layers(backbone), _layout(backbone, capacity)):
        attention = layer.attention
        heads, head_dim = attention.num_key_value_heads, attention.head_dim
        caches.append(kind.empty(rows, entries, heads, head_dim, dtype))
    return tuple(caches)


def grow(backbone, caches, capacity):
    """`caches` holding the same slots, laid out for sequences of `capacity` slots.

    Full caches get longer; a sliding layer's full cache becomes a ring once
    the capacity passes its window (slot `s < window` sits at the same entry
    in both); rings stay as they are.
    """
    grown = []
    for cache, (kind, entries) in zip(caches, _layout(backbone, capacity)):
        extra = entries + 1 - cache.length

        def pad(buffer, extra=extra):
            # Slots keep their entries; the trash entry moves to the new end.
            shape = (buffer.shape[0], extra) + tuple(buffer.shape[2:])
            return ops.concatenate([buffer, ops.zeros(shape, buffer.dtype)], axis=1)

        grown.append(kind(*cache.map(pad)) if extra > 0 else cache)
    return tuple(grown)
