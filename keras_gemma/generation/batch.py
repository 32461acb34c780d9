"""A batch of rows decoding together: the host-side bookkeeping of the engine.

A `DecodeBatch` owns one set of caches (`rows` sequences of up to `capacity`
slots each) and, as NumPy arrays, each row's position, next token, budget,
sampler settings, seed and stop tokens (`decode_loop.Rows`). Rows are
independent: `admit` starts a sequence in some rows (or continues one, as a
chat turn does) while the others keep their state, and `run` decodes every
active row at its own position. `generate` fills all rows at once; a chat
session keeps one row across turns; a server admits requests into free rows
between `run` calls (continuous batching).
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_gemma.generation.decode_loop import Rows
from keras_gemma.generation.engine import DECODE_STEPS
from keras_gemma.generation.engine import PREFILL_CHUNKS
from keras_gemma.generation.engine import chunk_plan
from keras_gemma.generation.engine import rows_for
from keras_gemma.generation.engine import span_for
from keras_gemma.generation.kv_cache import empty_caches
from keras_gemma.generation.kv_cache import grow
from keras_gemma.samplers.sampling import SamplingTensors

# Stop tokens a row holds; more are padded to a multiple of this.
STOP_SLOTS = 8
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


class Request(NamedTuple):
    """What `DecodeBatch.admit` starts in one row.

    Attributes:
        row: int.
        tokens: list of ints to feed (a prompt, or a chat turn's new tokens).
        max_new_tokens: int >= 0.
        settings: dict of sampler settings (`Sampler.settings()`).
        seed: int.
        stop_token_ids: tuple of ints.
        reset: bool. Start a new sequence at slot 0 (else continue the row's).
    """

    row: int
    tokens: list
    max_new_tokens: int
    settings: dict
    seed: int
    stop_token_ids: tuple
    reset: bool = True


class DecodeBatch:
    """Rows of sequences decoding together on one set of caches.

    Args:
        causal_lm: the model; its `generator` runs the programs.
        rows: int, a power of two.
        capacity: slots per row (a bucket of `engine.CAPACITIES`).
        pad_token_id: what an inactive row is fed.
        custom_filter: a user sampler's `filter_logits`, or None.
    """

    def __init__(self, causal_lm, rows, capacity, pad_token_id=0, custom_filter=None):
        backbone = causal_lm.backbone
        self.generator = causal_lm.generator
        self.backbone = backbone
        self.capacity = capacity
        self.pad_token_id = pad_token_id
        self.custom_filter = custom_filter
        dtype = backbone.transformer_layers[0].compute_dtype
        self.caches = empty_caches(backbone, rows, capacity, dtype)
        self.seen = ops.zeros((rows, backbone.vocabulary_size), dtype="bool")
        self.rows = Rows(
            token=np.full((rows,), pad_token_id, "int32"),
            position=np.zeros((rows,), "int32"),
            active=np.zeros((rows,), bool),
            remaining=np.zeros((rows,), "int32"),
            sampling=SamplingTensors(
                temperature=np.zeros((rows,), "float32"),
                top_k=np.zeros((rows,), "int32"),
                top_p=np.ones((rows,), "float32"),
                min_p=np.zeros((rows,), "float32"),
                repetition_penalty=np.ones((rows,), "float32"),
                seed=np.zeros((rows,), "int32"),
            ),
            stop_ids=np.full((rows, STOP_SLOTS), -1, "int32"),
        )
        self._used = np.zeros((rows,), bool)

    @property
    def size(self):
        return self.rows.token.shape[0]

    def positions(self):
        """Each row's next slot (NumPy copy)."""
        return self.rows.position.copy()

    def feed_chunk(self, token_ids, counts, starts=None, reset=None, row_ids=None):
        """One prefill program call: row `r`'s `counts[r]` tokens at `starts[r]`.

        `token_ids` `[k, C]` covers every row (`k` = `size`), or the distinct
        rows `row_ids` `[k]`; the other rows keep their state.
        """
        width = len(token_ids)
        if row_ids is None and width != self.size:
            raise ValueError(f"A chunk of {width} rows for a batch of {self.size} needs `row_ids`.")
        if starts is None:
            starts = self.rows.position if row_ids is None else self.rows.position[row_ids]
        reset = np.zeros((width,), bool) if reset is None else reset
        self.caches, self.seen = self.generator.prefill(
            self.caches,
            self.seen,
            np.asarray(token_ids, "int32"),
            np.asarray(starts, "int32"),
            np.asarray(counts, "int32"),
            np.asarray(reset, bool),
            None if row_ids is None else np.asarray(row_ids, "int32"),
        )

    def admit(self, requests):
        """Feeds each request's tokens but the last; the last is fed by the first `run`.

        Rows not named keep their state. Raises if a row would pass `capacity`.
        """
        rows = self.rows
        pending = {}
        starts = rows.position.copy()
        reset = np.zeros((self.size,), bool)
        for request in requests:
            if not request.tokens:
                raise ValueError(f"Row {request.row}: a request needs at least one token.")
            start = 0 if request.reset else int(rows.position[request.row])
            end = start + len(request.tokens) + request.max_new_tokens
            if end > self.capacity:
                raise ValueError(
                    f"Row {request.row} would reach {end} slots, beyond the batch's "
                    f"capacity of {self.capacity}."
                )
            starts[request.row] = start
            reset[request.row] = request.reset
            pending[request.row] = list(request.tokens[:-1])
        longest = max((len(tokens) for tokens in pending.values()), default=0)
        offset = 0
        reset &= self._used  # A row never used has no seen tokens to clear.
        plan = chunk_plan(longest) or ([PREFILL_CHUNKS[0]] if reset.any() else [])
        row_ids = self._chunk_rows(list(pending))
        fed = np.arange(self.size) if row_ids is None else row_ids
        reset = reset[fed]
        for chunk in plan:
            token_ids = np.full((len(fed), chunk), self.pad_token_id, "int32")
            counts = np.zeros((len(fed),), "int32")
            for index, row in enumerate(fed):
                part = pending.get(int(row), [])[offset : offset + chunk]
                token_ids[index, : len(part)] = part
                counts[index] = len(part)
            self.feed_chunk(token_ids, counts, starts[fed] + offset, reset, row_ids)
            reset[:] = False  # Cleared once, on the first chunk.
            offset += chunk
        for request in requests:
            row = request.row
            self._used[row] = True
            self._set_row(row, request, int(starts[row]) + len(request.tokens) - 1)

    def _chunk_rows(self, rows):
        """The rows a prefill chunk covers when `rows` join: None for all of them.

        Fewer requests than half the batch are fed in a chunk of the next
        power of two of rows (their rows, then free ones), so their prefill
        costs what their own count of rows costs, not the whole batch's.
        """
        width = rows_for(max(len(rows), 1))
        if width >= self.size:
            return None
        others = [row for row in range(self.size) if row not in set(rows)]
        return np.asarray(sorted(rows) + others[: width - len(rows)], "int32")

    def _set_row(self, row, request, position):
        rows = self.rows
        rows.token[row] = request.tokens[-1]
        rows.position[row] = position
        rows.active[row] = request.max_new_tokens > 0
        rows.remaining[row] = request.max_new_tokens
        for name, value in request.settings.items():
            getattr(rows.sampling, name)[row] = value
        rows.sampling.seed[row] = request.seed
        stops = tuple(request.stop_token_ids)
        if len(stops) > rows.stop_ids.shape[1]:
            width = -(-len(stops) // STOP_SLOTS) * STOP_SLOTS
            wider = np.full((self.size, width), -1, "int32")
            wider[:, : rows.stop_ids.shape[1]] = rows.stop_ids
            self.rows = rows = rows._replace(stop_ids=wider)
        rows.stop_ids[row] = -1
        rows.stop_ids[row, : len(stops)] = stops

    def release(self, row):
        """Stops decoding `row` (a finished or abandoned request); its slots are reusable."""
        self.rows.active[row] = False
        self.rows.remaining[row] = 0

    def run(self, limit=DECODE_STEPS, span="auto"):
        """One decode program call: up to `limit` tokens per active row.

        `span` "auto" picks the smallest decode span (`engine.span_for`) that
        holds every active row's slots in these steps; None reads the whole
        caches.

        Returns:
            `{row: [tokens]}` for the rows that produced tokens.
        """
        if span == "auto":
            active = self.rows.position[self.rows.active]
            last = int(active.max()) + min(limit, DECODE_STEPS) - 1 if active.size else 0
            span = span_for(self.capacity, last)
        self.caches, self.seen, rows, tokens, count = self.generator.decode(
            self.caches,
            self.seen,
            self.rows,
            limit,
            self.pad_token_id,
            self.custom_filter,
            span,
        )
        self.rows = _writable(rows)
        produced = {}
        for row in range(self.size):
            new = tokens[row, :count]
            new = new[new >= 0]
            if new.size:
                produced[row] = [int(t) for t in new]
        return produced

    @property
    def any_active(self):
        return bool(self.rows.active.any())

    def grow(self, capacity):
        """Moves every row to caches of `capacity` slots (a longer conversation)."""
        if capacity > self.capacity:
            self.caches = grow(self.backbone, self.caches, capacity)
            self.capacity = capacity


def _writable(rows):
    """`rows` with each array a writable NumPy copy (device results can be read-only)."""
    return Rows(
        *(np.array(field) for field in rows[:4]),
        SamplingTensors(*(np.array(field) for field in rows.sampling)),
        np.array(rows.stop_ids),
    )
