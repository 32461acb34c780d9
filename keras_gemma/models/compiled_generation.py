"""Compiled generation: the one module that branches on the Keras backend.

The decoding math is backend-neutral (`decoding.prefill` / `decoding.extend`
and the loop below, written with `keras.ops`, `ops.while_loop` included).
What differs per backend is how it is compiled and how a cache slot is
written:

- JAX: prefill, the decode loop, one decode step (streaming) and a chat-turn
  extension are each one `jax.jit` function taking the model's variables as
  arguments (`keras.StatelessScope`); calls whose shapes fall in the same
  bucket reuse the executable. Cache writes are `dynamic_update_slice`, done
  in place by XLA inside the loop.
- TensorFlow: the same functions under `tf.function(jit_compile=True)`.
- PyTorch: the loop runs eagerly under `torch.inference_mode()`, with caches
  preallocated once and written in place (`index_copy_`): no per-token copy
  or allocation of the caches. The model's part of a decode step (`next_logits`:
  thousands of tensor ops) is recorded once per shape with
  `torch.jit.trace`, variables passed as inputs, and replayed by TorchScript's
  C++ interpreter: Python and `keras.ops` dispatch cost ~35 ms per token on a
  2-core CPU, about as much as the arithmetic. See `_torch_traced`.
"""

import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_gemma.layers.direct_calls import direct_layer_calls
from keras_gemma.models import decoding
from keras_gemma.models.gemma_causal_lm_head import logits_from_hidden_states

BACKEND = keras.config.backend()

# Loop state, a tuple (works with every backend's while loop):
STEP, SLOT, TOKEN, CACHES, OUTPUT, DONE, SEEN, PADDING_COUNTS = range(8)


def _functional_write(cache, index, update):
    return ops.slice_update(cache, (0, index, 0, 0), update)


def _torch_write(cache, index, update):
    """Writes `update` `[b, n, k, h]` into slots `index..index+n-1`, in place.

    `index` may be a tensor: no value is read in Python, so the write can be
    traced (`_torch_traced`).
    """
    import torch

    if not cache.is_contiguous():
        # Broadcast views (e.g. beams repeated from one prefill) share memory:
        # materialize once; every later write is in place.
        cache = cache.contiguous()
    slots = torch.arange(update.shape[1], device=cache.device) + index
    cache.index_copy_(1, slots, update)
    return cache


WRITE = _torch_write if BACKEND == "torch" else _functional_write


def next_logits(backbone, caches, tokens, slot, padding_counts, total_length):
    """One decode step of the model: `tokens` `[b, 1]` fed at `slot`.

    Returns `(logits [b, vocabulary] float32, caches)`, the caches holding the
    new keys and values (written in place on PyTorch).
    """
    hidden, caches = decoding.extend(backbone, caches, tokens, slot, padding_counts, WRITE, total_length)
    logits = logits_from_hidden_states(backbone, hidden, decoding=True)[:, -1, :]
    return logits, tuple(tuple(pair) for pair in caches)


class DecodeLoop:
    """Backend-neutral generation for one sampler and stop set.

    Args:
        causal_lm: the `GemmaCausalLM`.
        sampler: a `keras_gemma.samplers.Sampler`.
        stop_token_ids: tuple of ints.
        total_length: cache capacity in slots.
        capacity: length of the output buffer (max new tokens per call).
        pad_token_id: written after a row has stopped.
        forward: `next_logits` for these caches, as
            `forward(caches, tokens, slot, padding_counts)`
            (`CompiledGenerator.decode_step`).
    """

    def __init__(self, causal_lm, sampler, stop_token_ids, total_length, capacity, forward, pad_token_id=0):
        self.backbone = causal_lm.backbone
        self.forward = forward
        self.sampler = sampler
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        self.total_length = total_length
        self.capacity = capacity
        self.pad_token_id = pad_token_id

    def _is_stop(self, tokens):
        if not self.stop_token_ids:
            return ops.zeros(ops.shape(tokens), dtype="bool")
        stops = ops.convert_to_tensor(self.stop_token_ids, dtype="int32")
        return ops.any(ops.equal(tokens[:, None], stops[None, :]), axis=-1)

    def _sample(self, logits, seen, seed):
        seen = seen if self.sampler.uses_seen_tokens else None
        return ops.cast(self.sampler(logits, seed=seed, seen=seen), "int32")

    def _mark_seen(self, seen, tokens):
        if not self.sampler.uses_seen_tokens:
            return seen
        return ops.logical_or(seen, ops.one_hot(tokens, self.backbone.vocabulary_size) > 0)

    def seen_from_tokens(self, token_ids, padding_mask):
        batch, length = token_ids.shape
        if not self.sampler.uses_seen_tokens:
            return ops.zeros((batch, 1), dtype="bool")
        rows = ops.repeat(ops.arange(batch, dtype="int32"), length)
        indices = ops.stack([rows, ops.reshape(ops.cast(token_ids, "int32"), (-1,))], axis=1)
        weights = ops.reshape(ops.cast(padding_mask, "float32"), (-1,))
        counts = ops.scatter(indices, weights, (batch, self.backbone.vocabulary_size))
        return counts > 0

    def start(self, hidden, caches, slot, seen, padding_counts, seed):
        """State after the hidden states of the last fed token: samples token 1."""
        logits = logits_from_hidden_states(self.backbone, hidden[:, -1:, :], decoding=True)[:, -1, :]
        token = self._sample(logits, seen, seed(slot))
        seen = self._mark_seen(seen, token)
        output = ops.zeros((token.shape[0], self.capacity), dtype="int32")
        output = ops.slice_update(output, (0, 0), token[:, None])
        step = ops.convert_to_tensor(1, dtype="int32")
        slot = ops.convert_to_tensor(slot, dtype="int32")
        caches = tuple(tuple(pair) for pair in caches)
        return (step, slot, token, caches, output, self._is_stop(token), seen, padding_counts)

    def prefill(self, token_ids, padding_mask, seed):
        """Left-padded prompts `[b, P]` → loop state holding the first new token."""
        prompt_length = token_ids.shape[1]
        padding_mask = ops.cast(padding_mask, "int32")
        padding_counts = prompt_length - ops.sum(padding_mask, axis=1)
        hidden, caches = decoding.prefill(self.backbone, token_ids, padding_mask, self.total_length)
        seen = self.seen_from_tokens(token_ids, padding_mask)
        return self.start(hidden, caches, prompt_length, seen, padding_counts, seed)

    def step(self, state, seed):
        """Feeds the last sampled token at `slot`, samples the next one."""
        step, slot, token, caches, output, done, seen, padding_counts = state
        logits, caches = self.forward(caches, token[:, None], slot, padding_counts)
        next_token = self._sample(logits, seen, seed(slot + 1))
        next_token = ops.where(done, self.pad_token_id, next_token)
        seen = self._mark_seen(seen, next_token)
        output = ops.slice_update(output, (0, step), next_token[:, None])
        done = ops.logical_or(done, self._is_stop(next_token))
        return (step + 1, slot + 1, next_token, caches, output, done, seen, padding_counts)

    def loop(self, state, max_new_tokens, seed):
        """Steps until `max_new_tokens` are out or every row has stopped."""

        def cond(*state):
            running = ops.logical_not(ops.all(state[DONE]))
            return ops.logical_and(state[STEP] < max_new_tokens, running)

        def body(*state):
            return self.step(state, seed)

        return ops.while_loop(cond, body, state)


class CompiledGenerator:
    """Compiles and caches the generation functions of one `GemmaCausalLM`.

    `compile_count` counts compilations (JAX and TensorFlow) and decode-step
    traces (PyTorch), so tests can see that repeated calls in the same bucket
    reuse them. `eager_fallbacks` counts PyTorch decode-step shapes that run
    eagerly because their trace failed or disagreed with eager execution.
    """

    def __init__(self, causal_lm):
        self.causal_lm = causal_lm
        self._functions = {}
        self._seed_generator = None
        self.compile_count = 0
        self.eager_fallbacks = 0

    # === Seeds ===

    def _seed_fn(self, rng):
        """`slot -> seed` in the form the backend's `keras.random` takes."""
        if BACKEND == "jax":
            import jax

            return lambda slot: jax.random.fold_in(rng, slot)
        generator = self._seed_generator
        return lambda slot: generator

    def _rng(self, seed):
        value = np.random.randint(0, 2**31 - 1) if seed is None else int(seed)
        if BACKEND == "jax":
            import jax

            return jax.random.PRNGKey(value)
        if self._seed_generator is None:
            self._seed_generator = keras.random.SeedGenerator(0)
        state = self._seed_generator.state
        state.assign(ops.convert_to_tensor(np.array([value, 0]), dtype=state.dtype))
        return None

    # === Compilation ===

    def _compiled(self, name, key, function):
        """`function(*args, rng)` compiled once per `(name, key)`.

        JAX: `function` runs under a `StatelessScope` with the variables passed
        as arguments. TensorFlow: `tf.function(jit_compile=True)`. PyTorch: the
        function itself, under `inference_mode`.
        """
        cache_key = (name, key, len(self.causal_lm.variables))
        if cache_key in self._functions:
            return self._functions[cache_key]
        traced = function

        def function(*args):
            # Built layers call their sublayers' `call` directly: no
            # `Layer.__call__` bookkeeping per token (PyTorch) or per trace.
            with direct_layer_calls():
                return traced(*args)
        if BACKEND == "jax":
            import jax

            variables = self.causal_lm.variables

            def stateless(values, *args):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return function(*args)

            jitted = jax.jit(stateless)

            def compiled(*args):
                return jitted([v.value for v in variables], *args)

            self.compile_count += 1
        elif BACKEND == "tensorflow":
            import tensorflow as tf

            compiled = tf.function(function, jit_compile=True, reduce_retracing=True, autograph=False)
            self.compile_count += 1
        else:
            import torch

            def compiled(*args):
                with torch.inference_mode():
                    return function(*args)

        self._functions[cache_key] = compiled
        return compiled

    def decode_step(self, total_length):
        """`next_logits` for caches made for `total_length` tokens.

        `(caches, tokens [b, 1], slot, padding_counts) -> (logits, caches)`.
        JAX and TensorFlow get the plain function (it is traced inside their
        compiled loops); PyTorch gets it traced by `_torch_traced`.
        """
        backbone = self.causal_lm.backbone

        def forward(caches, tokens, slot, padding_counts):
            return next_logits(backbone, caches, tokens, slot, padding_counts, total_length)

        if BACKEND != "torch":
            return forward
        return self._torch_traced(("decode_step", total_length), forward)

    def _torch_traced(self, name, function):
        """`function(*tensors)` recorded with `torch.jit.trace`, once per input shape.

        A decode step is thousands of small tensor operations, and eager
        PyTorch pays Python and `keras.ops` overhead for each: on Gemma 3 270M
        (2-core CPU) 77 ms per token eagerly, 50 ms replayed by TorchScript,
        of which ~40 ms is reading the weights. The model's variables are
        inputs of the trace (`keras.StatelessScope`), so weights trained or
        assigned after tracing are used.

        A trace is only exact if `function` never reads a tensor's value in
        Python. `next_logits` does not: JAX compiles the same function with
        caches, tokens, slot and padding counts all traced, where such a read
        raises. As a check on this backend, the call after tracing (new
        inputs) runs the trace on copies of its inputs beside the eager
        function on the real ones; unless both give the same outputs, the
        shape stays eager. Anything that fails to trace also runs eagerly.
        `function` must be safe to run twice on the same inputs: tracing runs
        it once, then it runs eagerly (a decode step rewrites the same cache
        slot with the same values).
        """
        import torch

        variables = self.causal_lm.variables

        def values():
            return tuple(variable.value.detach() for variable in variables)

        def stateless(values, *args):
            scope = keras.StatelessScope()
            # `add_update`, not `state_mapping=`: its shape checks would be
            # recorded as reads of traced sizes.
            for variable, value in zip(variables, values):
                scope.add_update((variable, value))
            with scope, direct_layer_calls():
                return function(*args)

        def eager(*args):
            with direct_layer_calls():
                return function(*args)

        def trace(key, args):
            try:
                with warnings.catch_warnings():
                    # Deprecated in favour of torch.compile, whose first call
                    # takes 30 s (backend "eager") to 100 s (inductor) here
                    # and whose steps are slower (56 and 67 ms).
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced = torch.jit.trace(stateless, (values(), *args), check_trace=False)
            except Exception:  # noqa: BLE001 - whatever the reason, eager is exact.
                self.eager_fallbacks += 1
                return eager
            self.compile_count += 1

            def replay(*args):
                # The profiling executor's optimizations do not speed this
                # graph up and cost ~1 s over its first calls.
                with torch.jit.optimized_execution(False):
                    return traced(values(), *args)

            def first_replay(*args):
                copies = tree.map_structure(torch.clone, args)
                expected = eager(*args)
                try:
                    result = replay(*copies)
                    same = all(
                        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                        for a, b in zip(tree.flatten(expected), tree.flatten(result))
                    )
                except Exception:  # noqa: BLE001
                    same = False
                self._functions[key] = replay if same else eager
                self.eager_fallbacks += 0 if same else 1
                return expected

            return first_replay

        def call(*args):
            args = tree.map_structure(lambda tensor: tensor.contiguous(), args)
            key = (name, len(variables), tuple((tuple(t.shape), t.dtype) for t in tree.flatten(args)))
            if key not in self._functions:
                self._functions[key] = trace(key, args)
                # Checked on the next call: its inputs differ from the
                # trace's, so a value frozen into the trace would show.
                return eager(*args)
            return self._functions[key](*args)

        return call

    def _loop(self, sampler, stop_token_ids, total_length, capacity, pad_token_id):
        return DecodeLoop(
            self.causal_lm,
            sampler,
            stop_token_ids,
            total_length,
            capacity,
            self.decode_step(total_length),
            pad_token_id,
        )

    # === Entry points ===

    def generate(self, token_ids, padding_mask, max_new_tokens, total_length, sampler, stop_token_ids, seed=None, pad_token_id=0):
        """Left-padded prompts `[b, P]` → `(new tokens [b, capacity], count)`."""
        capacity = total_length - token_ids.shape[1] + 1
        loop = self._loop(sampler, stop_token_ids, total_length, capacity, pad_token_id)
        rng = self._rng(seed)
        key = (token_ids.shape, total_length, sampler.cache_key(), loop.stop_token_ids, pad_token_id)

        def run(token_ids, padding_mask, max_new_tokens, rng):
            seed_fn = self._seed_fn(rng)
            state = loop.prefill(token_ids, padding_mask, seed_fn)
            state = loop.loop(state, max_new_tokens, seed_fn)
            return state[OUTPUT], state[STEP]

        function = self._compiled("generate", key, run)
        output, steps = function(
            _tensor(token_ids), _tensor(padding_mask), _tensor(np.int32(max_new_tokens)), rng
        )
        return ops.convert_to_numpy(output), int(ops.convert_to_numpy(steps))

    def stream(self, token_ids, padding_mask, max_new_tokens, total_length, sampler, stop_token_ids, seed=None, pad_token_id=0):
        """Yields each step's new tokens `[b]` as NumPy, as soon as they exist."""
        capacity = total_length - token_ids.shape[1] + 1
        loop = self._loop(sampler, stop_token_ids, total_length, capacity, pad_token_id)
        rng = self._rng(seed)
        key = (token_ids.shape, total_length, sampler.cache_key(), loop.stop_token_ids, pad_token_id)

        def prefill(token_ids, padding_mask, rng):
            return loop.prefill(token_ids, padding_mask, self._seed_fn(rng))

        def step(state, rng):
            return loop.step(state, self._seed_fn(rng))

        prefill_function = self._compiled("stream_prefill", key, prefill)
        step_function = self._compiled("stream_step", key, step)
        state = prefill_function(_tensor(token_ids), _tensor(padding_mask), rng)
        yield from self._step_tokens(state, step_function, max_new_tokens, rng)

    def _step_tokens(self, state, step_function, max_new_tokens, rng):
        """Yields each step's tokens `[b]`; returns the last state."""
        for _ in range(max_new_tokens):
            yield ops.convert_to_numpy(state[TOKEN])
            if ops.convert_to_numpy(state[DONE]).all() or int(ops.convert_to_numpy(state[STEP])) >= max_new_tokens:
                break
            state = step_function(state, rng)
        return state

    # === Chat: caches kept across calls ===

    def chat_prefill(self, token_ids, total_length):
        """Runs a first turn `[1, n]` (no padding); returns `(hidden_last, caches)`."""
        length = token_ids.shape[1]

        def run(token_ids):
            mask = ops.ones_like(token_ids)
            hidden, caches = decoding.prefill(self.causal_lm.backbone, token_ids, mask, total_length)
            return hidden[:, -1:, :], tuple(tuple(pair) for pair in caches)

        return self._compiled("chat_prefill", (length, total_length), run)(_tensor(token_ids))

    def chat_extend(self, caches, token_ids, slot, total_length):
        """Feeds `[1, n]` tokens at `slot` on top of `caches`.

        The turn is fed in chunks whose lengths are powers of two, so every
        turn length reuses at most `log2(n)` compiled shapes.
        """
        hidden = None
        position = 0
        length = token_ids.shape[1]
        padding_counts = np.zeros((token_ids.shape[0],), dtype="int32")
        while position < length:
            chunk = 1 << ((length - position).bit_length() - 1)

            def run(caches, chunk_ids, slot, padding_counts):
                hidden, new_caches = decoding.extend(
                    self.causal_lm.backbone, caches, chunk_ids, slot, padding_counts, WRITE, total_length
                )
                return hidden[:, -1:, :], tuple(tuple(pair) for pair in new_caches)

            function = self._compiled("chat_extend", (chunk, total_length), run)
            chunk_ids = token_ids[:, position : position + chunk]
            hidden, caches = function(
                caches, _tensor(chunk_ids), _tensor(np.int32(slot + position)), _tensor(padding_counts)
            )
            position += chunk
        return hidden, caches

    def chat_decode(self, hidden, caches, slot, max_new_tokens, total_length, sampler, stop_token_ids, seed=None, pad_token_id=0, stream=False):
        """Samples a reply after `hidden` (the last fed token at `slot - 1`).

        Returns `(tokens [1, capacity], count, caches)`, or with `stream=True`
        yields each token `[1]` and finally the tuple.
        """
        capacity = max_new_tokens
        loop = self._loop(sampler, stop_token_ids, total_length, capacity, pad_token_id)
        rng = self._rng(seed)
        key = (total_length, capacity, sampler.cache_key(), loop.stop_token_ids, pad_token_id)
        padding_counts = np.zeros((1,), dtype="int32")

        def start(hidden, caches, slot, padding_counts, rng):
            seen = ops.zeros((1, 1), dtype="bool")
            if sampler.uses_seen_tokens:
                seen = ops.zeros((1, self.causal_lm.backbone.vocabulary_size), dtype="bool")
            return loop.start(hidden, caches, slot, seen, padding_counts, self._seed_fn(rng))

        def run(state, max_new_tokens, rng):
            return loop.loop(state, max_new_tokens, self._seed_fn(rng))

        def step(state, rng):
            return loop.step(state, self._seed_fn(rng))

        start_function = self._compiled("chat_start", key, start)
        state = start_function(hidden, caches, _tensor(np.int32(slot)), _tensor(padding_counts), rng)
        if not stream:
            state = self._compiled("chat_loop", key, run)(state, _tensor(np.int32(max_new_tokens)), rng)
            return ops.convert_to_numpy(state[OUTPUT]), int(ops.convert_to_numpy(state[STEP])), state[CACHES]
        return self._chat_stream(state, self._compiled("chat_step", key, step), max_new_tokens, rng)

    def _chat_stream(self, state, step_function, max_new_tokens, rng):
        state = yield from self._step_tokens(state, step_function, max_new_tokens, rng)
        yield ops.convert_to_numpy(state[OUTPUT]), int(ops.convert_to_numpy(state[STEP])), state[CACHES]


def _tensor(value):
    if BACKEND == "jax":
        return value  # jit converts NumPy arguments itself.
    return ops.convert_to_tensor(value)
