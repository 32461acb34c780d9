"""Gemma 4's chat format and stop tokens, chosen from the vocabulary."""

import pytest

from keras_gemma.generation.stopping import resolve_stop_token_ids
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.vocab import GEMMA4_TURN_TOKENS
from keras_gemma.testing.vocab import build_tiny_vocabulary


@pytest.fixture(scope="module")
def gemma4_tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma4_vocabulary")
    return GemmaTokenizer(proto=build_tiny_vocabulary(directory, turn_tokens=GEMMA4_TURN_TOKENS))


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hello there! "},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "What is Keras?"},
]


def test_turn_markers_come_from_the_vocabulary(gemma4_tokenizer, tokenizer):
    assert gemma4_tokenizer.turn_tokens == ("<|turn>", "<turn|>")
    assert tokenizer.turn_tokens == ("<start_of_turn>", "<end_of_turn>")
    assert gemma4_tokenizer.start_of_turn_token_id == gemma4_tokenizer.token_to_id("<|turn>")
    assert gemma4_tokenizer.end_of_turn_token_id == gemma4_tokenizer.token_to_id("<turn|>")


def test_chat_template_renders_gemma4_turns(gemma4_tokenizer):
    text = gemma4_tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<bos><|turn>system\nBe brief.<turn|>\n"
        "<|turn>user\nHello there!<turn|>\n"
        "<|turn>model\nHi!<turn|>\n"
        "<|turn>user\nWhat is Keras?<turn|>\n"
        "<|turn>model\n"
    )
    ids = gemma4_tokenizer.apply_chat_template(MESSAGES)
    assert ids[0] == gemma4_tokenizer.bos_token_id
    assert ids.count(gemma4_tokenizer.start_of_turn_token_id) == 5
    assert ids.count(gemma4_tokenizer.end_of_turn_token_id) == 4
    assert gemma4_tokenizer.detokenize(ids[1:]) == text[len("<bos>") :]


def test_stop_tokens_are_eos_and_end_of_turn(gemma4_tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(gemma4_tokenizer, sequence_length=16)
    config = tiny_config("gemma4", vocabulary_size=gemma4_tokenizer.vocabulary_size)
    lm = GemmaCausalLM(GemmaBackbone(**config), preprocessor)
    assert resolve_stop_token_ids(lm, "auto") == (1, gemma4_tokenizer.token_to_id("<turn|>"))
    # Without a tokenizer: `<eos>` 1 and `<turn|>` 106 (GEMMA4_ARCHITECTURE.md).
    assert resolve_stop_token_ids(GemmaCausalLM(lm.backbone), "auto") == (1, 106)
