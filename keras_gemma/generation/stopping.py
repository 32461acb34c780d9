"""Stop tokens: which ids end a sequence, and the one place a sequence is cut.

Every consumer of generated tokens (`generate`, streaming, chat sessions and
beam search) cuts at the first stop token with `until_stop` or
`truncate_at_stop`; the compiled loops mark finished rows with `stop_mask`.
"""

from keras import ops

from keras_gemma.generation.prompts import tokenizer_of

EOS_TOKEN_ID = 1
# `<end_of_turn>` when no tokenizer says otherwise (GEMMA_ARCHITECTURES.md).
END_OF_TURN_GEMMA_1_2 = 107
END_OF_TURN_GEMMA_3 = 106


def resolve_stop_token_ids(causal_lm, stop_token_ids):
    """The stop ids as a tuple of ints.

    Args:
        causal_lm: the model (its preprocessor's tokenizer names the special
            tokens; without one, the family's defaults).
        stop_token_ids: "auto" (`<eos>` and `<end_of_turn>`), None (never
            stop) or an iterable of ids inside the vocabulary.
    """
    if stop_token_ids is None:
        return ()
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ValueError(
                "`stop_token_ids` must be 'auto', None or a list of ids. "
                f"Received: {stop_token_ids!r}"
            )
        tokenizer = tokenizer_of(causal_lm, required=False)
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


def until_stop(tokens, stop_token_ids):
    """Yields the ints of `tokens` (any iterable) up to, not including, the first stop id."""
    for token in tokens:
        token = int(token)
        if token in stop_token_ids:
            return
        yield token


def truncate_at_stop(tokens, stop_token_ids):
    """The list of `tokens` before the first stop id (all of them when none is there)."""
    return list(until_stop(tokens, stop_token_ids))


def stop_mask(tokens, stop_token_ids):
    """Bool tensor shaped like int `tokens`: which are stop ids (for compiled loops)."""
    if not stop_token_ids:
        return ops.zeros(ops.shape(tokens), dtype="bool")
    stops = ops.convert_to_tensor(tuple(stop_token_ids), dtype="int32")
    return ops.any(ops.equal(tokens[..., None], stops), axis=-1)
