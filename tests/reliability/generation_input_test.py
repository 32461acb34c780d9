"""Bad arguments to `generate`, `compile`, the samplers and chat sessions.

Each case names the exact exception type and a fragment of its message; the
valid-but-odd inputs (an empty prompt, zero new tokens) have their documented
behaviour asserted instead. Tests in tests/generation/generate_test.py already
cover `max_new_tokens=-1`, the sampler name 'nucleus', a float prompt, a
string prompt without a tokenizer, 200k new tokens and ids outside the
vocabulary; the cases here are the rest.
"""

import keras
import numpy as np
import pytest

from keras_gemma import samplers

IDS = {"token_ids": np.array([[2, 40, 41]], "int32"), "padding_mask": np.ones((1, 3), "int32")}

# (case id, keyword arguments or callable, exception type, message fragment)
GENERATE_CASES = [
    # Prompts that are not prompts.
    (
        "empty_list",
        dict(inputs=[]),
        TypeError,
        "`inputs` must be a string, a list of strings, or a dict",
    ),
    ("none", dict(inputs=None), TypeError, "Received: NoneType None"),
    ("list_of_ints", dict(inputs=[1, 2, 3]), TypeError, "Received: list [1, 2, 3]"),
    ("mixed_list", dict(inputs=["a", 3]), TypeError, "Received: list ['a', 3]"),
    ("bytes", dict(inputs=b"hello"), TypeError, "Received: bytes b'hello'"),
    ("int_array", dict(inputs=np.array([1, 2])), TypeError, "Received: ndarray"),
    (
        "dict_without_token_ids",
        dict(inputs={"ids": [[2]]}),
        ValueError,
        "A dict prompt needs 'token_ids'",
    ),
    (
        "dict_with_zero_tokens",
        dict(inputs={"token_ids": np.zeros((1, 0), "int32")}),
        ValueError,
        "Prompt 0 has no tokens",
    ),
    (
        "dict_all_padding",
        dict(inputs={"token_ids": np.array([[2, 5]]), "padding_mask": np.zeros((1, 2))}),
        ValueError,
        "Prompt 0 has no tokens",
    ),
    (
        "negative_token_id",
        dict(inputs={"token_ids": np.array([[2, -5]])}),
        ValueError,
        "has token ids outside [0, 400): [-5]",
    ),
    # Lengths.
    (
        "max_new_tokens_float",
        dict(max_new_tokens=1.5),
        ValueError,
        "`max_new_tokens` must be an integer >= 0. Received: max_new_tokens=1.5",
    ),
    ("max_new_tokens_bool", dict(max_new_tokens=True), ValueError, "Received: max_new_tokens=True"),
    ("max_new_tokens_string", dict(max_new_tokens="3"), ValueError, "Received: max_new_tokens='3'"),
    ("max_new_tokens_minus_100", dict(max_new_tokens=-100), ValueError, "must be an integer >= 0"),
    (
        "max_new_tokens_past_any_gemma_context",
        dict(max_new_tokens=131_070),
        ValueError,
        "plus 131070 new tokens exceeds 131072 tokens",
    ),
    (
        "max_length_negative",
        dict(max_length=-1),
        ValueError,
        "`max_length` must be an integer >= 0",
    ),
    (
        "max_length_below_prompt",
        dict(max_length=2),
        ValueError,
        "`max_length=2` is shorter than the longest prompt (3 tokens)",
    ),
    # Samplers by name.
    (
        "sampler_empty_name",
        dict(sampler=""),
        ValueError,
        "Unknown sampler ''. Valid names: ['beam', 'greedy'",
    ),
    ("sampler_wrong_case", dict(sampler="GREEDY"), ValueError, "Unknown sampler 'GREEDY'"),
    (
        "sampler_int",
        dict(sampler=123),
        ValueError,
        "`sampler` must be a sampler instance or one of",
    ),
    (
        "sampler_class_not_instance",
        dict(sampler=samplers.TopKSampler),
        ValueError,
        "`sampler` must be a sampler instance",
    ),
    (
        "sampler_config_foreign_class",
        dict(sampler={"class_name": "os.system", "config": {}}),
        ValueError,
        "`sampler` must be a sampler instance",
    ),
    (
        "sampler_config_bad_k",
        dict(sampler={"class_name": "top_k", "config": {"k": 0}}),
        ValueError,
        "`k` must be an integer >= 1. Received: k=0",
    ),
    # Other arguments.
    (
        "stop_token_ids_unknown_string",
        dict(stop_token_ids="none"),
        ValueError,
        "`stop_token_ids` holds 'none', which is not a token of this vocabulary",
    ),
    (
        "stop_token_id_negative",
        dict(stop_token_ids=[-1]),
        ValueError,
        "Stop token id -1 is outside the vocabulary [0, 400)",
    ),
    (
        "stream_with_beam",
        dict(stream=True, sampler="beam"),
        ValueError,
        "Beam search cannot stream",
    ),
    (
        "stream_with_a_batch",
        dict(inputs=["a", "b"], stream=True),
        ValueError,
        "`stream=True` takes one prompt; received 2",
    ),
]


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [case[1:] for case in GENERATE_CASES],
    ids=[case[0] for case in GENERATE_CASES],
)
def test_generate_rejects(kwargs, error, fragment, tiny_lm):
    kwargs = dict(kwargs)
    inputs = kwargs.pop("inputs", IDS)
    kwargs.setdefault("max_new_tokens", 2)
    with pytest.raises(error) as info:
        result = tiny_lm.generate(inputs, **kwargs)
        if kwargs.get("stream"):
            list(result)
    assert type(info.value) is error
    assert fragment in str(info.value)


SAMPLER_CASES = [
    ("top_p_zero", lambda: samplers.TopPSampler(p=0.0), "`p` must be in (0, 1]. Received: p=0.0"),
    ("top_p_above_one", lambda: samplers.TopPSampler(p=1.5), "Received: p=1.5"),
    ("top_p_negative", lambda: samplers.TopPSampler(p=-0.1), "Received: p=-0.1"),
    ("top_p_nan", lambda: samplers.TopPSampler(p=float("nan")), "Received: p=nan"),
    ("top_p_string", lambda: samplers.TopPSampler(p="0.9"), "Received: p='0.9'"),
    (
        "top_p_k_zero",
        lambda: samplers.TopPSampler(p=0.9, k=0),
        "`k` must be None or an integer >= 1",
    ),
    ("top_k_zero", lambda: samplers.TopKSampler(k=0), "`k` must be an integer >= 1. Received: k=0"),
    ("top_k_negative", lambda: samplers.TopKSampler(k=-3), "Received: k=-3"),
    ("top_k_float", lambda: samplers.TopKSampler(k=2.5), "Received: k=2.5"),
    ("top_k_bool", lambda: samplers.TopKSampler(k=True), "Received: k=True"),
    ("min_p_zero", lambda: samplers.MinPSampler(p=0), "`p` must be in (0, 1]"),
    (
        "temperature_zero",
        lambda: samplers.RandomSampler(temperature=0),
        "`temperature` must be a number > 0",
    ),
    (
        "temperature_negative",
        lambda: samplers.TopKSampler(k=5, temperature=-1.0),
        "Received: temperature=-1.0",
    ),
    (
        "temperature_nan",
        lambda: samplers.TopPSampler(temperature=float("nan")),
        "Received: temperature=nan",
    ),
    (
        "temperature_none",
        lambda: samplers.RandomSampler(temperature=None),
        "Received: temperature=None",
    ),
    (
        "repetition_penalty_zero",
        lambda: samplers.GreedySampler(repetition_penalty=0),
        "`repetition_penalty` must be a number > 0",
    ),
    (
        "num_beams_zero",
        lambda: samplers.BeamSampler(num_beams=0),
        "`num_beams` must be an integer >= 1",
    ),
]


@pytest.mark.parametrize(
    "make,fragment", [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES]
)
def test_invalid_sampler_parameters(make, fragment):
    with pytest.raises(ValueError) as info:
        make()
    assert type(info.value) is ValueError
    assert fragment in str(info.value)


def test_compile_rejects_an_unknown_sampler(tiny_lm):
    with pytest.raises(ValueError, match="Unknown sampler 'nucleus'"):
        tiny_lm.compile(sampler="nucleus")
    assert isinstance(tiny_lm.sampler, samplers.GreedySampler)  # Unchanged.


def test_numpy_scalars_are_valid_sampler_parameters():
    sampler = samplers.TopPSampler(p=np.float32(0.5), k=np.int64(8), temperature=np.float64(0.7))
    assert (sampler.p, sampler.k, sampler.temperature) == (0.5, 8, 0.7)
    assert type(sampler.k) is int
    assert samplers.TopKSampler(k=np.int32(3)).k == 3
    assert samplers.BeamSampler(num_beams=np.int64(2)).num_beams == 2


# === Documented behaviour for odd but valid input ===


def test_empty_string_prompt_continues_from_the_start_token(tiny_lm):
    text = tiny_lm.generate("", max_new_tokens=3, stop_token_ids=None)
    assert isinstance(text, str)
    assert tiny_lm.generate([""], max_new_tokens=3, stop_token_ids=None) == [text]
    assert tiny_lm.generate("", max_new_tokens=3, stop_token_ids=None, strip_prompt=True) == text


def test_zero_new_tokens_returns_the_prompt(tiny_lm):
    assert tiny_lm.generate("hello", max_new_tokens=0) == "hello"
    assert tiny_lm.generate(["a", "bc"], max_length=0 + 4, max_new_tokens=0) == ["a", "bc"]
    assert list(tiny_lm.generate("hello", max_new_tokens=0, stream=True)) == []


# scipy.stats.chi2.isf(1e-9, df=7): a uniform sampler's statistic over 8 tokens
# exceeds it once in 10^9 seeds.
CHI_SQUARE_7_DEGREES_P_1E_9 = 55.9


def chi_square_against_uniform(sampler, vocabulary_size=8, draws=4000):
    """Pearson's statistic of `draws` samples from steep logits (-20 to 20) vs uniform."""
    logits = np.linspace(-20.0, 20.0, vocabulary_size, dtype="float32")
    samples = keras.ops.convert_to_numpy(sampler(np.tile(logits, (draws, 1)), seed=0))
    counts = np.bincount(samples, minlength=vocabulary_size)
    expected = draws / vocabulary_size
    return float(np.sum((counts - expected) ** 2 / expected))


def test_infinite_temperature_samples_uniformly():
    sampler = samplers.RandomSampler(temperature=float("inf"))
    assert sampler.temperature == float("inf")
    assert chi_square_against_uniform(sampler) < CHI_SQUARE_7_DEGREES_P_1E_9
    # The statistic tells the difference: greedy (28000) and temperature 1 fail it.
    assert chi_square_against_uniform(samplers.GreedySampler()) > 1000
    assert chi_square_against_uniform(samplers.RandomSampler()) > 1000


def test_infinite_temperature_in_generate(tiny_lm):
    rows, new_tokens = 16, 8
    batch = {key: np.repeat(value, rows, axis=0) for key, value in IDS.items()}
    output = tiny_lm.generate(
        batch,
        max_new_tokens=new_tokens,
        sampler=samplers.RandomSampler(temperature=float("inf")),
        stop_token_ids=None,
        strip_prompt=True,
    )
    tokens = np.asarray(output["token_ids"])[np.asarray(output["padding_mask"]).astype(bool)]
    assert tokens.size == rows * new_tokens
    assert np.all((0 <= tokens) & (tokens < tiny_lm.backbone.vocabulary_size))
    # 128 uniform draws from 400 tokens give about 110 distinct ones (fewer
    # than 64 has probability < 1e-20); greedy decoding gives the same row 16 times.
    assert len(np.unique(tokens)) > 64


# === Chat sessions ===

CHAT_CASES = [
    (
        "message_none",
        dict(message=None),
        TypeError,
        "`message` must be a string. Received: NoneType",
    ),
    ("message_list", dict(message=["hi"]), TypeError, "Received: list"),
    (
        "max_new_tokens_negative",
        dict(max_new_tokens=-1),
        ValueError,
        "`max_new_tokens` must be an integer >= 1. Received: max_new_tokens=-1",
    ),
    ("max_new_tokens_zero", dict(max_new_tokens=0), ValueError, "Received: max_new_tokens=0"),
    ("max_new_tokens_float", dict(max_new_tokens=2.0), ValueError, "Received: max_new_tokens=2.0"),
    (
        "past_max_length",
        dict(max_new_tokens=10_000),
        ValueError,
        "beyond this session's max_length=64",
    ),
]


@pytest.mark.parametrize(
    "kwargs,error,fragment", [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES]
)
def test_chat_session_rejects(kwargs, error, fragment, tiny_lm):
    session = tiny_lm.chat_session(max_length=64)
    kwargs = dict(kwargs)
    message = kwargs.pop("message", "hi")
    with pytest.raises(error) as info:
        session.send(message, **kwargs)
    assert type(info.value) is error
    assert fragment in str(info.value)
    assert session.messages == [] and session.cache_length == 0  # Nothing half-done.


def test_chat_session_rejects_beam_search(tiny_lm):
    with pytest.raises(ValueError, match="beam search is not supported"):
        tiny_lm.chat_session(sampler="beam")
