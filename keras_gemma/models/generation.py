"""Text-level generation and scoring: prompts in, text out.

The compiled decoding lives in `compiled_generation.py`; this module turns
strings or pre-tokenized dicts into left-padded, bucketed prompt arrays,
validates arguments, and turns tokens back into text.
"""

import numpy as np
from keras import ops

from keras_gemma import samplers as sampler_lib

DEFAULT_MAX_NEW_TOKENS = 64
# The longest context of any Gemma text model (Gemma 3 4B and up).
MAX_CONTEXT = 131_072
MIN_PROMPT_BUCKET = 16
NEW_TOKENS_BUCKET = 32
# `<end_of_turn>` when no tokenizer says otherwise (GEMMA_ARCHITECTURES.md).
END_OF_TURN_GEMMA_1_2 = 107
END_OF_TURN_GEMMA_3 = 106
EOS_TOKEN_ID = 1


def is_text(x):
    if isinstance(x, str):
        return True
    if isinstance(x, (list, tuple)) and x and all(isinstance(i, str) for i in x):
        return True
    if isinstance(x, np.ndarray) and x.dtype.kind in ("U", "S", "O"):
        return True
    return False


def is_string_dataset(x):
    try:
        import sys

        if "tensorflow" not in sys.modules:
            return False
        import tensorflow as tf
    except ImportError:
        return False
    if not isinstance(x, tf.data.Dataset):
        return False
    spec = x.element_spec
    return isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string


def text_list(x):
    if isinstance(x, str):
        return [x]
    if isinstance(x, np.ndarray):
        return [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in x.reshape(-1)]
    return list(x)


def bucket_prompt_length(length):
    """Smallest power of two >= `length` (at least 16)."""
    bucket = MIN_PROMPT_BUCKET
    while bucket < length:
        bucket *= 2
    return bucket


def bucket_new_tokens(count):
    return max(NEW_TOKENS_BUCKET, -(-count // NEW_TOKENS_BUCKET) * NEW_TOKENS_BUCKET)


def resolve_stop_token_ids(causal_lm, stop_token_ids):
    if stop_token_ids is None:
        return ()
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ValueError(
                f"`stop_token_ids` must be 'auto', None or a list of ids. Received: {stop_token_ids!r}"
            )
        tokenizer = _tokenizer(causal_lm, required=False)
        if tokenizer is not None:
            ids = [tokenizer.eos_token_id, tokenizer.end_of_turn_token_id]
            return tuple(i for i in ids if i is not None)
        gemma3 = causal_lm.backbone.use_query_key_norm
        return (EOS_TOKEN_ID, END_OF_TURN_GEMMA_3 if gemma3 else END_OF_TURN_GEMMA_1_2)
    ids = tuple(int(i) for i in stop_token_ids)
    vocabulary_size = causal_lm.backbone.vocabulary_size
    for i in ids:
        if not 0 <= i < vocabulary_size:
            raise ValueError(f"Stop token id {i} is outside the vocabulary [0, {vocabulary_size}).")
    return ids


def _tokenizer(causal_lm, required=True):
    preprocessor = causal_lm.preprocessor
    if preprocessor is None:
        if required:
            raise ValueError(
                "String prompts need a tokenizer: build the model with "
                "`GemmaCausalLM(backbone, preprocessor)` or load it with `from_preset`, "
                "or pass token ids as {'token_ids': ..., 'padding_mask': ...}."
            )
        return None
    return preprocessor.tokenizer


def prompt_ids(causal_lm, inputs):
    """Prompts as lists of ids (start token included) and whether inputs were text."""
    if isinstance(inputs, dict):
        if "token_ids" not in inputs:
            raise ValueError("A dict prompt needs 'token_ids' (and 'padding_mask'). Received keys: "
                             f"{sorted(inputs)}")
        token_ids = np.asarray(ops.convert_to_numpy(inputs["token_ids"]))
        if token_ids.ndim == 1:
            token_ids = token_ids[None, :]
        mask = inputs.get("padding_mask")
        mask = np.ones_like(token_ids) if mask is None else np.asarray(ops.convert_to_numpy(mask)).reshape(token_ids.shape)
        return [row[m.astype(bool)].astype("int32").tolist() for row, m in zip(token_ids, mask)], False, False
    single = isinstance(inputs, str)
    if not is_text(inputs):
        raise TypeError(
            "`inputs` must be a string, a list of strings, or a dict with 'token_ids' and "
            f"'padding_mask'. Received: {type(inputs).__name__} {inputs!r:.80}"
        )
    tokenizer = _tokenizer(causal_lm)
    texts = text_list(inputs)
    add_start = getattr(causal_lm.preprocessor, "add_start_token", True)
    ids = tokenizer.tokenize(texts)
    prefix = [tokenizer.bos_token_id] if add_start else []
    return [prefix + [int(i) for i in row] for row in ids], True, single


def left_pad(prompts, length, pad_token_id=0):
    token_ids = np.full((len(prompts), length), pad_token_id, dtype="int32")
    padding_mask = np.zeros((len(prompts), length), dtype="int32")
    for row, prompt in enumerate(prompts):
        if prompt:
            token_ids[row, length - len(prompt):] = prompt
            padding_mask[row, length - len(prompt):] = 1
    return token_ids, padding_mask


def check_token_count(name, value, minimum=0):
    """Raises unless `value` is an int (Python or NumPy, not bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def new_token_budget(prompts, max_length, max_new_tokens):
    longest = max(len(p) for p in prompts)
    for name, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
        if value is not None:
            check_token_count(name, value)
    budget = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None and max_length is None else None
    if max_new_tokens is not None:
        budget = int(max_new_tokens)
    if max_length is not None:
        if max_length < longest:
            raise ValueError(
                f"`max_length={max_length}` is shorter than the longest prompt ({longest} tokens). "
                "Raise `max_length` or use `max_new_tokens`."
            )
        by_length = int(max_length) - longest
        budget = by_length if budget is None else min(budget, by_length)
    if longest + budget > MAX_CONTEXT:
        raise ValueError(
            f"The prompt ({longest} tokens) plus {budget} new tokens exceeds {MAX_CONTEXT} tokens, "
            "the longest context of any Gemma model. Ask for fewer new tokens."
        )
    return budget


def _new_tokens_of_row(row, count, stop_token_ids):
    tokens = []
    for token in row[:count]:
        if int(token) in stop_token_ids:
            break
        tokens.append(int(token))
    return tokens


def generate(causal_lm, inputs, max_length, max_new_tokens, stop_token_ids, strip_prompt, stream, sampler, seed):
    sampler = causal_lm.sampler if sampler is None else sampler_lib.get(sampler)
    prompts, is_text_input, single = prompt_ids(causal_lm, inputs)
    if not prompts:
        raise ValueError("`inputs` is empty: pass at least one prompt.")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(
            f"Prompt {empty[0]} has no tokens. Give at least one token (string prompts get the "
            "start token automatically)."
        )
    vocabulary_size = causal_lm.backbone.vocabulary_size
    for index, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < vocabulary_size]
        if bad:
            raise ValueError(f"Prompt {index} has token ids outside [0, {vocabulary_size}): {bad[:5]}")
    budget = new_token_budget(prompts, max_length, max_new_tokens)
    stops = resolve_stop_token_ids(causal_lm, stop_token_ids)
    pad_token_id = 0
    if isinstance(sampler, sampler_lib.BeamSampler):
        if stream:
            raise ValueError("Beam search cannot stream: its best sequence is known only at the end.")
        from keras_gemma.models.beam_search import beam_search

        new_tokens = beam_search(causal_lm, prompts, budget, sampler, stops)
        return _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt, inputs)

    prompt_length = bucket_prompt_length(max(len(p) for p in prompts))
    total_length = prompt_length + bucket_new_tokens(budget)
    token_ids, padding_mask = left_pad(prompts, prompt_length, pad_token_id)
    if stream:
        if len(prompts) != 1:
            raise ValueError(f"`stream=True` takes one prompt; received {len(prompts)}.")
        return _stream_text(causal_lm, prompts[0], token_ids, padding_mask, budget, total_length, sampler, stops, seed, strip_prompt, is_text_input)
    if budget == 0:
        new_tokens = [[] for _ in prompts]
    else:
        output, count = causal_lm.generator.generate(
            token_ids, padding_mask, budget, total_length, sampler, stops, seed=seed, pad_token_id=pad_token_id
        )
        new_tokens = [_new_tokens_of_row(row, count, stops) for row in output]
    return _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt, inputs)


def _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt, inputs):
    if is_text_input:
        tokenizer = _tokenizer(causal_lm)
        texts = []
        for prompt, new in zip(prompts, new_tokens):
            sequence = new if strip_prompt else prompt + new
            texts.append(tokenizer.detokenize(sequence) if sequence else "")
        return texts[0] if single else texts
    sequences = [new if strip_prompt else prompt + new for prompt, new in zip(prompts, new_tokens)]
    length = max(1, max(len(s) for s in sequences))
    token_ids = np.zeros((len(sequences), length), dtype="int32")
    padding_mask = np.zeros((len(sequences), length), dtype="bool")
    for row, sequence in enumerate(sequences):
        token_ids[row, : len(sequence)] = sequence
        padding_mask[row, : len(sequence)] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _stream_text(causal_lm, prompt, token_ids, padding_mask, budget, total_length, sampler, stops, seed, strip_prompt, is_text_input):
    """Yields text pieces (or single-token id lists for id inputs) as decoded."""
    if budget == 0:
        return
    text = None
    if is_text_input:
        text = IncrementalDetokenizer(_tokenizer(causal_lm), prefix=[] if strip_prompt else prompt)
        if not strip_prompt:
            yield text.emitted
    for tokens in causal_lm.generator.stream(
        token_ids, padding_mask, budget, total_length, sampler, stops, seed=seed
    ):
        token = int(tokens[0])
        if token in stops:
            break
        if text is None:
            yield [token]
            continue
        piece = text.add(token)
        if piece:
            yield piece
    if text is not None:
        piece = text.flush()
        if piece:
            yield piece


class IncrementalDetokenizer:
    """Text pieces of a growing token list, for streaming (generate and chat).

    A piece that would end inside a multi-byte character (the detokenized
    text ends with U+FFFD) is held back until the character completes;
    `flush()` returns whatever never completed.

    Args:
        tokenizer: a `GemmaTokenizer`.
        prefix: token ids whose text counts as already emitted (`emitted`).
    """

    def __init__(self, tokenizer, prefix=()):
        self.tokenizer = tokenizer
        self.tokens = [int(t) for t in prefix]
        self.emitted = tokenizer.detokenize(self.tokens) if self.tokens else ""

    def add(self, token):
        """Appends `token`; returns the new text ("" while held back)."""
        self.tokens.append(int(token))
        text = self.tokenizer.detokenize(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        if text.startswith(self.emitted):
            piece = text[len(self.emitted):]
        else:
            piece = text[len(_common_prefix(text, self.emitted)):]
        self.emitted = text
        return piece

    def flush(self):
        """The held-back end, if any."""
        text = self.tokenizer.detokenize(self.tokens) if self.tokens else ""
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            piece, self.emitted = text[len(self.emitted):], text
            return piece
        return ""


def _common_prefix(a, b):
    index = 0
    while index < min(len(a), len(b)) and a[index] == b[index]:
        index += 1
    return a[:index]


def score(causal_lm, inputs):
    """Per-token log-likelihoods; see `GemmaCausalLM.score`."""
    prompts, is_text_input, single = prompt_ids(causal_lm, inputs)
    length = max(len(p) for p in prompts)
    token_ids = np.zeros((len(prompts), length), dtype="int32")
    padding_mask = np.zeros((len(prompts), length), dtype="int32")
    for row, prompt in enumerate(prompts):
        token_ids[row, : len(prompt)] = prompt
        padding_mask[row, : len(prompt)] = 1
    logits = causal_lm({"token_ids": token_ids, "padding_mask": padding_mask})
    log_probs = ops.log_softmax(ops.cast(logits[:, :-1, :], "float32"), axis=-1)
    targets = ops.convert_to_tensor(token_ids[:, 1:, None])
    scores = ops.convert_to_numpy(ops.take_along_axis(log_probs, targets, axis=-1))[..., 0]
    scores = scores * padding_mask[:, 1:]
    if not is_text_input:
        return scores.astype("float32")
    rows = [scores[row, : len(prompt) - 1].astype("float32") for row, prompt in enumerate(prompts)]
    return rows[0] if single else rows
