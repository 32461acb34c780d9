"""The engine's contract: a fixed set of programs, rows at their own positions, runtime settings.

On the shared tiny Gemma 3 (`tiny_lm`: sliding layers with a 4-slot ring,
q/k norms) and on NumPy references:
- after one warm-up call, new prompt lengths (across both chunk sizes),
  sampler settings, streaming and chat turns compile nothing (the engine's
  program counter, and on JAX XLA's own compile events);
- rows admitted at different times decode together and give each what it
  gives alone (greedy), which continuous batching relies on;
- seeded sampling repeats, and a row's draws do not depend on its batch;
- `generate`'s HF-style keywords, and the per-row runtime filters against a
  NumPy top-k / top-p / min-p on a vocabulary larger than the sort's
  candidates (the full-sort fallback).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_gemma import samplers
from keras_gemma.generation import engine
from keras_gemma.generation.batch import GREEDY
from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.samplers import sampling

PROMPT = [2, 17, 18, 19, 20, 21]


def _ids(prompt):
    return {"token_ids": np.array([prompt], "int32"), "padding_mask": np.ones((1, len(prompt)))}


def _new(lm, prompt, count=6, **kwargs):
    output = lm.generate(
        _ids(prompt), max_new_tokens=count, stop_token_ids=None, strip_prompt=True, **kwargs
    )
    return [int(t) for t, m in zip(output["token_ids"][0], output["padding_mask"][0]) if m]


class BackendCompiles:
    """XLA backend compilations on JAX while inside the block (None elsewhere)."""

    def __init__(self):
        self.count = None
        if keras.config.backend() == "jax":
            import jax

            self.count = 0

            def listener(event, duration, **kwargs):
                if event == "/jax/core/compile/backend_compile_duration" and self.active:
                    self.count += 1

            self.active = False
            jax.monitoring.register_event_duration_secs_listener(listener)

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False


def test_new_lengths_settings_streams_and_chat_turns_compile_nothing(tiny_lm):
    rng = np.random.default_rng(0)
    _new(tiny_lm, PROMPT)  # The warm-up: compiles the bucket's programs.
    chat = tiny_lm.chat_session(stop_token_ids=None)
    chat.send("Hello there", max_new_tokens=3)
    tiny_lm.generate(["The cat", "A dog"], max_new_tokens=3)  # The 2-row bucket.
    programs = tiny_lm.generator.compile_count
    assert programs > 0
    settings = [
        {},
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.5, "temperature": 1.3},
        {"min_p": 0.2},
        {"top_k": 40, "top_p": 0.9, "repetition_penalty": 1.5},
        {"repetition_penalty": 0.8},
    ]
    with BackendCompiles() as xla:
        # 1 to 300 tokens: one token (no prefill), small chunks, large chunks and both.
        for length, setting in zip((1, 2, 33, 129, 200, 300, 77), settings):
            prompt = [2] + rng.integers(3, 300, length - 1).tolist()
            _new(tiny_lm, prompt, count=5, seed=3, **setting)
        list(tiny_lm.generate("The cat", max_new_tokens=4, stream=True, top_k=3))
        for message in ("How are you", "And then?", "Tell me more about it"):
            chat.send(message, max_new_tokens=4)
        tiny_lm.generate(["A dog sat", "The"], max_new_tokens=3, top_p=0.8, min_p=0.1)
    assert tiny_lm.generator.compile_count == programs
    assert xla.count in (None, 0), f"{xla.count} XLA compilations after the warm-up"


def test_rows_admitted_mid_decode_give_what_they_give_alone(tiny_lm):
    prompts = [PROMPT, [2, 40, 41], [2] + list(range(50, 90))]
    alone = [_new(tiny_lm, prompt, count=12) for prompt in prompts]
    batch = DecodeBatch(tiny_lm, 4, engine.CAPACITIES[0])
    outputs = {row: [] for row in range(3)}

    def run(limit):
        for row, tokens in batch.run(limit).items():
            outputs[row].extend(tokens)

    batch.admit([Request(0, prompts[0], 12, GREEDY, 0, ())])
    run(3)
    batch.admit([Request(2, prompts[2], 12, GREEDY, 0, ())])  # row 0 is at slot 9, row 2 at 41
    run(5)
    batch.admit([Request(1, prompts[1], 12, GREEDY, 0, ())])
    while batch.any_active:
        run(engine.DECODE_STEPS)
    assert [outputs[row] for row in range(3)] == alone
    # A released row is reused by a new request from slot 0.
    batch.admit([Request(0, prompts[1], 12, GREEDY, 0, ())])
    outputs[0] = []
    while batch.any_active:
        run(engine.DECODE_STEPS)
    assert outputs[0] == alone[1]


def test_requests_joining_a_larger_batch_are_prefilled_in_their_own_rows(tiny_lm):
    """Prefill of fewer than half the rows runs on those rows only, and changes nothing else."""
    penalty = dict(GREEDY, repetition_penalty=1.5)  # Reads the row's seen tokens.
    prompts = [PROMPT, [2, 40, 41, 40, 41], [2] + list(range(50, 90)), [2, 7, 7, 7]]
    alone = [_new(tiny_lm, prompt, count=10, repetition_penalty=1.5) for prompt in prompts]
    batch = DecodeBatch(tiny_lm, 8, engine.CAPACITIES[0])
    widths = []
    prefill = tiny_lm.generator.prefill

    def spy(caches, seen, token_ids, *args):
        widths.append(len(token_ids))
        return prefill(caches, seen, token_ids, *args)

    outputs = {row: [] for row in range(8)}

    def run(limit):
        for row, tokens in batch.run(limit).items():
            outputs[row].extend(tokens)

    tiny_lm.generator.prefill = spy
    try:
        batch.admit([Request(row, prompts[row], 10, penalty, 0, ()) for row in (0, 1)])
        run(3)
        before = [np.array(ops.convert_to_numpy(c.key))[[0, 1, 3, 4]] for c in batch.caches]
        batch.admit([Request(5, prompts[2], 10, penalty, 0, ())])  # 41 tokens: two chunks
        after = [np.array(ops.convert_to_numpy(c.key))[[0, 1, 3, 4]] for c in batch.caches]
        run(4)
        # Row 0 finished with another sequence's seen tokens; its next request resets them.
        batch.admit([Request(3, prompts[3], 10, penalty, 0, ())])
        while batch.any_active:
            run(engine.DECODE_STEPS)
        batch.admit([Request(0, prompts[3], 10, penalty, 0, ())])
        outputs[0] = []
        while batch.any_active:
            run(engine.DECODE_STEPS)
    finally:
        del tiny_lm.generator.prefill
    assert widths == [2, 1, 1, 1, 1]  # 2 rows, 41 tokens in 2 chunks of one row, 1 row, 1 row
    for old, new in zip(before, after):  # Rows 0, 1 (decoding), 3, 4 (free): untouched.
        np.testing.assert_array_equal(old[:, :-1], new[:, :-1])  # (trash entries aside)
    assert [outputs[1], outputs[5], outputs[3], outputs[0]] == [
        alone[1],
        alone[2],
        alone[3],
        alone[3],
    ]


def test_seeded_sampling_repeats_and_does_not_depend_on_the_batch(tiny_lm):
    first = _new(tiny_lm, PROMPT, count=10, temperature=1.5, seed=11)
    assert first == _new(tiny_lm, PROMPT, count=10, temperature=1.5, seed=11)
    assert first != _new(tiny_lm, PROMPT, count=10, temperature=1.5, seed=12)
    batch = {
        "token_ids": np.array([PROMPT, [2, 9, 9, 9, 9, 9]], "int32"),
        "padding_mask": np.ones((2, 6)),
    }
    both = tiny_lm.generate(
        batch, max_new_tokens=10, stop_token_ids=None, strip_prompt=True, temperature=1.5, seed=11
    )
    assert both["token_ids"][0].tolist() == first
    # A sampler's own seed is the default seed (keras-hub's `TopKSampler(k=5, seed=2)`).
    sampler = samplers.TopKSampler(k=5, seed=2)
    assert _new(tiny_lm, PROMPT, sampler=sampler) == _new(tiny_lm, PROMPT, sampler=sampler)


def test_sampling_keywords(tiny_lm):
    greedy = _new(tiny_lm, PROMPT, count=8)
    assert _new(tiny_lm, PROMPT, count=8, temperature=0) == greedy
    assert _new(tiny_lm, PROMPT, count=8, top_k=1, temperature=5.0, seed=1) == greedy
    # A keyword overrides the compiled sampler for one call.
    sampler = samplers.RandomSampler(temperature=3.0)
    assert _new(tiny_lm, PROMPT, count=8, sampler=sampler, temperature=0) == greedy
    for keyword, value in [
        ("temperature", -1.0),
        ("top_k", -2),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 2.0),
        ("repetition_penalty", 0),
        ("temperature", "hot"),
    ]:
        with pytest.raises(ValueError, match=f"`{keyword}` must be"):
            _new(tiny_lm, PROMPT, **{keyword: value})
    with pytest.raises(ValueError, match="Beam search is deterministic"):
        _new(tiny_lm, PROMPT, sampler=samplers.BeamSampler(2), top_p=0.9)


class Halving(samplers.Sampler):
    """A user's sampler with its own filter: only tokens with even ids."""

    def filter_logits(self, logits):
        even = ops.arange(logits.shape[-1]) % 2 == 0
        return ops.where(even[None, :], logits, -1e9)


def test_a_custom_sampler_filter_is_compiled_in(tiny_lm):
    tokens = _new(tiny_lm, PROMPT, count=10, sampler=Halving(), seed=4)
    assert tokens and all(t % 2 == 0 for t in tokens)
    with pytest.raises(ValueError, match="filters logits itself"):
        _new(tiny_lm, PROMPT, sampler=Halving(), top_k=3)


def _numpy_filtered(logits, temperature, top_k, top_p, min_p):
    """HF's order per row: temperature, top-k, top-p over the survivors, min-p."""
    rows = []
    for row, t, k, p, m in zip(logits, temperature, top_k, top_p, min_p):
        z = row / (t if t > 0 else 1.0)
        keep = np.ones_like(z, bool)
        if k > 0:
            keep &= z >= np.sort(z)[-k]
        if p < 1:
            candidates = np.where(keep, z, -np.inf)
            order = np.argsort(-candidates, kind="stable")
            probs = np.exp(candidates[order] - candidates.max())
            probs /= probs.sum()
            before = np.cumsum(probs) - probs
            nucleus = np.zeros_like(keep)
            nucleus[order] = before < p
            keep &= nucleus
        if m > 0:
            keep &= z >= z.max() + np.log(m)
        rows.append(keep)
    return np.stack(rows)


def test_runtime_filters_per_row_match_numpy_with_full_sort_fallback():
    rng = np.random.default_rng(5)
    vocabulary = 3 * sampling.CANDIDATES  # a nucleus wider than the candidates needs a full sort
    logits = rng.normal(0, 0.3, (6, vocabulary)).astype("float32")
    logits[1] *= 20  # peaked: the candidates decide
    temperature = np.array([1.0, 0.7, 1.3, 0.0, 2.0, 1.0], "float32")
    top_k = np.array([0, 0, 40, 0, 600, 7], "int32")
    top_p = np.array([0.95, 0.5, 0.9, 1.0, 1.0, 0.6], "float32")
    min_p = np.array([0.0, 0.0, 0.0, 0.5, 0.0, 0.1], "float32")
    settings = sampling.SamplingTensors(
        *(ops.convert_to_tensor(a) for a in (temperature, top_k, top_p, min_p)),
        repetition_penalty=ops.ones((6,)),
        seed=ops.zeros((6,), "int32"),
    )
    filtered = ops.convert_to_numpy(
        sampling.filtered_logits(ops.convert_to_tensor(logits), settings)
    )
    expected = _numpy_filtered(logits, temperature, top_k, top_p, min_p)
    np.testing.assert_array_equal(filtered > sampling.EXCLUDED / 2, expected)
    assert expected[0].sum() > sampling.CANDIDATES  # row 0 did need the fallback


def test_noise_bits_are_the_same_on_every_backend():
    """MurmurHash3's finalizer in NumPy uint32 equals the int32 ops version."""

    def mix(x):
        x = x ^ (x >> 16)
        x = (x * np.uint32(0x85EBCA6B)) & 0xFFFFFFFF
        x = x ^ (x >> 13)
        x = (x * np.uint32(0xC2B2AE35)) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seed, counter = np.array([0, 7, 2**31 - 1], "uint64"), np.array([1, 5, 123456], "uint64")
    key = mix(mix(seed) ^ counter)
    index = (np.arange(50, dtype="uint64") * 0x9E3779B9) & 0xFFFFFFFF
    expected = mix((key[:, None] + index[None, :]) & 0xFFFFFFFF).astype("uint32").view("int32")
    bits = sampling.uniform_bits(
        ops.convert_to_tensor(seed.astype("int32")),
        ops.convert_to_tensor(counter.astype("int32")),
        50,
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(bits), expected)
