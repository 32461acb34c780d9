"""Gemma's SentencePiece tokenizer, with or without TensorFlow."""

import base64
import os
import re
import sys

import keras
import sentencepiece

from keras_gemma.formats import keras_preset
from keras_gemma.formats import loader
from keras_gemma.models.special_tokens import BOS_TOKEN
from keras_gemma.models.special_tokens import EOS_TOKEN
from keras_gemma.models.special_tokens import PAD_TOKEN
from keras_gemma.models.special_tokens import VocabularySize
from keras_gemma.models.special_tokens import special_token_ids
from keras_gemma.models.tokenizer_inputs import as_text_list
from keras_gemma.models.tokenizer_inputs import message_text

START_OF_TURN_TOKEN = "<start_of_turn>"
END_OF_TURN_TOKEN = "<end_of_turn>"
# Gemma 4's turn markers (GEMMA4_ARCHITECTURE.md, ids 105 / 106), used when the vocabulary has them.
GEMMA4_START_OF_TURN_TOKEN = "<|turn>"
GEMMA4_END_OF_TURN_TOKEN = "<turn|>"
CHAT_ROLES = ("system", "user", "assistant", "model")

# Pieces whose literal text maps to their id, as in HF transformers.
_CONTROL_PIECE_TYPES = ("is_control", "is_unknown")


def is_tensorflow_tensor(value):
    """Whether `value` is a `tf.Tensor` or `tf.RaggedTensor`.

    Never imports TensorFlow: if it was not imported, `value` cannot be one.
    """
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return False
    return isinstance(value, (tensorflow.Tensor, tensorflow.RaggedTensor))


def _re2_escape(text):
    """Escapes `text` as a literal for RE2 (tensorflow-text's regex engine)."""
    return "".join(
        character if character.isalnum() or ord(character) > 127 else f"\\x{{{ord(character):x}}}"
        for character in text
    )


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaTokenizer:
    """Gemma's SentencePiece tokenizer.

    Encodes text with the `sentencepiece` package, so JAX and PyTorch users
    never need TensorFlow. Given a `tf.Tensor` of strings (inside a `tf.data`
    pipeline or a `tf.function`) it uses `tensorflow_text` on the same proto,
    imported only then, and gives the same ids.

    It is a plain serializable object, not a Keras layer: a layer converts its
    inputs to backend tensors, which JAX and PyTorch cannot hold strings in,
    while a plain callable takes Python strings and, traced by `tf.data`,
    `tf.Tensor`s alike.

    The tokenizer adds no start or end token (the preprocessor does). Special
    token ids are read from the vocabulary. Like Hugging Face transformers'
    `GemmaTokenizer` (the reference), the literal text of a control piece in
    the input, such as `"<bos>"`, encodes to that piece's id; user-defined
    pieces such as `"<start_of_turn>"` encode to their id with every Gemma
    tokenizer, SentencePiece itself included. (keras-hub's tokenizer differs
    on control pieces: it spells `"<bos>"` out.)

    Args:
        proto: str, path-like or bytes. The path of a SentencePiece `.model`
            file, or its serialized bytes.

    Call arguments:
        inputs: a string, a list or 1-D NumPy array of strings, or a string
            `tf.Tensor` of rank 0 or 1.

    Returns:
        For a string, a list of int ids; for a batch, a list of such lists
        (ragged, no padding). For a `tf.Tensor`, an int32 `tf.Tensor`
        (rank 0 input) or `tf.RaggedTensor` `[batch, (tokens)]`.

    Example:

    ```python
    tokenizer = GemmaTokenizer(proto="tokenizer.model")
    ids = tokenizer("The quick brown fox")
    tokenizer.detokenize(ids)  # "The quick brown fox"
    dataset = tf.data.Dataset.from_tensor_slices(["a", "b"]).map(tokenizer)
    ```
    """

    def __init__(self, proto):
        if isinstance(proto, (bytes, bytearray)):
            proto = bytes(proto)
        elif isinstance(proto, (str, os.PathLike)):
            with open(proto, "rb") as file:
                proto = file.read()
        else:
            raise ValueError(
                "`proto` must be the path of a SentencePiece model file or "
                f"its bytes. Received: proto={proto!r} of type "
                f"{type(proto).__name__}"
            )
        self.proto = proto
        self._sentencepiece = _sentencepiece_processor(proto)
        self._special_ids = special_token_ids(self._sentencepiece)
        self._tensorflow_sentencepiece = None
        # Control and unknown pieces, longest first: matched in raw text.
        self._special_pieces = sorted(
            (
                self.id_to_token(index)
                for index in range(self.vocabulary_size)
                if any(getattr(self._sentencepiece, check)(index) for check in _CONTROL_PIECE_TYPES)
            ),
            key=len,
            reverse=True,
        )
        self._special_piece_ids = [
            self._sentencepiece.piece_to_id(piece) for piece in self._special_pieces
        ]
        self._special_piece_to_id = dict(zip(self._special_pieces, self._special_piece_ids))
        self._special_pattern = None
        if self._special_pieces:
            self._special_pattern = re.compile(
                "(" + "|".join(map(re.escape, self._special_pieces)) + ")"
            )

    # === Vocabulary ===

    @property
    def vocabulary_size(self):
        """The number of pieces in the vocabulary.

        An int that can also be called, `tokenizer.vocabulary_size()`, as
        keras-hub's tokenizers spell it.
        """
        return VocabularySize(self._sentencepiece.get_piece_size())

    def get_vocabulary(self):
        """Returns the list of pieces, indexed by id."""
        return [self.id_to_token(i) for i in range(self.vocabulary_size)]

    def id_to_token(self, id):
        """Returns the piece (str) of token id `id`."""
        if not 0 <= int(id) < self.vocabulary_size:
            raise ValueError(f"`id` must be in [0, {self.vocabulary_size - 1}]. Received: id={id}")
        return self._sentencepiece.id_to_piece(int(id))

    def token_to_id(self, token):
        """Returns the id of piece `token`; ValueError if not a piece."""
        index = self._sentencepiece.piece_to_id(token)
        if index == self._sentencepiece.unk_id() and token != self.id_to_token(index):
            raise ValueError(
                f"{token!r} is not a piece of this vocabulary. To encode "
                "text, call the tokenizer instead."
            )
        return index

    def _optional_id(self, index):
        return None if index < 0 else index

    # Ids of `<pad>`, `<bos>` and `<eos>`: the trainer spec's, else the
    # pieces' (checked in `__init__`). keras-hub's names are aliases.

    @property
    def pad_token_id(self):
        return self._special_ids[PAD_TOKEN]

    @property
    def bos_token_id(self):
        return self._special_ids[BOS_TOKEN]

    @property
    def eos_token_id(self):
        return self._special_ids[EOS_TOKEN]

    @property
    def start_token_id(self):
        """keras-hub's name for `bos_token_id`."""
        return self.bos_token_id

    @property
    def end_token_id(self):
        """keras-hub's name for `eos_token_id`."""
        return self.eos_token_id

    @property
    def pad_token(self):
        return self.id_to_token(self.pad_token_id)

    @property
    def start_token(self):
        """The start piece, `<bos>` (keras-hub's name)."""
        return self.id_to_token(self.bos_token_id)

    @property
    def end_token(self):
        """The end piece, `<eos>` (keras-hub's name)."""
        return self.id_to_token(self.eos_token_id)

    @property
    def unk_token_id(self):
        return self._optional_id(self._sentencepiece.unk_id())

    @property
    def start_of_turn_token_id(self):
        """Id of `<start_of_turn>` (Gemma 4: `<|turn>`), or None if the vocabulary lacks it."""
        return self._piece_id_or_none(self.turn_tokens[0])

    @property
    def end_of_turn_token_id(self):
        """Id of `<end_of_turn>` (Gemma 4: `<turn|>`), or None if the vocabulary lacks it.

        With `<eos>`, the default stop tokens of generation.
        """
        return self._piece_id_or_none(self.turn_tokens[1])

    @property
    def turn_tokens(self):
        """`(start, end)` turn markers: Gemma 4's `<|turn>`, `<turn|>` when the vocabulary
        has both, else Gemma 1-3's `<start_of_turn>`, `<end_of_turn>`."""
        gemma4 = (GEMMA4_START_OF_TURN_TOKEN, GEMMA4_END_OF_TURN_TOKEN)
        if all(self._piece_id_or_none(piece) is not None for piece in gemma4):
            return gemma4
        return (START_OF_TURN_TOKEN, END_OF_TURN_TOKEN)

    def _piece_id_or_none(self, piece):
        try:
            return self.token_to_id(piece)
        except ValueError:
            return None

    # === Tokenize ===

    def __call__(self, inputs):
        return self.tokenize(inputs)

    def tokenize(self, inputs):
        """Encodes text into token ids. See the class docstring."""
        if is_tensorflow_tensor(inputs):
            return self._tensorflow_tokenize(inputs)
        texts, is_batch = as_text_list(inputs)
        ids = [self._encode_text(text) for text in texts]
        return ids if is_batch else ids[0]

    def _encode_text(self, text):
        if self._special_pattern is None or not self._special_pattern.search(text):
            return self._sentencepiece.encode(text)
        ids = []
        # Odd parts are the special pieces themselves (capturing split).
        for index, part in enumerate(self._special_pattern.split(text)):
            if index % 2:
                ids.append(self._special_piece_to_id[part])
            elif part:
                ids.extend(self._sentencepiece.encode(part))
        return ids

    # === Detokenize ===

    def detokenize(self, ids):
        """Decodes token ids into text, skipping padding.

        Control pieces (`<bos>`, `<eos>`, `<pad>`) decode to nothing;
        user-defined ones such as `<end_of_turn>` decode to their text.

        Args:
            ids: a sequence of ids (list, NumPy array or backend tensor of rank
                1) or a batch of them (rank 2, or a list of lists). A
                `tf.Tensor` or `tf.RaggedTensor` is decoded with
                tensorflow-text.

        Returns:
            A string for one sequence, a list of strings for a batch; a string
            `tf.Tensor` for TensorFlow input.
        """
        if is_tensorflow_tensor(ids):
            return self._tensorflow_detokenize(ids)
        if not isinstance(ids, (list, tuple)):
            ids = keras.ops.convert_to_numpy(ids).tolist()
        if isinstance(ids, int):
            ids = [ids]
        is_batch = len(ids) > 0 and isinstance(ids[0], (list, tuple))
        batch = ids if is_batch else [ids]
        texts = [
            self._sentencepiece.decode([int(i) for i in sequence if int(i) != self.pad_token_id])
            for sequence in batch
        ]
        return texts if is_batch else texts[0]

    # === Chat ===

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        """Renders a conversation in Gemma's turn format.

        `<bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model
        \\n{text}<end_of_turn>\\n...`, as Hugging Face's Gemma 3 chat template
        renders it: roles "user" and "assistant" (or "model") alternate,
        starting with "user"; message text is stripped of surrounding
        whitespace; a first "system" message is prepended, followed by a blank
        line, to the first user turn.

        A Gemma 4 vocabulary (`turn_tokens`) renders Gemma 4's format instead:
        `<bos><|turn>system\n{text}<turn|>\n<|turn>user\n{text}<turn|>\n
        <|turn>model\n...`, the system message as its own turn.

        Args:
            messages: list of dicts with "role" and "content" keys. Content is
                a string or a list of `{"type": "text", "text": ...}` parts.
            add_generation_prompt: bool. Whether to end with an open
                `<start_of_turn>model\\n` turn for the model to continue.
            tokenize: bool. If True, return token ids (the turn markers as
                their single ids); if False, return the rendered text.

        Returns:
            A list of int token ids, or a string if `tokenize=False`.
        """
        start, end = self.turn_tokens
        first_user_prefix = ""
        text = self.id_to_token(self.bos_token_id)
        if messages and messages[0].get("role") == "system":
            if start == GEMMA4_START_OF_TURN_TOKEN:
                text += f"{start}system\n{message_text(messages[0], strip=True)}{end}\n"
            else:
                first_user_prefix = message_text(messages[0], strip=False) + "\n\n"
            messages = messages[1:]
        for index, message in enumerate(messages):
            role = message.get("role")
            if role not in CHAT_ROLES:
                raise ValueError(
                    f"Unknown chat role {role!r} in message {index}. Allowed roles: {CHAT_ROLES}."
                )
            if (role == "user") != (index % 2 == 0) or role == "system":
                raise ValueError(
                    "Conversation roles must alternate user/assistant/user/"
                    "assistant/..., with at most one leading 'system' message. "
                    f"Received role {role!r} at position {index}."
                )
            role = "model" if role == "assistant" else role
            prefix = first_user_prefix if index == 0 else ""
            text += f"{start}{role}\n{prefix}{message_text(message, strip=True)}{end}\n"
        if add_generation_prompt:
            text += f"{start}model\n"
        return self.tokenize(text) if tokenize else text

    # === TensorFlow path ===

    def _tensorflow_tokenizer(self):
        if self._tensorflow_sentencepiece is None:
            import tensorflow
            import tensorflow_text

            # Created eagerly even when first called while tracing a graph
            # (`tf.data` map, `tf.function`), so that every trace shares it.
            with tensorflow.init_scope():
                self._tensorflow_sentencepiece = tensorflow_text.SentencepieceTokenizer(
                    model=self.proto, out_type=tensorflow.int32
                )
        return self._tensorflow_sentencepiece

    def _tensorflow_tokenize(self, inputs):
        import tensorflow
        import tensorflow_text

        sentencepiece_tokenizer = self._tensorflow_tokenizer()
        if inputs.dtype != tensorflow.string or inputs.shape.rank not in (
            0,
            1,
        ):
            raise ValueError(
                "A tensor input must be a string tensor of rank 0 or 1. "
                f"Received: dtype={inputs.dtype}, shape={inputs.shape}"
            )
        is_batch = inputs.shape.rank == 1
        texts = inputs if is_batch else inputs[tensorflow.newaxis]
        if not self._special_pieces:
            ids = sentencepiece_tokenizer.tokenize(texts)
        else:
            # Same as `_encode_text`: special pieces split the text and are
            # mapped to their id; the parts between are SentencePiece-encoded.
            pattern = "|".join(map(_re2_escape, self._special_pieces))
            segments = tensorflow_text.regex_split(
                texts, pattern, keep_delim_regex_pattern=pattern
            )  # (b, (s))
            flat_segments = segments.flat_values  # (n,)
            matches = tensorflow.equal(
                flat_segments[:, tensorflow.newaxis],
                tensorflow.constant(self._special_pieces)[tensorflow.newaxis],
            )  # (n, k)
            is_special = tensorflow.reduce_any(matches, axis=1)  # (n,)
            special_ids = tensorflow.gather(
                tensorflow.constant(self._special_piece_ids, "int32"),
                tensorflow.argmax(tensorflow.cast(matches, "int32"), axis=1),
            )  # (n,)
            text_ids = sentencepiece_tokenizer.tokenize(
                tensorflow.where(is_special, "", flat_segments)
            )  # (n, (t))
            special_rows = tensorflow.RaggedTensor.from_row_lengths(
                tensorflow.boolean_mask(special_ids, is_special),
                tensorflow.cast(is_special, text_ids.row_splits.dtype),
            )  # (n, (0 or 1))
            segment_ids = tensorflow.concat([text_ids, special_rows], axis=1)
            ids = segments.with_flat_values(segment_ids).merge_dims(1, 2)
        return ids if is_batch else ids[0]

    def _tensorflow_detokenize(self, ids):
        import tensorflow

        if isinstance(ids, tensorflow.Tensor):
            if ids.shape.rank == 1:
                return self._tensorflow_detokenize(ids[tensorflow.newaxis])[0]
            ids = tensorflow.RaggedTensor.from_tensor(ids)
        ids = tensorflow.cast(ids, "int32")
        if self.pad_token_id is not None:
            ids = tensorflow.ragged.boolean_mask(ids, tensorflow.not_equal(ids, self.pad_token_id))
        return self._tensorflow_tokenizer().detokenize(ids)

    # === Serialization ===

    def get_config(self):
        """Returns the constructor arguments, the proto as base64 text.

        The config is self-contained (for `keras.saving.serialize_keras_object`
        and model configs); `save_to_preset` instead stores the proto as the
        asset file `assets/tokenizer/vocabulary.spm` and leaves it out of
        `tokenizer.json`.
        """
        return {"proto": base64.b64encode(self.proto).decode("ascii")}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("proto"), str):
            config["proto"] = base64.b64decode(config["proto"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle):
        """Loads the tokenizer of a preset.

        Args:
            handle: any `from_preset` handle (a registered name, a Keras or
                keras-hub preset directory, a transformers checkpoint
                directory, a `.gguf` file, `kaggle://` / `hf://`), or a
                SentencePiece `.model`/`.spm` file.
        """
        return cls(proto=loader.tokenizer_proto(handle))

    def save_to_preset(self, directory):
        """Writes `tokenizer.json` and `assets/tokenizer/vocabulary.spm` (each atomically)."""
        config = self.get_config()
        del config["proto"]
        keras_preset.write_tokenizer(directory, type(self).__name__, config, self.proto)


def _sentencepiece_processor(proto):
    """A SentencePiece processor of `proto`; `ValueError` for an empty or unparsable model."""
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as error:
        processor, problem = None, f"it does not parse ({error})"
    else:
        problem = None if processor.get_piece_size() else "it is empty or holds no pieces"
    if problem is not None:
        raise ValueError(
            f"`proto` is not a SentencePiece tokenizer model: {problem}. Pass the bytes or path "
            "of a `tokenizer.model` / `vocabulary.spm` file."
        )
    return processor
