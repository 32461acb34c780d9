"""The model's part of cached decoding: prefill a prompt, extend the caches.

Backend-neutral (`keras.ops` only). Every call here runs the layers on the
direct path (`direct=True`: built sublayers' `call` without
`Layer.__call__`'s bookkeeping, see `layers/layer_calls.py`). The one
backend-specific piece, how a cache slot is written, comes in as `write_slots`
(see `kv_cache.py` and `engine.py`).

Einsum letters as in `layers/attention.py`.

Gemma 4 (kept small for the port to the new engine, issue 18): a KV-sharing
layer (`backbone.kv_source_layers[i] != i`) keeps no cache; `caches` holds
one entry per producing layer, in layer order, and a sharing layer attends
its producer's cache plus the producer's new keys/values of this call.
Per-layer inputs (PLE) are computed once per call and sliced per layer.
"""

from keras import ops

from keras_gemma.generation.kv_cache import cache_class
from keras_gemma.generation.kv_cache import cache_lengths
from keras_gemma.generation.kv_cache import functional_write
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.masks import attention_mask as build_attention_mask
from keras_gemma.layers.tied_logits import logits_from_hidden_states


def prefill(backbone, token_ids, padding_mask, total_length):
    """Runs the left-padded prompt `[b, P]` and fills fresh caches.

    Args:
        backbone: a `GemmaBackbone`.
        token_ids: int `[b, P]`.
        padding_mask: `[b, P]`, 1 for real tokens (left padding).
        total_length: int. Slots the caches are made for (prompt and new tokens).

    Returns:
        `(hidden_states [b, P, d], caches)`, `caches` a list of one
        `KVCache` / `RingKVCache` per layer.
    """
    prompt_length = token_ids.shape[1]
    padding_mask = ops.cast(padding_mask, "int32")
    padding_counts = prompt_length - ops.sum(padding_mask, axis=1)  # (b,)
    slots = ops.arange(prompt_length, dtype="int32")
    positions = ops.maximum(slots[None, :] - padding_counts[:, None], 0)  # (b, P)
    x = backbone.embed(token_ids, direct=True)  # (b, P, d)
    per_layer_inputs = _per_layer_inputs(backbone, token_ids, x)
    caches = []
    key_values = {}  # Gemma 4: producer index -> this call's (key, value)
    lengths = cache_lengths(backbone, total_length)
    masks = {}  # One per window: built once, not once per layer.
    for index, (layer, length) in enumerate(zip(backbone.transformer_layers, lengths)):
        window = _window(backbone, layer)
        if window not in masks:
            masks[window] = build_attention_mask(slots, slots, padding_mask, window)
        x, (key, value) = call_layer(
            layer,
            True,
            x,
            positions=positions,
            attention_mask=masks[window],
            return_key_value=True,
            direct=True,
            **_gemma4_arguments(backbone, index, per_layer_inputs, key_values),
        )
        if _kv_source(backbone, index) == index:
            key_values[index] = (key, value)
            kind = cache_class(layer.layer_type, length, total_length)
            caches.append(kind.from_prompt(key, value, length))
    return call_layer(backbone.final_normalization, True, x), caches


def extend(backbone, caches, token_ids, start, padding_counts, write_slots=functional_write):
    """Feeds `token_ids` `[b, n]` at slots `start..start+n-1` on top of `caches`.

    The new tokens attend to the cached slots and causally to each other.
    With `n == 1` this is one decode step and each cache gets a one-slot
    write; with `n > 1` (a chat turn) ring caches are rewritten whole.

    Args:
        backbone: a `GemmaBackbone`.
        caches: one `KVCache` per layer (`prefill`'s).
        token_ids: int `[b, n]`.
        start: int or int32 scalar tensor, the slot of the first new token.
        padding_counts: int32 `[b]`, each row's left padding.
        write_slots: `(buffer, index, update) -> buffer`, see `kv_cache.py`.

    Returns:
        `(hidden_states [b, n, d], caches)`.
    """
    count = token_ids.shape[1]
    query_slots = start + ops.arange(count, dtype="int32")  # (n,)
    positions = query_slots[None, :] - padding_counts[:, None]  # (b, n)
    ones = ops.ones((token_ids.shape[0], count), dtype="bool")
    x = backbone.embed(token_ids, direct=True)  # (b, n, d)
    per_layer_inputs = _per_layer_inputs(backbone, token_ids, x)
    new_caches = []
    key_values = {}  # Gemma 4: producer index -> this call's (key, value)
    producer_caches = {}  # Gemma 4: producer index -> its cache before this call's write
    masks = {}  # One per cache kind: built once, not once per layer.
    caches = iter(caches)
    for index, layer in enumerate(backbone.transformer_layers):
        source = _kv_source(backbone, index)
        if source == index:
            producer_caches[index] = next(caches)
        # A sharing layer reads its producer's cache; the slots written by this call are
        # masked out of it (`attention_mask`), so an in-place write is never read twice.
        cache = producer_caches[source]
        window = _window(backbone, layer)
        mask_key = (type(cache), window, cache.length)
        if mask_key not in masks:
            masks[mask_key] = ops.concatenate(
                [
                    cache.attention_mask(start, query_slots, padding_counts, window),
                    build_attention_mask(query_slots, query_slots, ones, window),
                ],
                axis=-1,
            )  # (b, n, cache + n)
        x, (key, value) = call_layer(
            layer,
            True,
            x,
            positions=positions,
            attention_mask=masks[mask_key],
            cache=cache.read(),
            direct=True,
            **_gemma4_arguments(backbone, index, per_layer_inputs, key_values),
        )
        if source == index:
            key_values[index] = (key, value)
            new_caches.append(cache.write(start, key, value, write_slots))
    return call_layer(backbone.final_normalization, True, x), new_caches


def next_logits(backbone, caches, tokens, slot, padding_counts, write_slots=functional_write):
    """One decode step of the model: `tokens` `[b, 1]` fed at `slot`.

    Returns:
        `(logits [b, vocabulary] float32, caches)`, the caches (a tuple)
        holding the new keys and values (written in place on PyTorch).
    """
    hidden, caches = extend(backbone, caches, tokens, slot, padding_counts, write_slots)
    logits = logits_from_hidden_states(backbone, hidden, decoding=True)[:, -1, :]
    return logits, tuple(caches)


def last_logits(backbone, hidden_states):
    """Float32 logits `[b, vocabulary]` after the last position of `hidden_states`."""
    return logits_from_hidden_states(backbone, hidden_states[:, -1:, :], decoding=True)[:, -1, :]


def _window(backbone, layer):
    """The layer's sliding window, or None for full attention."""
    return backbone.sliding_window_size if layer.layer_type == SLIDING_ATTENTION else None


def _kv_source(backbone, index):
    """The layer whose keys/values layer `index` attends (itself, except Gemma 4 sharing)."""
    return backbone.kv_source_layers[index]


def _per_layer_inputs(backbone, token_ids, embeddings):
    """Gemma 4 PLE `[b, t, layers, p]`, or None."""
    if backbone.per_layer_embedding is None:
        return None
    return call_layer(backbone.per_layer_embedding, True, token_ids, embeddings, direct=True)


def _gemma4_arguments(backbone, index, per_layer_inputs, key_values):
    """Layer `index`'s PLE slice and, for a sharing layer, its producer's keys/values."""
    arguments = {}
    if per_layer_inputs is not None:
        arguments["per_layer_input"] = per_layer_inputs[:, :, index, :]
    source = _kv_source(backbone, index)
    if source != index:
        arguments["shared_key_value"] = key_values[source]
    return arguments
