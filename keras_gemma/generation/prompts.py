"""Prompts as token ids: text detection, tokenization, checks and new-token budgets.

Prompts are lists of ids, never padded for generation: each row of a batch
sits at its own position (`batch.py`).
"""

import sys

import numpy as np
from keras import ops

DEFAULT_MAX_NEW_TOKENS = 64
# The longest context of any Gemma text model (Gemma 3 4B and up).
MAX_CONTEXT = 131_072


def is_text(x):
    """Whether `x` is a string, a non-empty list of strings or a string array."""
    if isinstance(x, str):
        return True
    if isinstance(x, (list, tuple)) and x and all(isinstance(i, str) for i in x):
        return True
    if isinstance(x, np.ndarray) and x.dtype.kind in ("U", "S", "O"):
        return True
    return False


def is_string_dataset(x):
    """Whether `x` is a `tf.data.Dataset` of scalar strings (TensorFlow already imported)."""
    if "tensorflow" not in sys.modules:
        return False
    try:
        import tensorflow as tf
    except ImportError:
        return False
    if not isinstance(x, tf.data.Dataset):
        return False
    spec = x.element_spec
    return isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string


def text_list(x):
    """`is_text` input as a list of Python strings."""
    if isinstance(x, str):
        return [x]
    if isinstance(x, np.ndarray):
        return [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in x.reshape(-1)]
    return list(x)


def tokenizer_of(causal_lm, required=True):
    """The tokenizer of `causal_lm`'s preprocessor; None (or an error) without one."""
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
    """Prompts as lists of ids (start token included).

    Returns:
        `(prompts, is_text_input, single)`: a list of lists of ints, whether
        `inputs` was text, and whether it was one string.
    """
    if isinstance(inputs, dict):
        if "token_ids" not in inputs:
            raise ValueError(
                "A dict prompt needs 'token_ids' (and 'padding_mask'). Received keys: "
                f"{sorted(inputs)}"
            )
        token_ids = np.asarray(ops.convert_to_numpy(inputs["token_ids"]))
        if token_ids.ndim == 1:
            token_ids = token_ids[None, :]
        mask = inputs.get("padding_mask")
        if mask is None:
            mask = np.ones_like(token_ids)
        else:
            mask = np.asarray(ops.convert_to_numpy(mask)).reshape(token_ids.shape)
        rows = zip(token_ids, mask)
        return [row[m.astype(bool)].astype("int32").tolist() for row, m in rows], False, False
    single = isinstance(inputs, str)
    if not is_text(inputs):
        raise TypeError(
            "`inputs` must be a string, a list of strings, or a dict with 'token_ids' and "
            f"'padding_mask'. Received: {type(inputs).__name__} {inputs!r:.80}"
        )
    tokenizer = tokenizer_of(causal_lm)
    texts = text_list(inputs)
    add_start = getattr(causal_lm.preprocessor, "add_start_token", True)
    ids = tokenizer.tokenize(texts)
    prefix = [tokenizer.bos_token_id] if add_start else []
    return [prefix + [int(i) for i in row] for row in ids], True, single


def check_prompts(prompts, vocabulary_size):
    """Raises unless there is at least one prompt, each non-empty, ids in the vocabulary."""
    if not prompts:
        raise ValueError("`inputs` is empty: pass at least one prompt.")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(
            f"Prompt {empty[0]} has no tokens. Give at least one token (string prompts get the "
            "start token automatically)."
        )
    for index, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < vocabulary_size]
        if bad:
            raise ValueError(
                f"Prompt {index} has token ids outside [0, {vocabulary_size}): {bad[:5]}"
            )


def right_pad(sequences, length, mask_dtype="int32"):
    """`(token_ids int32, padding_mask)` `[batch, length]`, each sequence at the left end."""
    token_ids = np.zeros((len(sequences), length), dtype="int32")
    padding_mask = np.zeros((len(sequences), length), dtype=mask_dtype)
    for row, sequence in enumerate(sequences):
        token_ids[row, : len(sequence)] = sequence
        padding_mask[row, : len(sequence)] = 1
    return token_ids, padding_mask


def check_token_count(name, value, minimum=0):
    """Raises unless `value` is an int (Python or NumPy, not bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def new_token_budget(prompts, max_length, max_new_tokens):
    """How many tokens to generate, from `max_length` and `max_new_tokens` (64 by default)."""
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
                f"`max_length={max_length}` is shorter than the longest prompt ({longest} "
                "tokens). Raise `max_length` or use `max_new_tokens`."
            )
        by_length = int(max_length) - longest
        budget = by_length if budget is None else min(budget, by_length)
    if longest + budget > MAX_CONTEXT:
        raise ValueError(
            f"The prompt ({longest} tokens) plus {budget} new tokens exceeds {MAX_CONTEXT} "
            "tokens, the longest context of any Gemma model. Ask for fewer new tokens."
        )
    return budget


# === Argument checks (called first by `generate`) ===


def normalize_stop_token_ids(causal_lm, stop_token_ids):
    """`stop_token_ids` with one id or token strings made a list of ids.

    Accepts "auto", None, one id (`1`), one token (`"<end_of_turn>"`) or a
    list mixing ids and tokens (`["<eos>", 106]`); tokens are mapped through
    the model's tokenizer. Ranges are checked later (`stopping`).
    """
    if stop_token_ids is None or (isinstance(stop_token_ids, str) and stop_token_ids == "auto"):
        return stop_token_ids
    if isinstance(stop_token_ids, (str, int, np.integer)):
        stop_token_ids = [stop_token_ids]
    if not isinstance(stop_token_ids, (list, tuple, set, frozenset, np.ndarray)):
        raise ValueError(
            "`stop_token_ids` must be 'auto', None, a token id, a token string, or a list of "
            f"them. Received: {stop_token_ids!r} ({type(stop_token_ids).__name__})"
        )
    ids = []
    for value in np.asarray(stop_token_ids, dtype=object).reshape(-1).tolist():
        if isinstance(value, str):
            tokenizer = tokenizer_of(causal_lm, required=False)
            if tokenizer is None:
                raise ValueError(
                    f"`stop_token_ids` holds the token {value!r}, but the model has no "
                    "tokenizer to map it to an id: pass ids instead."
                )
            try:
                ids.append(tokenizer.token_to_id(value))
            except ValueError:
                raise ValueError(
                    f"`stop_token_ids` holds {value!r}, which is not a token of this "
                    "vocabulary. Pass token ids, or pieces such as '<eos>' or '<end_of_turn>'."
                ) from None
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            ids.append(int(value))
        else:
            raise ValueError(
                "`stop_token_ids` entries must be token ids (int) or token strings. "
                f"Received: {value!r} ({type(value).__name__}) in {stop_token_ids!r}"
            )
    return ids


def check_encodable(inputs):
    """`ValueError` for a text prompt that is not valid Unicode (a lone surrogate)."""
    if not is_text(inputs):
        return
    for index, text in enumerate(text_list(inputs)):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                where = "" if isinstance(inputs, str) else f"prompt {index}: "
                raise ValueError(
                    f"{where}the text cannot be encoded as UTF-8 ({error.reason} at position "
                    f"{error.start}: {text[error.start : error.end]!r}). Remove or replace "
                    "lone surrogates, e.g. `text.encode('utf-8', 'replace').decode()`."
                ) from None
