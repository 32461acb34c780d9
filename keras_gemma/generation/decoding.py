"""The model's part of cached decoding: feed tokens at per-row slots.

Backend-neutral (`keras.ops` only). Every call here runs the layers on the
direct path (`direct=True`: built sublayers' `call` without
`Layer.__call__`'s bookkeeping, see `layers/layer_calls.py`). The one
backend-specific piece, how cache entries are written, comes in as
`write_entries` (see `kv_cache.py` and `engine.py`).

Gemma 4: a KV-sharing layer (`backbone.kv_source_layers[i] != i`) keeps no
cache; `caches` holds one per producing layer, in layer order, and a sharing
layer attends its producer's cache plus the producer's keys/values of this
call. Every layer reads the caches as they were before the call: the writes
(in place on PyTorch) happen after the last layer. Per-layer inputs (PLE)
are computed once per call and sliced per layer.
"""

from keras import ops

from keras_gemma.generation.kv_cache import functional_write
from keras_gemma.layers.decoder_block import SLIDING_ATTENTION
from keras_gemma.layers.layer_calls import call_layer
from keras_gemma.layers.masks import attention_mask as build_attention_mask
from keras_gemma.layers.tied_logits import logits_from_hidden_states


def feed(
    backbone,
    caches,
    token_ids,
    starts,
    counts,
    write_entries=functional_write,
    row_ids=None,
    span=None,
):
    """Runs `token_ids` `[R, t]` on top of `caches`: row `r`'s token `i` at slot `starts[r] + i`.

    Only each row's first `counts[r]` tokens are real; the others (a prefill
    chunk's padding, rows with no request: count 0) go to the caches' trash
    entries and their outputs mean nothing. The new tokens attend to the
    cached slots below `starts[r]` and causally to each other.

    With `row_ids` `[R]`, the caches may hold more rows: row `r` of the call
    is cache row `row_ids[r]` (a few requests joining a larger batch: the
    work is that of `R` rows, the other cache rows are left as they are).

    Args:
        backbone: a `GemmaBackbone`.
        caches: one `KVCache` / `RingKVCache` per layer.
        token_ids: int32 `[R, t]`.
        starts: int32 `[R]`.
        counts: int32 `[R]`, each in `0..t`.
        write_entries: see `kv_cache.py`.
        row_ids: int32 `[R]` distinct cache rows, or None (row `r` is cache row `r`).
        span: int or None. The new tokens read only the caches' first `span`
            entries (`KVCache.within`): the caller promises every real token
            sits at a slot `<= span`. Attention over a short sequence then
            costs what its length costs, not the cache capacity's.

    Returns:
        `(hidden_states [R, t, d], caches)`.
    """
    length = token_ids.shape[1]
    offsets = ops.arange(length, dtype="int32")
    slots = starts[:, None] + offsets[None, :]  # (R, t)
    valid = offsets[None, :] < counts[:, None]  # (R, t)
    x = backbone.embed(token_ids, direct=True)  # (R, t, d)
    per_layer_inputs = None
    if getattr(backbone, "per_layer_embedding", None) is not None:
        per_layer_inputs = call_layer(
            backbone.per_layer_embedding, True, token_ids, x, direct=True
        )  # (R, t, layers, p)
    sources = backbone.kv_source_layers
    caches = iter(caches)
    layer_caches = {}  # producer index -> its cache (before this call)
    views = {}  # producer index -> the rows of its cache this call reads
    key_values = {}  # producer index -> this call's (key, value)
    masks = {}  # One per cache layout: built once, not once per layer.
    for index, layer in enumerate(backbone.transformer_layers):
        source = sources[index]
        if source == index:
            layer_caches[index] = next(caches)
            views[index] = layer_caches[index]
            if row_ids is not None:
                views[index] = views[index].take_rows(row_ids)
            views[index] = views[index].within(span)
        cache = views[source]
        window = _window(backbone, layer)
        mask_key = (type(cache), window, cache.length)
        if mask_key not in masks:
            masks[mask_key] = ops.concatenate(
                [
                    cache.attention_mask(starts, slots, window),
                    build_attention_mask(slots, slots, valid, window),
                ],
                axis=-1,
            )  # (R, t, entries + t)
        extra = {}
        if per_layer_inputs is not None:
            extra["per_layer_input"] = per_layer_inputs[:, :, index, :]
        if source != index:
            extra["shared_key_value"] = key_values[source]
        x, (key, value) = call_layer(
            layer,
            True,
            x,
            positions=slots,
            attention_mask=masks[mask_key],
            cache=cache.read(),
            direct=True,
            **extra,
        )
        if source == index:
            key_values[index] = (key, value)
    if write_entries is functional_write:
        key_values = _after(key_values, x)
    new_caches = tuple(
        layer_caches[index].write(slots, valid, *key_values[index], write_entries, row_ids)
        for index in sorted(layer_caches)
    )
    return call_layer(backbone.final_normalization, True, x), new_caches


def next_logits(
    backbone, caches, tokens, positions, active, write_entries=functional_write, span=None
):
    """One decode step: `tokens` `[R]` fed at `positions` `[R]` (rows where `active`).

    `span`: see `feed` (active rows' positions `<= span`).

    Returns:
        `(logits [R, vocabulary] float32, caches)`.
    """
    counts = ops.cast(active, "int32")
    hidden, caches = feed(
        backbone, caches, tokens[:, None], positions, counts, write_entries, span=span
    )
    logits = logits_from_hidden_states(backbone, hidden, decoding=True)[:, -1, :]
    return logits, caches


def _after(key_values, x):
    """`key_values` made to depend on `x` (the last layer's output), values unchanged.

    Under XLA (JAX, TensorFlow) the caches are updated in place inside the
    decode loop, and every layer's cache read must happen before the write.
    The new keys/values do not depend on the later layers' reads, so XLA's
    copy insertion cannot order the write last and copies each cache (twice
    a step, measured: 72 copies of the caches in the 8-row decode program of
    the 270M, 157 against 112 ms a step). Adding a zero computed from `x`
    orders the writes after the last layer, so no copy is needed.
    `x > inf` is False for every value, NaN and inf included, so the zero
    is exact. PyTorch writes in place itself and does not need this.
    """
    zero = ops.cast(ops.greater(x[0, 0, 0], float("inf")), "float32")
    return {
        index: tuple(t + ops.cast(zero, t.dtype) for t in pair)
        for index, pair in key_values.items()
    }


def _window(backbone, layer):
    """The layer's sliding window, or None for full attention."""
    return backbone.sliding_window_size if layer.layer_type == SLIDING_ATTENTION else None
