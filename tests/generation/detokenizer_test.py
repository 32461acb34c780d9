"""Streaming text pieces: multi-byte characters are never split."""

from keras_gemma.generation.detokenizer import IncrementalDetokenizer


def test_stream_pieces_hold_back_a_split_multibyte_character(tokenizer):
    first, second = tokenizer.token_to_id("<0xC3>"), tokenizer.token_to_id("<0xA9>")  # "é" in UTF-8
    text = IncrementalDetokenizer(tokenizer, prefix=tokenizer.tokenize("The cat"))
    assert text.emitted == "The cat"
    assert text.add(first) == ""  # Half a character: held back.
    assert text.add(second) == "é"
    assert text.flush() == ""
    text.add(first)  # A character that never completes is flushed at the end.
    assert text.flush() == tokenizer.detokenize(text.tokens)[len("The caté") :]
    assert text.flush() == ""
