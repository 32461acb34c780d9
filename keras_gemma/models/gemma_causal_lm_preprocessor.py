"""Strings to Gemma causal LM inputs, labels and sample weights."""

import keras
import numpy as np

from keras_gemma.formats import keras_preset
from keras_gemma.formats import loader
from keras_gemma.formats.preset import PREPROCESSOR_CONFIG_FILE
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.models.gemma_tokenizer import is_tensorflow_tensor

TRUNCATE_MODES = ("error", "right", "left")


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaCausalLMPreprocessor:
    """Turns strings into Gemma causal LM inputs, labels and sample weights.

    Each text is tokenized, given a start token (`<bos>`) and an end token
    (`<eos>`), right-padded with the pad id to `sequence_length + 1` tokens,
    then shifted: the model reads tokens `[:-1]` and learns to predict
    `[1:]`. Sample weights are 1 where the label is a real token and 0 on
    padding, so the position that reads the last token (nothing to predict
    after it) has weight 0.

    A text longer than the limit is never cut silently: with the default
    `truncate="error"` it raises a `ValueError` naming the sample, its length
    and the limit. `truncate="right"` keeps the start of the text and
    `truncate="left"` its end; the start and end tokens are kept either way.

    Python strings, lists and NumPy arrays give NumPy outputs and never import
    TensorFlow. A string `tf.Tensor` (inside `tf.data.Dataset.map` or a
    `tf.function`) gives `tf.Tensor` outputs with the same values; there a
    too-long text raises `tf.errors.InvalidArgumentError` when the graph runs.
    A single string (rank 0) gives outputs without a batch axis, so the
    preprocessor can be mapped over an unbatched dataset.

    Args:
        tokenizer: a `GemmaTokenizer`.
        sequence_length: int. Length of the model inputs, labels and weights.
        add_start_token: bool. Whether to prepend `<bos>`.
        add_end_token: bool. Whether to append `<eos>`.
        truncate: str. What to do with a text longer than the limit: "error"
            (default), "right" (cut its end) or "left" (cut its start).

    Call arguments:
        x: a string, a list or 1-D NumPy array of strings, or a string
            `tf.Tensor` of rank 0 or 1. Or a dict `{"prompts": ...,
            "responses": ...}` of such (keras-hub's supervised fine-tuning
            format): each pair is packed `<bos> prompt response <eos>` and the
            sample weights are 1 only on the response and end tokens, so the
            loss is on the responses alone.
        y: must be None; the labels are derived from `x`.
        sample_weight: must be None; the weights are derived from `x`.

    Returns:
        `(x, labels, sample_weight)`: `x` is a dict with "token_ids" (int32)
        and "padding_mask" (bool), `labels` int32 and `sample_weight` float32,
        each `[batch, sequence_length]`.

    Example:

    ```python
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    x, labels, sample_weight = preprocessor(["The quick brown fox"])
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(
        preprocessor
    )
    ```
    """

    def __init__(
        self,
        tokenizer,
        sequence_length=512,
        add_start_token=True,
        add_end_token=True,
        truncate="error",
    ):
        if truncate not in TRUNCATE_MODES:
            raise ValueError(
                f"`truncate` must be one of {TRUNCATE_MODES}. Received: truncate={truncate!r}"
            )
        if int(sequence_length) < 1:
            raise ValueError(
                "`sequence_length` must be a positive integer. Received: "
                f"sequence_length={sequence_length!r}"
            )
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token
        self.truncate = truncate

    def __call__(self, x, y=None, sample_weight=None):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "GemmaCausalLMPreprocessor derives labels and sample weights "
                "from the text itself; pass only `x`. Received: "
                f"y={y!r}, sample_weight={sample_weight!r}"
            )
        if isinstance(x, dict):
            return self._call_on_pairs(x)
        token_ids, padding_mask = self._pack(
            x,
            length=self.sequence_length + 1,
            add_end_token=self.add_end_token,
        )
        inputs = {
            "token_ids": token_ids[..., :-1],
            "padding_mask": padding_mask[..., :-1],
        }
        labels = token_ids[..., 1:]
        if is_tensorflow_tensor(padding_mask):
            import tensorflow

            sample_weight = tensorflow.cast(padding_mask[..., 1:], "float32")
        else:
            sample_weight = padding_mask[..., 1:].astype("float32")
        return inputs, labels, sample_weight

    def _call_on_pairs(self, x):
        """`{"prompts", "responses"}` -> inputs, labels, and weights on the responses only."""
        if sorted(x) != ["prompts", "responses"]:
            raise ValueError(
                'A dict input must have exactly the keys "prompts" and "responses" '
                f"(keras-hub's supervised fine-tuning format). Received keys: {sorted(x)}"
            )
        if is_tensorflow_tensor(x["prompts"]):
            return self._tensorflow_call_on_pairs(x["prompts"], x["responses"])
        token_ids, padding_mask, response_mask = self._pack_pairs(x["prompts"], x["responses"])
        inputs = {"token_ids": token_ids[..., :-1], "padding_mask": padding_mask[..., :-1]}
        sample_weight = (response_mask[..., 1:] & padding_mask[..., 1:]).astype("float32")
        return inputs, token_ids[..., 1:], sample_weight

    def _pack_pairs(self, prompts, responses):
        """Packs `<bos> prompt response <eos>`; the third output marks response and end tokens."""
        prompt_ids, response_ids = self.tokenizer(prompts), self.tokenizer(responses)
        is_batch = not prompt_ids or isinstance(prompt_ids[0], list)
        if not is_batch:
            prompt_ids, response_ids = [prompt_ids], [response_ids]
        if len(prompt_ids) != len(response_ids):
            raise ValueError(
                f"Got {len(prompt_ids)} prompts and {len(response_ids)} responses: pass one "
                "response per prompt."
            )
        length = self.sequence_length + 1
        start, end = self._special_ids(self.add_end_token)
        content_limit = length - len(start) - len(end)
        token_ids = np.full((len(prompt_ids), length), self.tokenizer.pad_token_id, "int32")
        padding_mask = np.zeros((len(prompt_ids), length), bool)
        response_mask = np.zeros((len(prompt_ids), length), bool)
        for index, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
            # (token id, is a response token) pairs, truncated together.
            content = [(i, False) for i in prompt] + [(i, True) for i in response]
            if len(content) > content_limit:
                content = self._truncate(content, content_limit, index, length)
            row = [(i, False) for i in start] + content + [(i, True) for i in end]
            token_ids[index, : len(row)] = [i for i, _ in row]
            padding_mask[index, : len(row)] = True
            response_mask[index, : len(row)] = [is_response for _, is_response in row]
        if not is_batch:
            return token_ids[0], padding_mask[0], response_mask[0]
        return token_ids, padding_mask, response_mask

    def _tensorflow_call_on_pairs(self, prompts, responses):
        """The pair format inside `tf.data`: the NumPy packing, run by `tf.numpy_function`."""
        import tensorflow

        def pack(prompts, responses):
            decode = np.vectorize(lambda text: text.decode("utf-8"), otypes=[object])
            prompts, responses = decode(prompts).tolist(), decode(responses).tolist()
            return self._pack_pairs(prompts, responses)

        token_ids, padding_mask, response_mask = tensorflow.numpy_function(
            pack, [prompts, responses], ["int32", "bool", "bool"], stateful=False
        )
        shape = prompts.shape.concatenate([self.sequence_length + 1])
        for tensor in (token_ids, padding_mask, response_mask):
            tensor.set_shape(shape)
        inputs = {"token_ids": token_ids[..., :-1], "padding_mask": padding_mask[..., :-1]}
        weights = tensorflow.logical_and(response_mask[..., 1:], padding_mask[..., 1:])
        return inputs, token_ids[..., 1:], tensorflow.cast(weights, "float32")

    def generate_preprocess(self, x, sequence_length=None):
        """Packs prompts for generation: start token, no end token.

        Args:
            x: prompts, as in `__call__`.
            sequence_length: int or None. Padded length; defaults to the
                preprocessor's `sequence_length`. Longer prompts follow
                `truncate`.

        Returns:
            A dict with "token_ids" (int32) and "padding_mask" (bool), each
            `[batch, sequence_length]`, right-padded.
        """
        token_ids, padding_mask = self._pack(
            x,
            length=sequence_length or self.sequence_length,
            add_end_token=False,
        )
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x):
        """Decodes generated token ids into strings.

        Drops padding (where "padding_mask" is False, and pad ids) and the
        start and end tokens, then detokenizes. The prompt is NOT removed here:
        the causal LM's `generate(strip_prompt=...)` does that.

        Args:
            x: a dict with "token_ids" and "padding_mask", `[batch, length]`
                or `[length]` (NumPy arrays or tensors of any backend).

        Returns:
            A list of strings, or a string for unbatched input.
        """
        token_ids = _to_numpy(x["token_ids"])
        padding_mask = _to_numpy(x["padding_mask"]).astype(bool)
        is_batch = token_ids.ndim == 2
        token_ids = token_ids.reshape(-1, token_ids.shape[-1])
        padding_mask = padding_mask.reshape(token_ids.shape)
        dropped_ids = [
            index
            for index in (
                self.tokenizer.pad_token_id,
                self.tokenizer.bos_token_id,
                self.tokenizer.eos_token_id,
            )
            if index is not None
        ]
        keep = padding_mask & ~np.isin(token_ids, dropped_ids)
        texts = self.tokenizer.detokenize(
            [row[mask].tolist() for row, mask in zip(token_ids, keep)]
        )
        return texts if is_batch else texts[0]

    # === Packing ===

    def _special_ids(self, add_end_token):
        start = [self.tokenizer.bos_token_id] if self.add_start_token else []
        end = [self.tokenizer.eos_token_id] if add_end_token else []
        return start, end

    def _pack(self, x, length, add_end_token):
        """Tokenizes, adds start/end ids and right-pads to `length`."""
        if is_tensorflow_tensor(x):
            return self._tensorflow_pack(x, length, add_end_token)
        ids = self.tokenizer(x)
        is_batch = not ids or isinstance(ids[0], list)
        batch = ids if is_batch else [ids]
        start, end = self._special_ids(add_end_token)
        content_limit = length - len(start) - len(end)
        token_ids = np.full((len(batch), length), self.tokenizer.pad_token_id, "int32")
        padding_mask = np.zeros((len(batch), length), bool)
        for index, content in enumerate(batch):
            if len(content) > content_limit:
                content = self._truncate(content, content_limit, index, length)
            row = start + content + end
            token_ids[index, : len(row)] = row
            padding_mask[index, : len(row)] = True
        if not is_batch:
            return token_ids[0], padding_mask[0]
        return token_ids, padding_mask

    def _truncate(self, content, content_limit, index, length):
        if self.truncate == "right":
            return content[:content_limit]
        if self.truncate == "left":
            return content[len(content) - content_limit :]
        raise ValueError(
            f"Sample {index} is {len(content) + length - content_limit} "
            f"tokens long (start and end tokens included) but the limit is "
            f"{length} (`sequence_length={self.sequence_length}`, plus one for "
            "the shifted labels when training). Increase `sequence_length`, "
            "shorten the text, or pass `truncate='right'` (or 'left') to cut "
            "it."
        )

    def _tensorflow_pack(self, x, length, add_end_token):
        import tensorflow

        ids = self.tokenizer(x)
        is_batch = isinstance(ids, tensorflow.RaggedTensor)
        if not is_batch:
            ids = tensorflow.RaggedTensor.from_tensor(ids[tensorflow.newaxis])
        start, end = self._special_ids(add_end_token)
        content_limit = length - len(start) - len(end)
        lengths = ids.row_lengths()
        checks = []
        if self.truncate == "error":
            too_long = tensorflow.where(lengths > content_limit)[:, 0]
            checks.append(
                tensorflow.debugging.Assert(
                    tensorflow.equal(tensorflow.size(too_long), 0),
                    [
                        f"A text is longer than {length} tokens (start and "
                        "end tokens included; `sequence_length="
                        f"{self.sequence_length}`, plus one for the shifted "
                        "labels when training). Increase `sequence_length`, "
                        "shorten the text, or pass `truncate='right'` (or "
                        "'left') to cut it. Indices of the samples too long:",
                        too_long,
                        "their lengths without start and end tokens:",
                        tensorflow.gather(lengths, too_long),
                    ],
                )
            )
        elif self.truncate == "right":
            ids = ids[:, :content_limit]
        else:
            start_index = tensorflow.maximum(lengths - content_limit, 0)
            ids = tensorflow.ragged.boolean_mask(
                ids,
                tensorflow.ragged.range(lengths) >= start_index[:, tensorflow.newaxis],
            )
        batch_size = ids.nrows()
        parts = [tensorflow.fill([batch_size, 1], index) for index in start]
        parts.append(ids)
        parts += [tensorflow.fill([batch_size, 1], index) for index in end]
        ids = tensorflow.concat(parts, axis=1)
        token_ids = ids.to_tensor(
            default_value=self.tokenizer.pad_token_id,
            shape=[None, length],
        )  # (b, length)
        padding_mask = tensorflow.sequence_mask(ids.row_lengths(), maxlen=length)  # (b, length)
        with tensorflow.control_dependencies(checks):
            token_ids = tensorflow.identity(token_ids)
        if not is_batch:
            return token_ids[0], padding_mask[0]
        return token_ids, padding_mask

    # === Serialization ===

    def get_config(self):
        return {
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
            "truncate": self.truncate,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["tokenizer"], dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle, **kwargs):
        """Loads the preprocessor of a preset.

        Settings come from the preset's `preprocessor.json` when there is one
        (ours or keras-hub's; unknown keys are ignored), then from `kwargs`.

        Args:
            handle: any `from_preset` handle (a registered name, a Keras or
                keras-hub preset directory, a transformers checkpoint
                directory, a `.gguf` file, `kaggle://` / `hf://`), or a
                SentencePiece `.model`/`.spm` file.
            **kwargs: constructor arguments to override, e.g.
                `sequence_length=1024`.
        """
        if loader.is_proto_file(handle):
            return cls(tokenizer=GemmaTokenizer.from_preset(handle), **kwargs)
        kind, path, _ = loader.resolve(handle)
        config = dict(loader.preprocessor_settings(kind, path), **kwargs)
        tokenizer = GemmaTokenizer(proto=loader.tokenizer_proto_for(kind, path))
        return cls(tokenizer=tokenizer, **config)

    def save_to_preset(self, directory):
        """Writes `preprocessor.json` and the tokenizer's files."""
        config = self.get_config()
        del config["tokenizer"]
        keras_preset.write_object_config(
            directory, PREPROCESSOR_CONFIG_FILE, type(self).__name__, config
        )
        self.tokenizer.save_to_preset(directory)


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if is_tensorflow_tensor(value):
        return value.numpy()
    return keras.ops.convert_to_numpy(value)
