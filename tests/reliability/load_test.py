"""200 consecutive `generate` calls: no memory growth, no recompilation per call.

Prompts vary in length inside two prompt buckets (16 and 32 tokens) and ask
for 1 to 8 new tokens (one new-token bucket), so after a warm-up that meets
every bucket nothing compiles again. Resident memory is measured with
psutil after a warm-up and after the 200 calls.
"""

import gc

import keras
import numpy as np
import psutil

CALLS = 200
WARM_UP = 10
RSS_GROWTH_BOUND_MB = 50


def prompts(tokenizer, count, seed=0):
    """`(text, new tokens)`: prompts of 2 to 32 tokens (start token included)."""
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog while Gemma writes".split()
    for index in range(count):
        chosen = list(rng.choice(words, int(rng.integers(1, 14))))
        while len(tokenizer(" ".join(chosen))) + 1 > 32:
            chosen.pop()
        yield " ".join(chosen), 1 + index % 8


def rss_mb():
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_two_hundred_generate_calls(tiny_lm, record_property):
    lm = tiny_lm
    # Warm-up: one short and one long prompt so both prompt buckets compile.
    tokenizer = lm.preprocessor.tokenizer
    long_prompt = " ".join(["the quick brown fox"] * 2)
    assert 16 < len(tokenizer(long_prompt)) + 1 <= 32
    for text, count in [("hi", 2), (long_prompt, 8)] + list(prompts(tokenizer, WARM_UP, seed=1)):
        lm.generate(text, max_new_tokens=count, stop_token_ids=None)
    compiles = lm.generator.compile_count
    before = rss_mb()
    lengths = set()
    for text, count in prompts(tokenizer, CALLS):
        output = lm.generate(text, max_new_tokens=count, stop_token_ids=None, strip_prompt=True)
        assert isinstance(output, str)
        lengths.add(len(tokenizer(text)) + 1)
    growth = rss_mb() - before
    record_property("rss_growth_mb", round(growth, 1))
    print(
        f"\n[load] backend={keras.config.backend()} calls={CALLS} "
        f"prompt_lengths={min(lengths)}..{max(lengths)} "
        f"rss_before={before:.1f}MB growth={growth:.1f}MB "
        f"compiles_after_warmup={lm.generator.compile_count - compiles}"
    )
    assert min(lengths) <= 16 < max(lengths) <= 32  # Two prompt buckets were exercised.
    assert lm.generator.compile_count == compiles  # Constant (0 on PyTorch, which runs eagerly).
    assert growth < RSS_GROWTH_BOUND_MB
