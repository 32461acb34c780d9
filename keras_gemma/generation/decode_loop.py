"""The backend-neutral decode loop: its state, one step, and the loop.

Written with `keras.ops` (`ops.while_loop` included), so JAX and TensorFlow
compile the whole loop and PyTorch runs it as a Python loop over a traced
step (`engine.py` decides which).
"""

from typing import Any
from typing import NamedTuple

from keras import ops

from keras_gemma.generation import decoding
from keras_gemma.generation.stopping import stop_mask


class DecodeState(NamedTuple):
    """What travels through the decode loop: tensors only (the caches are `KVCache`s).

    Attributes:
        step: int32 scalar. Tokens sampled so far (the next output column).
        slot: int32 scalar. Cache slot `token` will be written to.
        token: int32 `[b]`. The last sampled tokens.
        caches: tuple of one `KVCache` per layer.
        output: int32 `[b, capacity]`. The sampled tokens, column per step.
        done: bool `[b]`. Rows that sampled a stop token.
        seen: bool `[b, vocabulary]` (repetition penalty) or `[b, 1]` (unused).
        padding_counts: int32 `[b]`. Each row's left padding.
    """

    step: Any
    slot: Any
    token: Any
    caches: Any
    output: Any
    done: Any
    seen: Any
    padding_counts: Any


class DecodeLoop:
    """Generation for one sampler and stop set, as functions of `DecodeState`.

    Args:
        backbone: a `GemmaBackbone`.
        sampler: a `keras_gemma.samplers.Sampler`.
        stop_token_ids: tuple of ints.
        total_length: cache capacity in slots.
        capacity: length of the output buffer (max new tokens per call).
        forward: the decode step, `forward(caches, tokens [b, 1], slot,
            padding_counts) -> (logits [b, vocabulary], caches)`
            (`CompiledGenerator.decode_step`).
        pad_token_id: written after a row has stopped.
    """

    def __init__(
        self, backbone, sampler, stop_token_ids, total_length, capacity, forward, pad_token_id=0
    ):
        self.backbone = backbone
        self.forward = forward
        self.sampler = sampler
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        self.total_length = total_length
        self.capacity = capacity
        self.pad_token_id = pad_token_id

    def _sample(self, logits, seen, seed):
        seen = seen if self.sampler.uses_seen_tokens else None
        return ops.cast(self.sampler(logits, seed=seed, seen=seen), "int32")

    def _mark_seen(self, seen, tokens):
        if not self.sampler.uses_seen_tokens:
            return seen
        return ops.logical_or(seen, ops.one_hot(tokens, self.backbone.vocabulary_size) > 0)

    def seen_from_tokens(self, token_ids, padding_mask):
        """Bool `[b, vocabulary]`: the ids present in each prompt (`[b, 1]` when unused)."""
        batch, length = token_ids.shape
        if not self.sampler.uses_seen_tokens:
            return ops.zeros((batch, 1), dtype="bool")
        rows = ops.repeat(ops.arange(batch, dtype="int32"), length)
        indices = ops.stack([rows, ops.reshape(ops.cast(token_ids, "int32"), (-1,))], axis=1)
        weights = ops.reshape(ops.cast(padding_mask, "float32"), (-1,))
        counts = ops.scatter(indices, weights, (batch, self.backbone.vocabulary_size))
        return counts > 0

    def empty_seen(self, batch):
        """`seen` of a row that has read nothing yet."""
        if not self.sampler.uses_seen_tokens:
            return ops.zeros((batch, 1), dtype="bool")
        return ops.zeros((batch, self.backbone.vocabulary_size), dtype="bool")

    def start(self, hidden, caches, slot, seen, padding_counts, seed):
        """State after the hidden states of the last fed token: samples token 1.

        `seed(slot)` gives the sampler's seed for the token after `slot - 1`.
        """
        logits = decoding.last_logits(self.backbone, hidden)
        token = self._sample(logits, seen, seed(slot))
        seen = self._mark_seen(seen, token)
        output = ops.zeros((token.shape[0], self.capacity), dtype="int32")
        output = ops.slice_update(output, (0, 0), token[:, None])
        return DecodeState(
            step=ops.convert_to_tensor(1, dtype="int32"),
            slot=ops.convert_to_tensor(slot, dtype="int32"),
            token=token,
            caches=tuple(caches),
            output=output,
            done=stop_mask(token, self.stop_token_ids),
            seen=seen,
            padding_counts=padding_counts,
        )

    def prefill(self, token_ids, padding_mask, seed):
        """Left-padded prompts `[b, P]` -> the state holding the first new token."""
        prompt_length = token_ids.shape[1]
        padding_mask = ops.cast(padding_mask, "int32")
        padding_counts = prompt_length - ops.sum(padding_mask, axis=1)
        hidden, caches = decoding.prefill(self.backbone, token_ids, padding_mask, self.total_length)
        seen = self.seen_from_tokens(token_ids, padding_mask)
        return self.start(hidden, caches, prompt_length, seen, padding_counts, seed)

    def step(self, state, seed):
        """Feeds the last sampled token at `state.slot`, samples the next one."""
        logits, caches = self.forward(
            state.caches, state.token[:, None], state.slot, state.padding_counts
        )
        next_token = self._sample(logits, state.seen, seed(state.slot + 1))
        next_token = ops.where(state.done, self.pad_token_id, next_token)
        output = ops.slice_update(state.output, (0, state.step), next_token[:, None])
        return DecodeState(
            step=state.step + 1,
            slot=state.slot + 1,
            token=next_token,
            caches=caches,
            output=output,
            done=ops.logical_or(state.done, stop_mask(next_token, self.stop_token_ids)),
            seen=self._mark_seen(state.seen, next_token),
            padding_counts=state.padding_counts,
        )

    def loop(self, state, max_new_tokens, seed):
        """Steps until `max_new_tokens` are out or every row has stopped."""

        # The loop variables are `(state,)`: every backend's `while_loop`
        # passes them to `cond` and `body` unpacked, so each gets the state.
        def cond(state):
            running = ops.logical_not(ops.all(state.done))
            return ops.logical_and(state.step < max_new_tokens, running)

        def body(state):
            return (self.step(state, seed),)

        (state,) = ops.while_loop(cond, body, (state,))
        return state
