"""Cached generation on tiny models: equality with full forward passes and with transformers.

Covers `generate` (ids and text, batches, streaming, seeds, stop tokens, bad
input), beam search, chat sessions and the engine's compile reuse and
PyTorch trace checks; they share the module-scoped models below.
"""

import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma import samplers
from keras_gemma.generation.engine import CompiledGenerator
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.configs import FAMILIES
from keras_gemma.testing.configs import tiny_config

# Prompts longer than the tiny sliding window (4), and a short one: a ragged batch.
PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11, 12], [2, 11, 12], [2, 40, 41, 42, 43, 44]]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, transformers_checkpoint):
    """(transformers model, our GemmaCausalLM) with the same random weights."""
    checkpoint = transformers_checkpoint(request.param, seed=1, embedding_scale=0.05)
    return checkpoint.model, GemmaCausalLM.from_preset(checkpoint.directory)


@pytest.fixture(scope="module")
def gemma2_pair(transformers_checkpoint):
    """Gemma 2 (sliding window, soft-caps) for the family-independent tests."""
    checkpoint = transformers_checkpoint("gemma2", seed=1, embedding_scale=0.05)
    return checkpoint.model, GemmaCausalLM.from_preset(checkpoint.directory)


def _ids(prompt):
    return {
        "token_ids": np.array([prompt], "int32"),
        "padding_mask": np.ones((1, len(prompt)), "int32"),
    }


def _batch(prompts):
    length = max(len(p) for p in prompts)
    token_ids = np.zeros((len(prompts), length), "int32")
    padding_mask = np.zeros((len(prompts), length), "int32")
    for row, prompt in enumerate(prompts):  # right-padded, as a user would pass
        token_ids[row, : len(prompt)] = prompt
        padding_mask[row, : len(prompt)] = 1
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _greedy_by_full_forward(lm, prompt, count):
    """Greedy decoding by re-running the whole sequence at every step.

    Each step runs one right-padded array of a fixed length (so the backend
    compiles one shape); the causal mask makes the padding irrelevant.
    """
    length = len(prompt) + count
    sequence = list(prompt)
    for _ in range(count):
        token_ids = np.zeros((1, length), "int32")
        token_ids[0, : len(sequence)] = sequence
        padding_mask = (np.arange(length) < len(sequence))[None].astype("int32")
        logits = lm.predict_on_batch({"token_ids": token_ids, "padding_mask": padding_mask})
        sequence.append(int(np.asarray(logits)[0, len(sequence) - 1].argmax()))
    return sequence[len(prompt) :]


def _new_tokens(output, row=0):
    return [int(t) for t, m in zip(output["token_ids"][row], output["padding_mask"][row]) if m]


def test_cached_decoding_equals_full_forward_passes(pair):
    _, lm = pair
    count = 14  # crosses the 4-slot ring several times
    output = lm.generate(
        _batch(PROMPTS), max_new_tokens=count, stop_token_ids=None, strip_prompt=True
    )
    distinct = set()
    for row, prompt in enumerate(PROMPTS):
        expected = _greedy_by_full_forward(lm, prompt, count)
        assert _new_tokens(output, row) == expected
        distinct.update(expected)
    # The outputs are not degenerate: the test would catch a wrong cache.
    assert len(distinct) > 3


def test_batched_call_equals_one_by_one(gemma2_pair):
    _, lm = gemma2_pair
    batched = lm.generate(
        _batch(PROMPTS), max_new_tokens=10, stop_token_ids=None, strip_prompt=True
    )
    for row, prompt in enumerate(PROMPTS):
        alone = lm.generate(_ids(prompt), max_new_tokens=10, stop_token_ids=None, strip_prompt=True)
        assert _new_tokens(batched, row) == _new_tokens(alone)


def test_greedy_equals_transformers_generate(pair):
    import torch

    hf_model, lm = pair
    for prompt in PROMPTS:
        expected = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        output = lm.generate(
            _ids(prompt), max_new_tokens=12, stop_token_ids=None, strip_prompt=True
        )
        assert _new_tokens(output) == expected
    # On PyTorch the decode steps above replayed traces checked against eager.
    assert lm.generator.eager_fallbacks == 0


def test_beam_search_equals_transformers(gemma2_pair):
    import torch

    hf_model, lm = gemma2_pair
    prompt = PROMPTS[0]
    expected = hf_model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        num_beams=3,
        length_penalty=0.0,
        early_stopping=False,
        eos_token_id=None,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    output = lm.generate(
        _ids(prompt),
        max_new_tokens=8,
        stop_token_ids=None,
        strip_prompt=True,
        sampler=samplers.BeamSampler(num_beams=3, length_penalty=0.0),
    )
    assert _new_tokens(output) == expected


def test_one_beam_is_greedy(gemma2_pair):
    _, lm = gemma2_pair
    greedy = lm.generate(_ids(PROMPTS[2]), max_new_tokens=9, stop_token_ids=None, strip_prompt=True)
    beam = lm.generate(
        _ids(PROMPTS[2]),
        max_new_tokens=9,
        stop_token_ids=None,
        strip_prompt=True,
        sampler=samplers.BeamSampler(num_beams=1),
    )
    assert _new_tokens(beam) == _new_tokens(greedy)


def test_stop_token_ends_a_row(gemma2_pair):
    _, lm = gemma2_pair
    free = _new_tokens(
        lm.generate(_ids(PROMPTS[0]), max_new_tokens=10, stop_token_ids=None, strip_prompt=True)
    )
    stop = free[4]
    first = free.index(stop)
    stopped = lm.generate(
        _ids(PROMPTS[0]), max_new_tokens=10, stop_token_ids=[stop], strip_prompt=True
    )
    assert _new_tokens(stopped) == free[:first]


@pytest.mark.skipif(
    keras.config.backend() != "torch", reason="decode-step tracing is the PyTorch path"
)
def test_torch_trace_that_reads_a_value_in_python_runs_eagerly(gemma2_pair):
    import torch

    generator = CompiledGenerator(gemma2_pair[1])

    def reads_slot(x, slot):
        return (x * int(slot),)  # A trace freezes int(slot) at its first value.

    def honest(x, slot):
        return (x * slot,)

    x = torch.ones(3)
    for name, function in (("reads", reads_slot), ("honest", honest)):
        traced = generator._torch_traced(name, function)
        assert [float(traced(x, torch.tensor(slot))[0][0]) for slot in (2, 3, 4)] == [2.0, 3.0, 4.0]
    assert generator.compile_count == 2  # both traced,
    assert generator.eager_fallbacks == 1  # only the honest trace kept.


def test_same_bucket_does_not_recompile(gemma2_pair):
    _, lm = gemma2_pair
    lm.generate(_ids(PROMPTS[0]), max_new_tokens=5, stop_token_ids=None)
    count = lm.generator.compile_count
    for prompt, new in ((PROMPTS[1], 7), (PROMPTS[2], 20), (PROMPTS[0], 31)):
        lm.generate(_ids(prompt), max_new_tokens=new, stop_token_ids=None)
    assert lm.generator.compile_count == count


def test_seeded_sampling_repeats(gemma2_pair):
    _, lm = gemma2_pair
    kwargs = dict(max_new_tokens=12, stop_token_ids=None, strip_prompt=True)
    sampler = samplers.RandomSampler(temperature=2.0)
    first = _new_tokens(lm.generate(_ids(PROMPTS[0]), sampler=sampler, seed=7, **kwargs))
    again = _new_tokens(lm.generate(_ids(PROMPTS[0]), sampler=sampler, seed=7, **kwargs))
    other = _new_tokens(lm.generate(_ids(PROMPTS[0]), sampler=sampler, seed=8, **kwargs))
    assert first == again
    assert first != other


def test_score_equals_log_softmax_of_forward_pass(gemma2_pair):
    _, lm = gemma2_pair
    inputs = _batch(PROMPTS)
    scores = lm.score(inputs)
    logits = np.asarray(lm.predict_on_batch(inputs)).astype("float64")
    maximum = logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits - maximum).sum(-1, keepdims=True)) - maximum
    for row, prompt in enumerate(PROMPTS):
        expected = [log_probs[row, i, prompt[i + 1]] for i in range(len(prompt) - 1)]
        np.testing.assert_allclose(scores[row, : len(prompt) - 1], expected, atol=1e-4)
        assert np.all(scores[row, len(prompt) - 1 :] == 0)


# === Text in, text out ===


@pytest.fixture(scope="module")
def text_lm(tokenizer, transformers_checkpoint):
    checkpoint = transformers_checkpoint(
        "gemma3", seed=2, embedding_scale=0.05, vocabulary_size=tokenizer.vocabulary_size
    )
    lm = GemmaCausalLM.from_preset(checkpoint.directory)
    lm.preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    return lm


def test_string_prompts_and_strip_prompt(text_lm):
    texts = text_lm.generate(["The cat", "A dog sat on"], max_new_tokens=6, stop_token_ids=None)
    stripped = text_lm.generate(
        ["The cat", "A dog sat on"], max_new_tokens=6, stop_token_ids=None, strip_prompt=True
    )
    assert texts[0].startswith("The cat") and texts[1].startswith("A dog sat on")
    assert texts[0] == "The cat" + stripped[0] or texts[0].startswith("The cat")
    single = text_lm.generate("The cat", max_new_tokens=6, stop_token_ids=None)
    assert single == texts[0]


def test_stream_yields_the_same_text(text_lm):
    whole = text_lm.generate("The cat", max_new_tokens=8, stop_token_ids=None)
    pieces = list(text_lm.generate("The cat", max_new_tokens=8, stop_token_ids=None, stream=True))
    assert len(pieces) > 2
    assert "".join(pieces) == whole


def test_chat_reuses_the_cache_and_matches_a_fresh_call(text_lm):
    tokenizer = text_lm.preprocessor.tokenizer
    session = text_lm.chat_session(max_length=256, stop_token_ids=None)
    session.send("Hello there", max_new_tokens=5)
    read_after_first = session.tokens_read
    second = session.send("How are you", max_new_tokens=5)
    turn_tokens = session.tokens_read - read_after_first
    # Only the new turn was read: the first reply's last token and the
    # `<end_of_turn>` that closes it (no stop token was set), a newline, the
    # user turn without `<bos>`, then the 4 reply tokens fed while decoding.
    new_turn = tokenizer.apply_chat_template([{"role": "user", "content": "How are you"}])
    assert turn_tokens == 2 + len(tokenizer.tokenize("\n")) + len(new_turn) - 1 + 4
    assert session.cache_length == session.tokens_read
    # Same tokens as one fresh call on the whole conversation, token-level.
    conversation = session._history_tokens()
    fresh = text_lm.generate(
        {"token_ids": np.array([conversation]), "padding_mask": np.ones((1, len(conversation)))},
        max_new_tokens=5,
        stop_token_ids=None,
        strip_prompt=True,
    )
    assert tokenizer.detokenize(_new_tokens(fresh)) == second


def test_chat_stream_yields_the_same_replies(text_lm):
    whole = text_lm.chat_session(max_length=256, stop_token_ids=None)
    streamed = text_lm.chat_session(max_length=256, stop_token_ids=None)
    for message in ("Hello there", "How are you"):
        reply = whole.send(message, max_new_tokens=5)
        pieces = list(streamed.send(message, max_new_tokens=5, stream=True))
        assert "".join(pieces) == reply
    assert streamed.cache_length == whole.cache_length
    assert streamed.messages == whole.messages


def test_chat_reply_ends_before_its_stop_token(text_lm):
    tokenizer = text_lm.preprocessor.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}])
    ids = {"token_ids": np.array([prompt]), "padding_mask": np.ones((1, len(prompt)))}
    free = _new_tokens(
        text_lm.generate(ids, max_new_tokens=6, stop_token_ids=None, strip_prompt=True)
    )
    stop = free[2]
    before = free[: free.index(stop)]
    expected = tokenizer.detokenize(before) if before else ""
    for stream in (False, True):
        session = text_lm.chat_session(max_length=256, stop_token_ids=[stop])
        reply = session.send("Hello there", max_new_tokens=6, stream=stream)
        assert ("".join(reply) if stream else reply) == expected
        assert session.messages[-1] == {"role": "assistant", "content": expected}


def test_fit_on_strings_lowers_the_loss(text_lm):
    lm = GemmaCausalLM(
        keras_gemma.GemmaBackbone(
            **tiny_config("gemma", vocabulary_size=text_lm.backbone.vocabulary_size)
        ),
        text_lm.preprocessor,
    )
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = ["the cat sat on the mat", "a dog ate the bone"] * 4
    history = lm.fit(data, epochs=6, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]


# === Bad input ===


def test_generate_rejects_bad_input(gemma2_pair):
    _, lm = gemma2_pair
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate(_ids(PROMPTS[0]), max_new_tokens=-1)
    with pytest.raises(ValueError, match="Unknown sampler 'nucleus'"):
        lm.generate(_ids(PROMPTS[0]), max_new_tokens=2, sampler="nucleus")
    with pytest.raises(TypeError, match="`inputs` must be a string"):
        lm.generate(3.5, max_new_tokens=2)
    with pytest.raises(ValueError, match="String prompts need a tokenizer"):
        lm.generate("hello", max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds 131072 tokens"):
        lm.generate(_ids(PROMPTS[0]), max_new_tokens=200_000)
    with pytest.raises(ValueError, match="has token ids outside"):
        lm.generate(_ids([2, 99999]), max_new_tokens=2)
    assert _new_tokens(lm.generate(_ids(PROMPTS[0]), max_new_tokens=0)) == PROMPTS[0]


@pytest.mark.skipif(
    keras.config.backend() != "torch", reason="decode-step tracing is the PyTorch path"
)
def test_torch_trace_is_kept_when_only_cache_trash_entries_differ(gemma2_pair):
    """Writes that must not land all go to a cache's trash entry, several at once, so its
    value depends on write order (eager and traced PyTorch differ on the real 270M)."""
    import torch

    from keras_gemma.generation.kv_cache import KVCache

    generator = CompiledGenerator(gemma2_pair[1])

    def write(cache, noise, entry):
        # `noise` stands for order-dependent values: a trace replays other ones than eager.
        key = cache.key.clone()
        key[:, entry] = torch.rand(key[:, entry].shape) + noise
        return (KVCache(key, cache.value),)

    cache = KVCache(torch.zeros(1, 5, 1, 2), torch.zeros(1, 5, 1, 2))
    for name, entry in (("trash", 4), ("slot", 2)):
        traced = generator._torch_traced(name, lambda c, n, e=entry: write(c, n, e))
        for noise in (0.0, 1.0, 2.0):
            traced(cache, torch.tensor(noise))
    assert generator.compile_count == 2  # both traced,
    assert generator.eager_fallbacks == 1  # the trash-only difference kept its trace.
