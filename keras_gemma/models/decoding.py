"""Backend-neutral pieces of cached decoding: cache layout, masks, prefill, steps.

Layout. Prompts are left-padded to a bucket length `P`, so every row's last
prompt token sits in slot `P - 1` and all rows decode in lockstep; each row's
RoPE position is its slot minus its padding count. Each layer owns one
`(key_cache, value_cache)` pair, `[batch, cache_length, kv_heads, head_dim]`:
full-attention layers keep `total_length` slots; sliding-window layers keep a
ring of `min(sliding_window_size, total_length)` slots, slot `s` living at
`s % ring_length`. Nothing is re-stacked or copied per token: a decode step
writes one slot per layer through the backend's `write` function (in place on
PyTorch, a dynamic-update-slice that XLA does in place on JAX/TensorFlow).

Einsum letters as in `layers/attention.py`.
"""

from keras import ops

from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.direct_calls import call_layer
from keras_gemma.layers.masks import attention_mask as build_attention_mask


def cache_lengths_for_config(config, total_length):
    """Slots each layer's cache holds for sequences of `total_length`."""
    window = config["sliding_window_size"]
    return [
        min(window, total_length) if layer_type == SLIDING_ATTENTION else total_length
        for layer_type in config["layer_types"]
    ]


def cache_lengths(backbone, total_length):
    return cache_lengths_for_config(
        {"sliding_window_size": backbone.sliding_window_size, "layer_types": backbone.layer_types},
        total_length,
    )


def _ring_write(cache, new, start):
    """Writes `new` `[b, n, k, h]` into ring `cache` at slots `start..start+n-1`.

    Used for multi-token writes (prefill, chat turns); the n == 1 decode step
    writes one slot directly. `start` may be a tensor.
    """
    ring_length = cache.shape[1]
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
    return ops.where(written[None, :, None, None], rolled, cache)


def _cache_slots(layer_cache_length, is_ring, next_slot):
    """Absolute slot held by each cache entry when `next_slot` is the next write.

    Entries that were never written get a negative slot.
    """
    entries = ops.arange(layer_cache_length, dtype="int32")
    if not is_ring:
        return ops.where(entries < next_slot, entries, -1)
    last = next_slot - 1
    return last - ((last - entries) % layer_cache_length)


def _cache_mask(cache_slots, query_slots, padding_counts, window):
    """`[b, t, cache]`: may each query see each cache entry."""
    valid = ops.logical_and(
        cache_slots[None, :] >= 0, cache_slots[None, :] >= padding_counts[:, None]
    )  # (b, cache)
    return build_attention_mask(query_slots, cache_slots, valid, window)


def prefill(backbone, token_ids, padding_mask, total_length, training=False):
    """Runs the left-padded prompt `[b, P]` and fills fresh caches.

    Returns:
        `(hidden_states [b, P, d], caches)` where `caches` is a list of
        `(key_cache, value_cache)` per layer.
    """
    batch, prompt_length = token_ids.shape
    padding_mask = ops.cast(padding_mask, "int32")
    padding_counts = prompt_length - ops.sum(padding_mask, axis=1)  # (b,)
    slots = ops.arange(prompt_length, dtype="int32")
    positions = ops.maximum(slots[None, :] - padding_counts[:, None], 0)
    x = backbone.embed(token_ids)
    caches = []
    lengths = cache_lengths(backbone, total_length)
    masks = {}  # One per window: built once, not once per layer.
    for layer, length in zip(backbone.transformer_layers, lengths):
        is_sliding = layer.layer_type == SLIDING_ATTENTION
        window = backbone.sliding_window_size if is_sliding else None
        if window not in masks:
            masks[window] = build_attention_mask(slots, slots, padding_mask, window)
        mask = masks[window]
        x, (key, value) = call_layer(
            layer, x, positions=positions, attention_mask=mask, return_key_value=True
        )
        shape = (batch, length, backbone.num_key_value_heads, backbone.head_dim)
        empty = ops.zeros(shape, dtype=key.dtype)
        if is_sliding and length < total_length:
            caches.append((_ring_write(empty, key, 0), _ring_write(empty, value, 0)))
        else:
            pad = [[0, 0], [0, length - prompt_length], [0, 0], [0, 0]]
            caches.append((ops.pad(key, pad), ops.pad(value, pad)))
    return call_layer(backbone.final_normalization, x), caches


def extend(backbone, caches, token_ids, start, padding_counts, write, total_length):
    """Feeds `token_ids` `[b, n]` at slots `start..start+n-1` on top of `caches`.

    The new tokens attend to the cached slots and causally to each other.
    With `n == 1` this is one decode step and each cache gets a one-slot
    `write(cache, index, update)`; with `n > 1` (a chat turn) ring caches are
    rewritten whole. `total_length` is the sequence capacity the caches were
    made for (`prefill`'s argument).

    Returns:
        `(hidden_states [b, n, d], caches)`.
    """
    count = token_ids.shape[1]
    query_slots = start + ops.arange(count, dtype="int32")  # (n,)
    positions = query_slots[None, :] - padding_counts[:, None]  # (b, n)
    ones = ops.ones((token_ids.shape[0], count), dtype="bool")
    x = backbone.embed(token_ids)
    new_caches = []
    masks = {}  # One per cache kind: built once, not once per layer.
    lengths = cache_lengths(backbone, total_length)
    for layer, length, (key_cache, value_cache) in zip(backbone.transformer_layers, lengths, caches):
        is_sliding = layer.layer_type == SLIDING_ATTENTION
        window = backbone.sliding_window_size if is_sliding else None
        is_ring = is_sliding and length < total_length
        if (window, length) not in masks:
            cache_slots = _cache_slots(length, is_ring, start)
            masks[window, length] = ops.concatenate(
                [
                    _cache_mask(cache_slots, query_slots, padding_counts, window),
                    build_attention_mask(query_slots, query_slots, ones, window),
                ],
                axis=-1,
            )
        mask = masks[window, length]
        x, (key, value) = call_layer(
            layer,
            x,
            positions=positions,
            attention_mask=mask,
            cache=(key_cache, value_cache),
        )
        if count == 1:
            index = start % length if is_ring else start
            new_caches.append((write(key_cache, index, key), write(value_cache, index, value)))
        elif is_ring:
            new_caches.append(
                (_ring_write(key_cache, key, start), _ring_write(value_cache, value, start))
            )
        else:
            new_caches.append((write(key_cache, start, key), write(value_cache, start, value)))
    return call_layer(backbone.final_normalization, x), new_caches
