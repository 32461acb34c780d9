"""Beam search over the cached decoding steps.

Each prompt is prefilled once (the engine's prefill program) and its caches
repeated to `num_beams` rows. At every
step each beam proposes its continuations; the `num_beams` best
(prompt-wise) by summed log-probability survive, and the caches are
re-ordered to follow their beams. A beam that emits a stop token is frozen
(it only extends with padding at no cost). The best beam is chosen at the end
by `score / length ** length_penalty`.
"""

import numpy as np
from keras import ops

from keras_gemma.generation.batch import GREEDY
from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.generation.engine import as_tensor
from keras_gemma.generation.engine import capacity_for
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
    capacity = capacity_for(max(len(p) for p in prompts) + max_new_tokens)
    prefilled = DecodeBatch(causal_lm, batch, capacity, pad_token_id)
    prefilled.admit([Request(row, p, 1, GREEDY, 0, ()) for row, p in enumerate(prompts)])
    caches = tuple(cache.map(lambda t: ops.repeat(t, beams, axis=0)) for cache in prefilled.caches)
    # Every beam of a prompt sits at the same slot; the last prompt token comes first.
    positions = np.repeat(prefilled.rows.position, beams).astype("int32")
    tokens = np.repeat(prefilled.rows.token, beams).astype("int32")
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

    forward = generator.step_logits()
    active = np.ones((batch * beams,), bool)

    def step(caches, tokens, scores, done, lengths, positions, active):
        logits, caches = forward(caches, ops.reshape(tokens, (-1,)), positions, active)
        scores, beam_index, new_tokens = select(scores, ops.log_softmax(logits, axis=-1), done)
        caches = tuple(cache.map(lambda t: reorder(t, beam_index)) for cache in caches)
        done = ops.take_along_axis(done, beam_index, axis=1)
        lengths = ops.take_along_axis(lengths, beam_index, axis=1)
        lengths = lengths + ops.cast(ops.logical_not(done), "int32")
        done = ops.logical_or(done, stop_mask(new_tokens, stops))
        return caches, new_tokens, scores, done, lengths, beam_index

    key = (batch, capacity, beams, stops, pad_token_id)
    step_function = generator.compiled("beam_step", key, step)
    # Only beam 0 is live at the start, so the first pick is not duplicated.
    scores = np.where(np.arange(beams)[None, :] == 0, 0.0, NEGATIVE_INFINITY)
    scores = as_tensor((scores + np.zeros((batch, 1))).astype("float32"))
    done = as_tensor(np.zeros((batch, beams), bool))
    lengths = as_tensor(np.zeros((batch, beams), "int32"))
    tokens = as_tensor(tokens.reshape(batch, beams))
    history = []  # per step `[b, beams, 1]`
    parents = []
    for index in range(max_new_tokens):
        if index and bool(np.all(ops.convert_to_numpy(done))):
            break
        caches, tokens, scores, done, lengths, beam_index = step_function(
            caches, tokens, scores, done, lengths, as_tensor(positions + index), as_tensor(active)
        )
        if index:
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
