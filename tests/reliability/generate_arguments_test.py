"""generate() and fit() arguments that used to give raw Python errors (issue 19, case 12).

`seed="abc"` and `stop_token_ids=["<eos>"]` gave "invalid literal for int()",
`stop_token_ids=1` "'int' object is not iterable", a lone surrogate a
pybind11 cast error and `fit([])` `KeyError: 'pop from an empty set'`. Token
strings and a single id are now accepted as stop tokens (mapped through the
tokenizer); the rest are `ValueError`s naming the argument.
"""

import pytest

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor

PROMPT = "the quick brown fox"


@pytest.mark.parametrize("seed", ["abc", 1.5, True, [1], b"1"])
def test_a_seed_that_is_not_an_int(seed, tiny_lm):
    with pytest.raises(ValueError, match=r"`seed` must be an int or None. Received: seed="):
        tiny_lm.generate(PROMPT, max_new_tokens=2, seed=seed)


ID_PROMPT = {"token_ids": [[2, 10, 11, 12]], "padding_mask": [[1, 1, 1, 1]]}


def new_ids(lm, stop_token_ids):
    out = lm.generate(ID_PROMPT, max_new_tokens=8, strip_prompt=True, stop_token_ids=stop_token_ids)
    return [int(i) for i, keep in zip(out["token_ids"][0], out["padding_mask"][0]) if keep]


def test_stop_tokens_as_strings_a_single_id_or_a_mix(tiny_lm):
    tokenizer = tiny_lm.preprocessor.tokenizer
    free = new_ids(tiny_lm, None)
    cut = next(k for k in range(len(free)) if free[k] not in free[:k] and free[k] != 1)
    stop_id = free[cut]
    stop_piece = tokenizer.id_to_token(stop_id)
    expected = free[:cut]
    assert new_ids(tiny_lm, [stop_id]) == expected
    assert new_ids(tiny_lm, [stop_piece]) == expected
    assert new_ids(tiny_lm, stop_piece) == expected
    assert new_ids(tiny_lm, stop_id) == expected
    assert new_ids(tiny_lm, ["<eos>", stop_piece]) == expected
    assert new_ids(tiny_lm, (1, stop_piece)) == expected
    unused = next(i for i in range(3, 400) if i not in free)
    assert new_ids(tiny_lm, tokenizer.id_to_token(unused)) == free  # Never generated: no stop.


@pytest.mark.parametrize(
    "stop_token_ids,message",
    [
        (["<no such piece>"], "holds '<no such piece>', which is not a token of this vocabulary"),
        ([1.5], r"entries must be token ids \(int\) or token strings. Received: 1.5"),
        ([True], "entries must be token ids"),
        (2.0, "must be 'auto', None, a token id, a token string, or a list of them"),
        ([10_000], r"Stop token id 10000 is outside the vocabulary \[0, 400\)"),
    ],
)
def test_bad_stop_tokens(stop_token_ids, message, tiny_lm):
    with pytest.raises(ValueError, match=message):
        tiny_lm.generate(PROMPT, max_new_tokens=2, stop_token_ids=stop_token_ids)


def test_stop_token_strings_need_a_tokenizer(tiny_lm):
    bare = GemmaCausalLM(tiny_lm.backbone)
    prompt = {"token_ids": [[2, 10, 11]], "padding_mask": [[1, 1, 1]]}
    with pytest.raises(ValueError, match="the model has no tokenizer to map it to an id"):
        bare.generate(prompt, max_new_tokens=2, stop_token_ids=["<eos>"])


@pytest.mark.parametrize("prompts", ["a\ud800b", ["fine", "bad \udfff"]])
def test_a_lone_surrogate_in_a_prompt(prompts, tiny_lm):
    with pytest.raises(ValueError, match="cannot be encoded as UTF-8") as raised:
        tiny_lm.generate(prompts, max_new_tokens=2)
    assert "surrogates not allowed" in str(raised.value)
    if isinstance(prompts, list):
        assert str(raised.value).startswith("prompt 1: ")


@pytest.mark.parametrize("data", [[], (), {}], ids=["list", "tuple", "dict"])
def test_fit_on_nothing(data, tiny_lm):
    lm = GemmaCausalLM(
        tiny_lm.backbone, GemmaCausalLMPreprocessor(tiny_lm.preprocessor.tokenizer, 16)
    )
    lm.compile()
    for method in (lm.fit, lm.evaluate):
        with pytest.raises(ValueError, match="`x` is empty .* pass at least one example"):
            method(data)
