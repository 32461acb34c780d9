"""Beam search over the cached decoding steps.

Each prompt is expanded to `num_beams` rows sharing one prefill. At every
step each beam proposes its continuations; the `num_beams` best
(prompt-wise) by summed log-probability survive, and the caches are
re-ordered to follow their beams. A beam that emits a stop token is frozen
(it only extends with padding at no cost). The best beam is chosen at the end
by `score / length ** length_penalty`.
"""

import numpy as np
from keras import ops

from keras_gemma.generation import decoding
from keras_gemma.generation.engine import as_tensor
from keras_gemma.generation.prompts import bucket_new_tokens
from keras_gemma.generation.prompts import bucket_prompt_length
from keras_gemma.generation.prompts import left_pad
from keras_gemma.generation.stopping import stop_mask
from keras_gemma.generation.stopping import truncate_at_stop

NEGATIVE_INFINITY = -1e9


def beam_search(causal_lm, prompts, max_new_tokens, sampler, stop_token_ids, pad_token_id=0):
    """The best continuation of each prompt.

    Args:
        causal_lm: the model; its `backbone` and `generator` (a
            `CompiledGenerator`) are used.
        prompts: list of lists of token ids.
        max_new_tokens: int.
        sampler: a `keras_gemma.samplers.BeamSampler`.
        stop_token_ids: tuple of ints.
        pad_token_id: int. What a finished beam continues with.

    Returns:
        One list of ids per prompt, cut before its first stop token.
    """
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    backbone = causal_lm.backbone
    generator = causal_lm.generator
    beams = sampler.num_beams
    batch = len(prompts)
    prompt_length = bucket_prompt_length(max(len(p) for p in prompts))
    total_length = prompt_length + bucket_new_tokens(max_new_tokens)
    token_ids, padding_mask = left_pad(prompts, prompt_length, pad_token_id)
    stops = tuple(stop_token_ids)
    vocabulary_size = backbone.vocabulary_size

    def select(scores, log_probs, done):
        """Top `beams` of every prompt. scores/done `[b, beams]`, log_probs `[b*beams, V]`."""
        log_probs = ops.reshape(log_probs, (batch, beams, vocabulary_size))
        # A finished beam continues only with padding, at no cost.
        frozen = ops.where(
            ops.arange(vocabulary_size)[None, None, :] == pad_token_id, 0.0, NEGATIVE_INFINITY
        )
        log_probs = ops.where(done[..., None], frozen, log_probs)
        candidates = ops.reshape(scores[..., None] + log_probs, (batch, beams * vocabulary_size))
        new_scores, indices = ops.top_k(candidates, beams)
        beam_index = ops.cast(indices // vocabulary_size, "int32")
        tokens = ops.cast(indices % vocabulary_size, "int32")
        return new_scores, beam_index, tokens

    def reorder(tensor, beam_index):
        """Gathers rows `[b*beams, ...]` by `beam_index` `[b, beams]`."""
        flat = ops.reshape(beam_index + ops.arange(batch, dtype="int32")[:, None] * beams, (-1,))
        return ops.take(tensor, flat, axis=0)

    def first(token_ids, padding_mask):
        hidden, caches = decoding.prefill(backbone, token_ids, padding_mask, total_length)
        log_probs = ops.log_softmax(decoding.last_logits(backbone, hidden), axis=-1)
        log_probs = ops.repeat(log_probs, beams, axis=0)
        caches = tuple(cache.map(lambda t: ops.repeat(t, beams, axis=0)) for cache in caches)
        # Only beam 0 is live at the start, so the first pick is not duplicated.
        scores = ops.where(ops.arange(beams)[None, :] == 0, 0.0, NEGATIVE_INFINITY)
        scores = scores + ops.zeros((batch, 1))
        done = ops.zeros((batch, beams), dtype="bool")
        scores, beam_index, tokens = select(scores, log_probs, done)
        return scores, tokens, caches

    forward = generator.decode_step(total_length)

    def step(caches, tokens, scores, done, lengths, slot, padding_counts):
        logits, caches = forward(caches, ops.reshape(tokens, (-1, 1)), slot, padding_counts)
        scores, beam_index, new_tokens = select(scores, ops.log_softmax(logits, axis=-1), done)
        caches = tuple(cache.map(lambda t: reorder(t, beam_index)) for cache in caches)
        done = ops.take_along_axis(done, beam_index, axis=1)
        lengths = ops.take_along_axis(lengths, beam_index, axis=1)
        lengths = lengths + ops.cast(ops.logical_not(done), "int32")
        done = ops.logical_or(done, stop_mask(new_tokens, stops))
        return caches, new_tokens, scores, done, lengths, beam_index

    key = (token_ids.shape, total_length, beams, stops, pad_token_id)
    first_function = generator.compiled("beam_first", key, first)
    step_function = generator.compiled("beam_step", key, step)
    padding_counts = np.repeat(prompt_length - padding_mask.sum(axis=1), beams).astype("int32")
    scores, tokens, caches = first_function(as_tensor(token_ids), as_tensor(padding_mask))
    done = stop_mask(tokens, stops)
    lengths = ops.ones((batch, beams), dtype="int32")
    history = [ops.convert_to_numpy(tokens)[:, :, None]]  # per step `[b, beams, 1]`
    parents = []
    for index in range(1, max_new_tokens):
        if bool(np.all(ops.convert_to_numpy(done))):
            break
        slot = np.int32(prompt_length + index - 1)
        caches, tokens, scores, done, lengths, beam_index = step_function(
            caches, tokens, scores, done, lengths, as_tensor(slot), as_tensor(padding_counts)
        )
        parents.append(ops.convert_to_numpy(beam_index))
        history.append(ops.convert_to_numpy(tokens)[:, :, None])
    sequences = _backtrack(history, parents)  # (b, beams, steps)
    scores = ops.convert_to_numpy(scores)
    lengths = np.maximum(ops.convert_to_numpy(lengths), 1)
    normalized = scores / lengths.astype("float64") ** sampler.length_penalty
    best = np.argmax(normalized, axis=1)
    return [truncate_at_stop(sequences[row, best[row]], stops) for row in range(batch)]


def _backtrack(history, parents):
    """Rebuilds each final beam's tokens from per-step tokens and parent indices."""
    batch, beams = history[0].shape[:2]
    steps = len(history)
    sequences = np.zeros((batch, beams, steps), dtype="int64")
    current = np.tile(np.arange(beams), (batch, 1))
    for step in range(steps - 1, -1, -1):
        sequences[:, :, step] = np.take_along_axis(history[step][:, :, 0], current, axis=1)
        if step > 0:
            current = np.take_along_axis(parents[step - 1], current, axis=1)
    return sequences
