"""Decode spans: attention that reads only a cache's first entries while the rows are short.

On a tiny Gemma 3 whose sliding window (24) is longer than the spans, so
both a full cache and a ring are read through `KVCache.within`:
- a step's logits with a span the rows fit in equal those over the whole
  caches, and differ once a row passes the span (the view is really used);
- a batch decoding across several spans (`run`'s "auto") gives the tokens
  and the caches the whole-cache decode gives;
- `span_for` picks the smallest span holding a slot, None past the last.
"""

import numpy as np
import pytest
from keras import ops

from keras_gemma.generation import decoding
from keras_gemma.generation import engine
from keras_gemma.generation.batch import GREEDY
from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.generation.kv_cache import KVCache
from keras_gemma.generation.kv_cache import RingKVCache

CAPACITY, WINDOW = 64, 24
PROMPTS = ([2, 17, 18], [2, 30, 31, 32, 33])


@pytest.fixture(scope="module")
def long_window_lm(tokenizer):
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
    from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
    from keras_gemma.testing.models import random_backbone

    backbone = random_backbone(seed=1, sliding_window_size=WINDOW)
    return GemmaCausalLM(backbone, GemmaCausalLMPreprocessor(tokenizer, sequence_length=32))


def _batch(lm, new_tokens=20):
    batch = DecodeBatch(lm, len(PROMPTS), CAPACITY)
    batch.admit(
        [Request(row, prompt, new_tokens, GREEDY, 0, ()) for row, prompt in enumerate(PROMPTS)]
    )
    return batch


def test_within_is_a_full_view_of_the_first_entries():
    key = ops.reshape(ops.arange(2 * 11, dtype="float32"), (2, 11, 1, 1))
    for kind in (KVCache, RingKVCache):
        cache = kind(key, -key)
        view = cache.within(4)
        assert type(view) is KVCache and view.length == 5  # 4 entries and a trash entry.
        np.testing.assert_array_equal(
            ops.convert_to_numpy(view.key), ops.convert_to_numpy(key)[:, :5]
        )
        assert cache.within(10) is cache and cache.within(None) is cache


def test_a_step_within_its_span_equals_the_whole_cache_and_differs_past_it(long_window_lm):
    backbone = long_window_lm.backbone
    batch = _batch(long_window_lm)
    caches = batch.caches
    tokens = ops.convert_to_tensor(batch.rows.token)
    positions = ops.convert_to_tensor(batch.rows.position)  # 2 and 4
    active = ops.convert_to_tensor(batch.rows.active)
    kinds = {type(cache) for cache in caches}
    assert kinds == {KVCache, RingKVCache}

    def logits(span):
        result, _ = decoding.next_logits(backbone, caches, tokens, positions, active, span=span)
        return ops.convert_to_numpy(result)

    whole = logits(None)
    for span in (4, 8, 16):
        np.testing.assert_allclose(logits(span), whole, rtol=1e-5, atol=1e-5)
    # Row 1's query at slot 4 cannot see slots 2 and 3 through a span of 2.
    past = logits(2)
    np.testing.assert_allclose(past[0], whole[0], rtol=1e-5, atol=1e-5)
    assert np.abs(past[1] - whole[1]).max() > 1e-3


def test_decoding_across_spans_gives_the_whole_cache_tokens_and_caches(long_window_lm, monkeypatch):
    whole = _batch(long_window_lm, 30)
    whole_tokens = {0: [], 1: []}
    while whole.any_active:
        for row, new in whole.run(limit=3, span=None).items():
            whole_tokens[row] += new
    monkeypatch.setattr(engine, "DECODE_SPANS", (8, 16))
    assert engine.spans_for(CAPACITY) == (8, 16, None)
    spanned = _batch(long_window_lm, 30)
    spanned_tokens = {0: [], 1: []}
    used = set()
    while spanned.any_active:
        last = int(spanned.rows.position[spanned.rows.active].max()) + 2
        used.add(engine.span_for(CAPACITY, last))
        for row, new in spanned.run(limit=3).items():
            spanned_tokens[row] += new
    # Row 1 goes from slot 4 to 33, past the window: its ring wraps in the last runs.
    assert used == {8, 16, None}
    assert spanned_tokens == whole_tokens and len(whole_tokens[1]) == 30
    for a, b in zip(whole.caches, spanned.caches):
        for x, y in zip(a.read(), b.read()):
            x, y = ops.convert_to_numpy(x)[:, :-1], ops.convert_to_numpy(y)[:, :-1]
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_span_for_picks_the_smallest_span_holding_the_slot():
    assert engine.spans_for(2048) == (256, None)
    assert engine.spans_for(8192) == (256, 2048, None)
    assert [engine.span_for(8192, s) for s in (0, 256, 257, 2048, 2049)] == [
        256,
        256,
        2048,
        2048,
        None,
    ]
