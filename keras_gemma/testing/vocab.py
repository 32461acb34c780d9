"""A tiny SentencePiece vocabulary shaped like Gemma's, trained on the spot.

Tests and users' own tests need a tokenizer without downloading Gemma's 256k
vocabulary. `build_tiny_vocabulary` trains a few-hundred-piece BPE model with
the same special ids, piece types and normalization as the real one:

- `<pad>` 0, `<eos>` 1, `<bos>` 2 (CONTROL pieces) and `<unk>` 3 (UNKNOWN);
- `<start_of_turn>` and `<end_of_turn>` as USER_DEFINED pieces, as in Gemma's
  `tokenizer.model` (that is why Gemma's reference code can write the chat
  format as plain text); their ids depend on the vocabulary, read them from it;
- identity normalization, no dummy prefix, whitespace kept as is, digits split
  one by one and byte fallback, so any Unicode text is encodable.
"""

import io
import os

DEFAULT_VOCABULARY_SIZE = 400
"""The vocabulary size `build_tiny_vocabulary` uses by default."""

START_OF_TURN_TOKEN = "<start_of_turn>"
END_OF_TURN_TOKEN = "<end_of_turn>"

_CORPUS_FILENAME = "tiny_gemma_corpus.txt"
_MODEL_FILENAME = "tiny_gemma_vocabulary.model"

_CORPUS_LINES = (
    "The quick brown fox jumps over the lazy dog.",
    "the capital of France is Paris, and the capital of Italy is Rome.",
    "A tokenizer turns text into a sequence of integer token ids.",
    "Gemma is a family of lightweight, open models built from research.",
    "def add(first, second):\n    return first + second",
    "for index in range(10):\n    print(index * 2)",
    "Keras runs the same model on JAX, PyTorch and TensorFlow.",
    "What is the meaning of life? Forty two, according to the book.",
    "Once upon a time there was a little model that wanted to talk.",
    "Numbers like 1234567890 are split into single digits.",
    "Café, naïve, résumé and façade carry accents.",
    "机器学习 is machine learning; 你好 means hello.",
    "Write a short poem about the sea and the stars at night.",
    "<start_of_turn>user\nHello there!<end_of_turn>\n"
    "<start_of_turn>model\nHi! How can I help you today?<end_of_turn>",
)


GEMMA4_TURN_TOKENS = ("<|turn>", "<turn|>")


def build_tiny_vocabulary(
    directory,
    vocabulary_size=DEFAULT_VOCABULARY_SIZE,
    turn_tokens=(START_OF_TURN_TOKEN, END_OF_TURN_TOKEN),
):
    """Trains a tiny Gemma-like SentencePiece model and returns its path.

    Writes a small fixed corpus and the trained `.model` file into
    `directory` and nothing anywhere else. Training is single-threaded
    on a fixed corpus with fixed options, so the same call gives the same
    file.

    Args:
        directory: str or path-like. An existing directory to write into.
        vocabulary_size: int. Number of pieces, at least 334: 262 fixed
            pieces (6 special, 256 byte-fallback) plus one per distinct
            character of the corpus. 350 to 1000 is a good range for tests.
        turn_tokens: `(start, end)` turn markers, USER_DEFINED pieces:
            Gemma 1-3's by default, `GEMMA4_TURN_TOKENS` for Gemma 4's.

    Returns:
        The path (str) of the trained `.model` file.

    Example:

    ```python
    path = build_tiny_vocabulary(tmp_dir)
    tokenizer = keras_gemma.GemmaTokenizer(proto=path)
    ```
    """
    # Imported here so that importing `keras_gemma.testing` stays cheap.
    import sentencepiece

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(
            f"`directory` must be an existing directory. Received: directory={directory!r}"
        )
    # Lines are written with "\n" escaped: the trainer reads one line per
    # sentence.
    start, end = turn_tokens
    lines = [
        line.replace(START_OF_TURN_TOKEN, start)
        .replace(END_OF_TURN_TOKEN, end)
        .replace("\n", "\\n")
        for line in _CORPUS_LINES
    ]
    corpus_path = os.path.join(directory, _CORPUS_FILENAME)
    with open(corpus_path, "w", encoding="utf-8") as corpus_file:
        corpus_file.write("\n".join(lines) + "\n")
    with open(corpus_path, encoding="utf-8") as corpus_file:
        sentences = corpus_file.read().splitlines()
    model = io.BytesIO()
    # Trained from an iterator into memory, so that no path (which differs
    # between directories) ends up in the model's trainer spec. Repeated so
    # that BPE merges have counts to work with.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 20),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocabulary_size,
        character_coverage=1.0,
        byte_fallback=True,
        # Gemma's normalizer spec: identity, no dummy prefix, whitespace
        # untouched. Digits are split one by one like Gemma's.
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=list(turn_tokens),
        num_threads=1,
        minloglevel=2,
    )
    model_path = os.path.join(directory, _MODEL_FILENAME)
    with open(model_path, "wb") as model_file:
        model_file.write(model.getvalue())
    return model_path
