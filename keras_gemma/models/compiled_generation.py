"""Compiled generation loops: the one module that branches on the Keras backend.

The loop itself is backend-neutral (`keras.ops.while_loop` over
`decoding.extend`); what differs is how it is compiled and how a cache slot is
written:

- JAX: the whole prefill + decode loop is one `jax.jit` function with the
  model's variables as arguments (`keras.StatelessScope`), so repeated calls
  with shapes in the same bucket reuse the executable; cache writes are
  `dynamic_update_slice`, done in place by XLA inside the loop.
- TensorFlow: the same function under `tf.function(jit_compile=True)`.
- PyTorch: eager, under `torch.inference_mode()`, with caches preallocated and
  written in place (`cache[:, i] = kv`); no per-token copy or allocation of
  the caches. The decode step's per-token Python overhead is what remains.
"""

import keras
import numpy as np
from keras import ops

from keras_gemma.models import decoding
from keras_gemma.models.gemma_causal_lm_head import logits_from_hidden_states

BACKEND = keras.config.backend()


def _functional_write(cache, index, update):
    return ops.slice_update(cache, (0, index, 0, 0), update)


def _torch_write(cache, index, update):
    index = int(index)
    cache[:, index : index + update.shape[1]] = update
    return cache


WRITE = _torch_write if BACKEND == "torch" else _functional_write


class DecodeLoop:
    """The backend-neutral generation loop for one call shape.

    Args:
        causal_lm: the `GemmaCausalLM`.
        sampler: a `keras_gemma.samplers.Sampler`.
        stop_token_ids: tuple of ints.
        prompt_length: `P`, the bucketed prompt length.
        total_length: `T`, cache capacity in slots (>= P + max_new_tokens - 1).
        pad_token_id: int written after a row has stopped.
    """

    def __init__(self, causal_lm, sampler, stop_token_ids, prompt_length, total_length, pad_token_id=0):
        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.sampler = sampler
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        self.prompt_length = prompt_length
        self.total_length = total_length
        self.capacity = total_length - prompt_length + 1
        self.pad_token_id = pad_token_id

    def _is_stop(self, tokens):
        if not self.stop_token_ids:
            return ops.zeros(ops.shape(tokens), dtype="bool")
        stops = ops.convert_to_tensor(self.stop_token_ids, dtype="int32")
        return ops.any(ops.equal(tokens[:, None], stops[None, :]), axis=-1)

    def _sample(self, hidden_last, seen, seed):
        logits = logits_from_hidden_states(self.backbone, hidden_last)[:, 0, :]
        return self.sampler(logits, seed=seed, seen=seen if self.sampler.uses_seen_tokens else None)

    def _mark_seen(self, seen, tokens):
        if not self.sampler.uses_seen_tokens:
            return seen
        vocabulary_size = self.backbone.vocabulary_size
        return ops.logical_or(seen, ops.one_hot(tokens, vocabulary_size) > 0)

    def initial_state(self, token_ids, padding_mask, seed):
        """Prefill and the first sampled token. Returns the loop state tuple."""
        batch = token_ids.shape[0]
        padding_mask = ops.cast(padding_mask, "int32")
        padding_counts = self.prompt_length - ops.sum(padding_mask, axis=1)
        hidden, caches = decoding.prefill(
            self.backbone, token_ids, padding_mask, self.total_length
        )
        if self.sampler.uses_seen_tokens:
            vocabulary_size = self.backbone.vocabulary_size
            rows = ops.repeat(ops.arange(batch, dtype="int32"), self.prompt_length)
            indices = ops.stack([rows, ops.reshape(ops.cast(token_ids, "int32"), (-1,))], axis=1)
            counts = ops.scatter(
                indices, ops.reshape(ops.cast(padding_mask, "float32"), (-1,)), (batch, vocabulary_size)
            )
            seen = counts > 0
        else:
            seen = ops.zeros((batch, 1), dtype="bool")
        token = self._sample(hidden[:, -1:, :], seen, seed(0))
        seen = self._mark_seen(seen, token)
        output = ops.zeros((batch, self.capacity), dtype="int32")
        output = ops.slice_update(output, (0, 0), token[:, None])
        done = self._is_stop(token)
        step = ops.convert_to_tensor(1, dtype="int32")
        caches = tuple(tuple(pair) for pair in caches)
        return (step, token, caches, output, done, seen, padding_counts)

    def step(self, state, seed):
        """One decode step: feeds the last token, samples the next."""
        step, token, caches, output, done, seen, padding_counts = state
        slot = self.prompt_length + step - 1
        hidden, caches = decoding.extend(
            self.backbone,
            caches,
            ops.cast(token[:, None], "int32"),
            slot,
            padding_counts,
            WRITE,
            self.total_length,
        )
        next_token = self._sample(hidden, seen, seed(step))
        next_token = ops.where(done, self.pad_token_id, next_token)
        seen = self._mark_seen(seen, next_token)
        output = ops.slice_update(output, (0, step), next_token[:, None])
        done = ops.logical_or(done, self._is_stop(next_token))
        caches = tuple(tuple(pair) for pair in caches)
        return (step + 1, next_token, caches, output, done, seen, padding_counts)

    def run(self, token_ids, padding_mask, max_new_tokens, seed):
        state = self.initial_state(token_ids, padding_mask, seed)

        def cond(*state):
            step, done = state[0], state[4]
            return ops.logical_and(step < max_new_tokens, ops.logical_not(ops.all(done)))

        def body(*state):
            return self.step(state, seed)

        state = ops.while_loop(cond, body, state)
        return state[3], state[0]


class CompiledGenerator:
    """Caches compiled generation functions for one `GemmaCausalLM`."""

    def __init__(self, causal_lm):
        self.causal_lm = causal_lm
        self._functions = {}
        self._seed_generator = None
        self.compile_count = 0

    # --- seeds -----------------------------------------------------------
    def _seed_fn(self, seed):
        """`step -> seed` for the samplers, in the backend's form."""
        if BACKEND == "jax":
            import jax

            key = seed  # a jax PRNG key passed as a traced argument
            return lambda step: jax.random.fold_in(key, step)
        generator = self._seed_generator
        return lambda step: generator

    def _reset_seed(self, seed):
        if self._seed_generator is None:
            self._seed_generator = keras.random.SeedGenerator(0)
        value = np.random.randint(0, 2**31 - 1) if seed is None else int(seed)
        self._seed_generator.state.assign(np.array([value, 0], dtype=self._seed_generator.state.dtype))
        return value

    # --- whole-loop generation -------------------------------------------
    def generate(self, token_ids, padding_mask, max_new_tokens, total_length, sampler, stop_token_ids, seed=None, pad_token_id=0):
        """Left-padded numpy prompts `[b, P]` → `(generated [b, capacity], steps)`."""
        prompt_length = token_ids.shape[1]
        loop = DecodeLoop(self.causal_lm, sampler, stop_token_ids, prompt_length, total_length, pad_token_id)
        key = (token_ids.shape, total_length, sampler.cache_key(), loop.stop_token_ids, pad_token_id, len(self.causal_lm.variables))
        if BACKEND == "jax":
            return self._generate_jax(loop, key, token_ids, padding_mask, max_new_tokens, seed)
        seed_value = self._reset_seed(seed)
        del seed_value
        if BACKEND == "tensorflow":
            return self._generate_tensorflow(loop, key, token_ids, padding_mask, max_new_tokens)
        return self._generate_torch(loop, token_ids, padding_mask, max_new_tokens)

    def _generate_jax(self, loop, key, token_ids, padding_mask, max_new_tokens, seed):
        import jax

        variables = self.causal_lm.variables
        if key not in self._functions:

            def function(values, token_ids, padding_mask, max_new_tokens, rng):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    seed_fn = self._seed_fn(rng)
                    return loop.run(token_ids, padding_mask, max_new_tokens, seed_fn)

            self._functions[key] = jax.jit(function)
            self.compile_count += 1
        rng = jax.random.PRNGKey(np.random.randint(0, 2**31 - 1) if seed is None else int(seed))
        values = [variable.value for variable in variables]
        output, steps = self._functions[key](
            values, token_ids, padding_mask, np.int32(max_new_tokens), rng
        )
        return np.asarray(output), int(steps)

    def _generate_tensorflow(self, loop, key, token_ids, padding_mask, max_new_tokens):
        import tensorflow as tf

        if key not in self._functions:
            seed_fn = self._seed_fn(None)

            @tf.function(jit_compile=True, reduce_retracing=True)
            def function(token_ids, padding_mask, max_new_tokens):
                return loop.run(token_ids, padding_mask, max_new_tokens, seed_fn)

            self._functions[key] = function
            self.compile_count += 1
        output, steps = self._functions[key](
            tf.constant(token_ids), tf.constant(padding_mask), tf.constant(max_new_tokens, tf.int32)
        )
        return output.numpy(), int(steps)

    def _generate_torch(self, loop, token_ids, padding_mask, max_new_tokens):
        import torch

        seed_fn = self._seed_fn(None)
        with torch.inference_mode():
            output, steps = loop.run(
                ops.convert_to_tensor(token_ids), ops.convert_to_tensor(padding_mask), max_new_tokens, seed_fn
            )
        return ops.convert_to_numpy(output), int(steps)
