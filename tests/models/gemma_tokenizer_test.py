import json
import os
import shutil

import hypothesis
import keras
import numpy as np
import pytest
import sentencepiece
from hypothesis import strategies

from keras_gemma.models.gemma_tokenizer import GemmaTokenizer

STRINGS = [
    "",
    " ",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand\r\nwindows",
    "digits 1234567890 and 3.14159",
    "def add(first, second):\n    return first + second  # sum\n",
    'json {"key": [1, 2, 3], "nested": {"a": null}}',
    "Café, naïve, résumé, Ångström, Zoë",
    "机器学习 你好，世界！ こんにちは 안녕하세요",
    "emoji 🤖🚀👍🏽 and flags 🇫🇷",
    "mixed: a▁b (U+2581, SentencePiece's own space marker)",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "unknown piece \u0378 and combining e\u0301",
]

# Literal text of control pieces: HF transformers encodes it to the pieces'
# ids; keras-hub (tf-text) spells it out.
CONTROL_LITERALS = [
    "<bos>",
    "text <bos> with <eos> control <pad> pieces <unk>",
    "<bos><bos>x<eos>",
]


@pytest.fixture(scope="session")
def transformers_tokenizer(vocabulary_path, tmp_path_factory):
    import transformers

    directory = tmp_path_factory.mktemp("transformers_tokenizer")
    shutil.copy(vocabulary_path, directory / "tokenizer.model")
    return transformers.GemmaTokenizer.from_pretrained(str(directory))


def sentencepiece_processor(vocabulary_path):
    return sentencepiece.SentencePieceProcessor(model_file=vocabulary_path)


def test_special_token_ids_come_from_the_vocabulary(tokenizer, vocabulary_path):
    processor = sentencepiece_processor(vocabulary_path)
    assert tokenizer.pad_token_id == processor.piece_to_id("<pad>") == 0
    assert tokenizer.eos_token_id == processor.piece_to_id("<eos>") == 1
    assert tokenizer.bos_token_id == processor.piece_to_id("<bos>") == 2
    assert tokenizer.unk_token_id == processor.piece_to_id("<unk>") == 3
    assert tokenizer.start_of_turn_token_id == processor.piece_to_id("<start_of_turn>")
    assert tokenizer.end_of_turn_token_id == processor.piece_to_id("<end_of_turn>")
    assert tokenizer.vocabulary_size == processor.get_piece_size()


def test_ids_match_transformers(tokenizer, transformers_tokenizer):
    for text in STRINGS + CONTROL_LITERALS:
        expected = transformers_tokenizer(text, add_special_tokens=False)
        assert tokenizer(text) == expected["input_ids"], text


def test_control_literal_text_encodes_like_transformers(tokenizer):
    assert tokenizer("<bos>") == [tokenizer.bos_token_id]
    # User-defined pieces are matched by SentencePiece itself.
    assert tokenizer("<start_of_turn>") == [tokenizer.start_of_turn_token_id]
    assert tokenizer("<bos") != [tokenizer.bos_token_id]


def test_ids_match_keras_hub(tokenizer, vocabulary_path):
    import keras_hub  # Needs TensorFlow, installed wherever tests run.

    peer = keras_hub.models.GemmaTokenizer(proto=vocabulary_path)
    for text in STRINGS:
        expected = keras.ops.convert_to_numpy(peer(text)).tolist()
        assert tokenizer(text) == expected, text
    # The one documented difference: keras-hub spells control pieces out.
    assert keras.ops.convert_to_numpy(peer("<bos>")).tolist() != [2]


def test_ids_match_sentencepiece(tokenizer, vocabulary_path):
    processor = sentencepiece_processor(vocabulary_path)
    assert tokenizer(STRINGS) == processor.encode(STRINGS)


def test_batch_inputs(tokenizer):
    expected = [tokenizer(text) for text in STRINGS]
    assert tokenizer(STRINGS) == expected
    assert tokenizer(tuple(STRINGS)) == expected
    assert tokenizer(np.array(STRINGS)) == expected
    assert tokenizer(np.array(STRINGS, dtype=object)) == expected
    assert tokenizer([text.encode() for text in STRINGS]) == expected
    assert tokenizer(np.array("hello")) == tokenizer("hello")
    assert tokenizer([]) == []


def test_invalid_inputs(tokenizer):
    with pytest.raises(ValueError, match="Received int"):
        tokenizer([1, 2])
    with pytest.raises(ValueError, match="shape"):
        tokenizer(np.array([["a"]]))
    with pytest.raises(ValueError, match="proto"):
        GemmaTokenizer(proto=3)


def test_detokenize(tokenizer):
    texts = ["hello world", "café 你好 🤖", ""]
    ids = tokenizer(texts)
    assert tokenizer.detokenize(ids) == texts
    assert tokenizer.detokenize(ids[0]) == texts[0]
    padded = np.zeros((3, 32), "int32")
    for row, sequence in enumerate(ids):
        padded[row, : len(sequence)] = sequence
    assert tokenizer.detokenize(padded) == texts
    decoded = tokenizer.detokenize(keras.ops.convert_to_tensor(padded))
    if keras.config.backend() == "tensorflow":
        # A TensorFlow tensor in gives a TensorFlow tensor out.
        decoded = [text.decode() for text in decoded.numpy()]
    assert decoded == texts
    with_specials = [tokenizer.bos_token_id] + ids[0] + [tokenizer.eos_token_id]
    assert tokenizer.detokenize(with_specials + [0, 0]) == texts[0]


def test_detokenize_matches_transformers(tokenizer, transformers_tokenizer):
    for text in STRINGS:
        ids = tokenizer(text)
        assert tokenizer.detokenize(ids) == transformers_tokenizer.decode(ids)


def test_id_to_token_and_token_to_id(tokenizer, vocabulary_path):
    processor = sentencepiece_processor(vocabulary_path)
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary == [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    for index in (0, 3, tokenizer.end_of_turn_token_id, 300):
        token = tokenizer.id_to_token(index)
        assert tokenizer.token_to_id(token) == index
    with pytest.raises(ValueError, match="not a piece"):
        tokenizer.token_to_id("definitely not a piece")
    with pytest.raises(ValueError, match="must be in"):
        tokenizer.id_to_token(tokenizer.vocabulary_size)


def _round_trippable(text):
    # "▁" (U+2581) is SentencePiece's own space marker, so it decodes as " ";
    # a control piece's literal text encodes to that piece, which decodes to
    # nothing. Every other character round-trips: the vocabulary uses
    # identity normalization (like Gemma's) and byte fallback.
    return "\u2581" not in text and not any(
        piece in text for piece in ("<pad>", "<eos>", "<bos>", "<unk>")
    )


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(strategies.text().filter(_round_trippable))
def test_detokenize_inverts_tokenize(tokenizer, text):
    assert tokenizer.detokenize(tokenizer(text)) == text


def test_tensorflow_dataset_matches_eager(tokenizer):
    import tensorflow as tf

    expected = tokenizer(STRINGS + CONTROL_LITERALS)
    dataset = tf.data.Dataset.from_tensor_slices(STRINGS + CONTROL_LITERALS)
    mapped = [ids.numpy().tolist() for ids in dataset.map(tokenizer)]
    assert mapped == expected
    batched = dataset.batch(5).map(tokenizer)
    assert [row for ragged in batched for row in ragged.to_list()] == expected


def test_tensorflow_function_and_detokenize(tokenizer):
    import tensorflow as tf

    texts = ["hello <bos> world", "café 🤖"]

    @tf.function
    def round_trip(inputs):
        ids = tokenizer(inputs)
        return ids.to_tensor(), tokenizer.detokenize(ids)

    padded, decoded = round_trip(tf.constant(texts))
    assert padded.dtype == tf.int32
    expected = tokenizer(texts)
    rows = padded.numpy().tolist()
    assert [row[: len(ids)] for row, ids in zip(rows, expected)] == expected
    assert [text.decode() for text in decoded.numpy()] == tokenizer.detokenize(expected)
    single = tokenizer.detokenize(tf.constant(expected[1] + [0, 0]))
    assert single.numpy().decode() == texts[1]


def test_chat_template_ids_and_text(tokenizer, vocabulary_path):
    processor = sentencepiece_processor(vocabulary_path)
    bos = tokenizer.bos_token_id
    start = tokenizer.start_of_turn_token_id
    end = tokenizer.end_of_turn_token_id
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi! "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    newline = processor.encode("\n")
    expected = (
        [bos, start]
        + processor.encode("user\nBe brief.\n\nHi!")
        + [end]
        + newline
        + [start]
        + processor.encode("model\nHello.")
        + [end]
        + newline
        + [start]
        + processor.encode("user\nBye")
        + [end]
        + newline
        + [start]
        + processor.encode("model\n")
    )
    assert tokenizer.apply_chat_template(messages) == expected
    no_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    assert no_prompt == expected[: -len([start] + processor.encode("model\n"))]


def test_chat_template_matches_transformers_gemma3_template(tokenizer, transformers_tokenizer):
    # The text part of Hugging Face's Gemma 3 chat template.
    transformers_tokenizer.chat_template = (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set first_user_prefix = '' -%}"
        "{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
        "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
        "{{ '<start_of_turn>' + role + '\n' + "
        "(first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}"
        "{%- endif -%}"
    )
    messages = [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write about the sea.\n"},
        {"role": "model", "content": "Waves, 12 of them."},
        {"role": "user", "content": "More <start_of_turn> please"},
    ]
    for add_generation_prompt in (True, False):
        text = transformers_tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
        assert text == tokenizer.apply_chat_template(
            messages, add_generation_prompt, tokenize=False
        )
        expected = transformers_tokenizer(text, add_special_tokens=False)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt)
        assert ids == expected["input_ids"]


def test_chat_template_errors(tokenizer):
    with pytest.raises(ValueError, match="Allowed roles.*'user'"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="must alternate"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )
    with pytest.raises(ValueError, match="must alternate"):
        tokenizer.apply_chat_template([{"role": "model", "content": "a"}])


def test_config_round_trip(tokenizer):
    config = tokenizer.get_config()
    json.dumps(config)
    restored = GemmaTokenizer.from_config(config)
    assert restored.proto == tokenizer.proto
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "keras_gemma>GemmaTokenizer"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(restored, GemmaTokenizer)
    assert restored(STRINGS) == tokenizer(STRINGS)


def test_preset_round_trip(tokenizer, tmp_path):
    tokenizer.save_to_preset(tmp_path)
    with open(tmp_path / "tokenizer.json") as file:
        assert json.load(file) == {"class_name": "GemmaTokenizer", "config": {}}
    with open(tmp_path / "assets" / "tokenizer" / "vocabulary.spm", "rb") as f:
        assert f.read() == tokenizer.proto
    assert sorted(os.listdir(tmp_path)) == ["assets", "tokenizer.json"]
    restored = GemmaTokenizer.from_preset(str(tmp_path))
    assert restored(STRINGS) == tokenizer(STRINGS)
    assert GemmaTokenizer(proto=tokenizer.proto)(STRINGS) == tokenizer(STRINGS)
