"""Cached generation on tiny Gemma 4 models (PLE + KV sharing, experts, keys = values).

The sharing layers keep no cache and read their producer's (`generation/decoding.py`):
cached greedy decoding equals argmax over full forward passes, and HF's `generate`.
"""

import numpy as np
import pytest

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from keras_gemma.testing.transformers_checkpoints import make_transformers_model  # noqa: E402
from keras_gemma.testing.transformers_checkpoints import save_transformers_checkpoint  # noqa: E402

# Prompts longer than the tiny sliding window (4), and a short one: a ragged batch.
PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11, 12], [2, 11, 12], [2, 40, 41, 42, 43, 44]]
COUNT = 10  # new tokens: crosses the 4-slot ring more than once


# "gemma4_dense" has a subset of "gemma4_moe"'s attention features: left out to save time.
@pytest.fixture(scope="module", params=["gemma4", "gemma4_moe"])
def pair(request, tmp_path_factory):
    model = make_transformers_model(tiny_config(request.param), seed=1, embedding_scale=0.05)
    directory = str(tmp_path_factory.mktemp(request.param))
    save_transformers_checkpoint(model, directory)
    return model, GemmaCausalLM.from_preset(directory)


def _batch(prompts):
    length = max(len(p) for p in prompts)
    token_ids = np.zeros((len(prompts), length), "int32")
    padding_mask = np.zeros((len(prompts), length), "int32")
    for row, prompt in enumerate(prompts):
        token_ids[row, : len(prompt)] = prompt
        padding_mask[row, : len(prompt)] = 1
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _new_tokens(output, row):
    return [int(t) for t, m in zip(output["token_ids"][row], output["padding_mask"][row]) if m]


def _greedy_by_full_forward(lm, prompt, count):
    length = len(prompt) + count
    sequence = list(prompt)
    for _ in range(count):
        token_ids = np.zeros((1, length), "int32")
        token_ids[0, : len(sequence)] = sequence
        padding_mask = (np.arange(length) < len(sequence))[None].astype("int32")
        logits = lm.predict_on_batch({"token_ids": token_ids, "padding_mask": padding_mask})
        sequence.append(int(np.asarray(logits)[0, len(sequence) - 1].argmax()))
    return sequence[len(prompt) :]


def test_cached_greedy_equals_full_forward_and_transformers(pair):
    hf_model, lm = pair
    output = lm.generate(
        _batch(PROMPTS), max_new_tokens=COUNT, stop_token_ids=None, strip_prompt=True
    )
    distinct = set()
    for row, prompt in enumerate(PROMPTS):
        expected = _greedy_by_full_forward(lm, prompt, COUNT)
        assert _new_tokens(output, row) == expected
        distinct.update(expected)
        hf_ids = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=COUNT,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert hf_ids == expected
    assert len(distinct) > 3  # not degenerate: a wrong cache would show
