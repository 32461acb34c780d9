"""The two backend-neutral programs: prefill a chunk, decode a fixed number of steps.

Written with `keras.ops` (`ops.while_loop` and `ops.cond` included), so JAX
and TensorFlow compile each into one program and PyTorch runs the decode
loop in Python over a traced model step (`engine.py` decides which).
Everything that varies between calls (prompt tokens, per-row slots, sampler
settings, seeds, stop tokens, budgets) is a tensor argument, so the programs
depend only on the shapes: rows, cache capacity, chunk length.
"""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_gemma.samplers.sampling import sample


class Rows(NamedTuple):
    """Each row's decoding state, `[R]` unless noted.

    Attributes:
        token: int32. The next token to feed (the last prompt token, then
            each sampled token).
        position: int32. The slot `token` is fed at.
        active: bool. The row is decoding (has a request, not stopped).
        remaining: int32. Tokens the row may still sample.
        sampling: `SamplingTensors` of the row's sampler settings.
        stop_ids: int32 `[R, S]`, the row's stop tokens, -1 padded.
    """

    token: Any
    position: Any
    active: Any
    remaining: Any
    sampling: Any
    stop_ids: Any


def mark_seen(seen, tokens, valid, row_ids=None):
    """`seen` `[R, V]` with `tokens` `[k, n]` marked where `valid` `[k, n]`, in rows `row_ids`.

    `row_ids` `[k]` defaults to rows `0..k-1`.
    """
    rows, count = tokens.shape
    if row_ids is None:
        row_ids = ops.arange(rows, dtype="int32")
    row_index = ops.broadcast_to(ops.cast(row_ids, "int32")[:, None], (rows, count))
    indices = ops.stack(
        [ops.reshape(row_index, (-1,)), ops.reshape(ops.cast(tokens, "int32"), (-1,))], axis=1
    )
    hits = ops.scatter(indices, ops.reshape(ops.cast(valid, "int32"), (-1,)), seen.shape)
    return ops.logical_or(seen, hits > 0)


def prefill(feed, caches, seen, token_ids, starts, counts, reset, *row_ids):
    """Feeds one chunk `[k, C]` at per-row `starts`; returns `(caches, seen)`.

    `feed(caches, token_ids, starts, counts, *row_ids) -> caches` is the
    model's part (`decoding.feed`, traced on PyTorch). `reset` `[k]` clears a
    row's seen tokens first (a new sequence in the row). Without `row_ids`
    the chunk covers every row (`k = R`); with `row_ids` `[k]` (distinct) its
    row `r` is the batch's row `row_ids[r]`, and the other rows are left as
    they are.
    """
    if row_ids:
        cleared = ops.scatter(row_ids[0][:, None], ops.cast(reset, "int32"), (seen.shape[0],))
        seen = ops.where(cleared[:, None] > 0, False, seen)
    else:
        seen = ops.where(reset[:, None], False, seen)
    valid = ops.arange(token_ids.shape[1], dtype="int32")[None, :] < counts[:, None]
    seen = mark_seen(seen, token_ids, valid, *row_ids)
    return feed(caches, token_ids, starts, counts, *row_ids), seen


def decode_step(step_logits, caches, seen, rows, pad_token_id, custom_filter=None):
    """Feeds each active row's token, samples its next one.

    `step_logits(caches, tokens, positions, active) -> (logits, caches)` is the
    model's part (`decoding.next_logits`, traced on PyTorch).

    Returns:
        `(caches, seen, rows, new_tokens [R])`, -1 in inactive rows.
    """
    active = rows.active
    seen = mark_seen(seen, rows.token[:, None], active[:, None])
    logits, caches = step_logits(caches, rows.token, rows.position, active)
    # The draw's counter is the new token's slot: each row's draws are its own.
    drawn = sample(logits, rows.sampling, seen, rows.position + 1, custom_filter)
    drawn = ops.where(active, drawn, pad_token_id)
    stopped = ops.any(drawn[:, None] == rows.stop_ids, axis=1)
    step = ops.cast(active, "int32")
    remaining = rows.remaining - step
    rows = rows._replace(
        token=ops.where(active, drawn, rows.token),
        position=rows.position + step,
        active=ops.logical_and(active, ops.logical_and(ops.logical_not(stopped), remaining > 0)),
        remaining=remaining,
    )
    return caches, seen, rows, ops.where(active, drawn, -1)


def decode(step_logits, caches, seen, rows, limit, steps, pad_token_id, custom_filter=None):
    """Up to `min(steps, limit)` decode steps, stopping early once no row is active.

    Returns:
        `(caches, seen, rows, tokens [R, steps], count)`: column `i` holds
        step `i`'s tokens (-1 where a row was inactive), `count` the steps run.
    """
    tokens = ops.full((rows.token.shape[0], steps), -1, dtype="int32")
    limit = ops.minimum(ops.convert_to_tensor(limit, "int32"), steps)

    # The loop variables are one tuple: every backend's `while_loop` passes
    # them to `cond` and `body` unpacked.
    def cond(caches, seen, rows, tokens, index):
        return ops.logical_and(index < limit, ops.any(rows.active))

    def body(caches, seen, rows, tokens, index):
        caches, seen, rows, new = decode_step(
            step_logits, caches, seen, rows, pad_token_id, custom_filter
        )
        tokens = ops.slice_update(tokens, (0, index), new[:, None])
        return caches, seen, rows, tokens, index + 1

    start = (caches, seen, rows, tokens, ops.convert_to_tensor(0, "int32"))
    caches, seen, rows, tokens, count = ops.while_loop(cond, body, start)
    return caches, seen, rows, tokens, count
