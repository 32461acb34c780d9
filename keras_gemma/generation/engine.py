"""The compiled generation programs: the one module that branches on the backend.

The decoding math is backend-neutral (`decoding.py`, `decode_loop.py`, written
with `keras.ops`, `ops.while_loop` included). What differs per backend is how
it is compiled and how a cache slot is written:

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

from keras_gemma.generation import decoding
from keras_gemma.generation.decode_loop import DecodeLoop
from keras_gemma.generation.kv_cache import functional_write

BACKEND = keras.config.backend()


def _torch_write(buffer, index, update):
    """Writes `update` `[b, n, k, h]` into entries `index..index+n-1`, in place.

    `index` may be a tensor: no value is read in Python, so the write can be
    traced (`_torch_traced`).
    """
    import torch

    if not buffer.is_contiguous():
        # Broadcast views (e.g. beams repeated from one prefill) share memory:
        # materialize once; every later write is in place.
        buffer = buffer.contiguous()
    slots = torch.arange(update.shape[1], device=buffer.device) + index
    buffer.index_copy_(1, slots, update)
    return buffer


# How a cache entry is written on this backend (`KVCache.write`).
WRITE = _torch_write if BACKEND == "torch" else functional_write


def as_tensor(value):
    """`value` (NumPy) as an argument of the compiled functions."""
    if BACKEND == "jax":
        return value  # jit converts NumPy arguments itself.
    return ops.convert_to_tensor(value)


class CompiledGenerator:
    """Compiles and caches the generation functions of one `GemmaCausalLM`.

    `compile_count` counts compilations (JAX and TensorFlow) and decode-step
    traces (PyTorch), so tests can see that repeated calls in the same bucket
    reuse them. `eager_fallbacks` counts PyTorch decode-step shapes that run
    eagerly because their trace failed or disagreed with eager execution.

    Args:
        causal_lm: the model: `causal_lm.backbone` and `causal_lm.variables`
            are used.
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

    def compiled(self, name, key, function):
        """`function(*args)` compiled once per `(name, key)`.

        JAX: `function` runs under a `StatelessScope` with the variables passed
        as arguments. TensorFlow: `tf.function(jit_compile=True)`. PyTorch: the
        function itself, under `inference_mode`.
        """
        cache_key = (name, key, len(self.causal_lm.variables))
        if cache_key in self._functions:
            return self._functions[cache_key]
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

            compiled = tf.function(
                function, jit_compile=True, reduce_retracing=True, autograph=False
            )
            self.compile_count += 1
        else:
            import torch

            def compiled(*args):
                with torch.inference_mode():
                    return function(*args)

        self._functions[cache_key] = compiled
        return compiled

    def decode_step(self, total_length):
        """`decoding.next_logits` for caches made for `total_length` tokens.

        `(caches, tokens [b, 1], slot, padding_counts) -> (logits, caches)`.
        JAX and TensorFlow get the plain function (it is traced inside their
        compiled loops); PyTorch gets it traced by `_torch_traced`.
        """
        backbone = self.causal_lm.backbone

        def forward(caches, tokens, slot, padding_counts):
            return decoding.next_logits(backbone, caches, tokens, slot, padding_counts, WRITE)

        if BACKEND != "torch":
            return forward
        return self._torch_traced(("decode_step", total_length), forward)

    def _torch_traced(self, name, function):
        """`function(*args)` recorded with `torch.jit.trace`, once per input shape.

        A decode step is thousands of small tensor operations, and eager
        PyTorch pays Python and `keras.ops` overhead for each: on Gemma 3 270M
        (2-core CPU) 77 ms per token eagerly, 50 ms replayed by TorchScript,
        of which ~40 ms is reading the weights. The model's variables are
        inputs of the trace (`keras.StatelessScope`), so weights trained or
        assigned after tracing are used. Arguments and results may be nested
        structures (`KVCache`s): the trace sees them flattened to tensors.

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

        def trace(key, args):
            results = []  # The structure of the results, seen while tracing.

            def stateless(values, *flat_args):
                scope = keras.StatelessScope()
                # `add_update`, not `state_mapping=`: its shape checks would be
                # recorded as reads of traced sizes.
                for variable, value in zip(variables, values):
                    scope.add_update((variable, value))
                with scope:
                    result = function(*tree.pack_sequence_as(args, flat_args))
                results.append(tree.map_structure(lambda _: 0, result))
                return tuple(tree.flatten(result))

            try:
                with warnings.catch_warnings():
                    # Deprecated in favour of torch.compile, whose first call
                    # takes 30 s (backend "eager") to 100 s (inductor) here
                    # and whose steps are slower (56 and 67 ms).
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    flat_args = tuple(tree.flatten(args))
                    traced = torch.jit.trace(stateless, (values(), *flat_args), check_trace=False)
            except Exception:  # noqa: BLE001 - whatever the reason, eager is exact.
                self.eager_fallbacks += 1
                return function
            self.compile_count += 1
            structure = results[0]

            def replay(*args):
                # The profiling executor's optimizations do not speed this
                # graph up and cost ~1 s over its first calls.
                with torch.jit.optimized_execution(False):
                    flat = traced(values(), *tree.flatten(args))
                return tree.pack_sequence_as(structure, flat)

            def first_replay(*args):
                copies = tree.map_structure(torch.clone, args)
                expected = function(*args)
                try:
                    result = replay(*copies)
                    same = all(
                        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                        for a, b in zip(tree.flatten(expected), tree.flatten(result))
                    )
                except Exception:  # noqa: BLE001
                    same = False
                self._functions[key] = replay if same else function
                self.eager_fallbacks += 0 if same else 1
                return expected

            return first_replay

        def call(*args):
            args = tree.map_structure(lambda tensor: tensor.contiguous(), args)
            shapes = tuple((tuple(t.shape), t.dtype) for t in tree.flatten(args))
            key = (name, len(variables), shapes)
            if key not in self._functions:
                self._functions[key] = trace(key, args)
                # Checked on the next call: its inputs differ from the
                # trace's, so a value frozen into the trace would show.
                return function(*args)
            return self._functions[key](*args)

        return call

    def _loop(self, sampler, stop_token_ids, total_length, capacity, pad_token_id):
        forward = self.decode_step(total_length)
        backbone = self.causal_lm.backbone
        return DecodeLoop(
            backbone, sampler, stop_token_ids, total_length, capacity, forward, pad_token_id
        )

    # === Entry points ===

    def _prompt_loop(self, token_ids, total_length, sampler, stop_token_ids, pad_token_id):
        """`(loop, key)` for left-padded prompts `[b, P]`: output room for every new token."""
        capacity = total_length - token_ids.shape[1] + 1
        loop = self._loop(sampler, stop_token_ids, total_length, capacity, pad_token_id)
        key = (token_ids.shape, total_length, sampler.cache_key(), loop.stop_token_ids)
        return loop, key + (pad_token_id,)

    def generate(
        self,
        token_ids,
        padding_mask,
        max_new_tokens,
        total_length,
        sampler,
        stop_token_ids,
        seed=None,
        pad_token_id=0,
    ):
        """Left-padded prompts `[b, P]` -> `(new tokens [b, capacity], count)`."""
        loop, key = self._prompt_loop(
            token_ids, total_length, sampler, stop_token_ids, pad_token_id
        )
        rng = self._rng(seed)

        def run(token_ids, padding_mask, max_new_tokens, rng):
            seed_fn = self._seed_fn(rng)
            state = loop.prefill(token_ids, padding_mask, seed_fn)
            state = loop.loop(state, max_new_tokens, seed_fn)
            return state.output, state.step

        function = self.compiled("generate", key, run)
        output, steps = function(
            as_tensor(token_ids), as_tensor(padding_mask), as_tensor(np.int32(max_new_tokens)), rng
        )
        return ops.convert_to_numpy(output), int(ops.convert_to_numpy(steps))

    def stream(
        self,
        token_ids,
        padding_mask,
        max_new_tokens,
        total_length,
        sampler,
        stop_token_ids,
        seed=None,
        pad_token_id=0,
    ):
        """Yields each step's new tokens `[b]` as NumPy, as soon as they exist."""
        loop, key = self._prompt_loop(
            token_ids, total_length, sampler, stop_token_ids, pad_token_id
        )
        rng = self._rng(seed)

        def prefill(token_ids, padding_mask, rng):
            return loop.prefill(token_ids, padding_mask, self._seed_fn(rng))

        def step(state, rng):
            return loop.step(state, self._seed_fn(rng))

        prefill_function = self.compiled("stream_prefill", key, prefill)
        step_function = self.compiled("stream_step", key, step)
        state = prefill_function(as_tensor(token_ids), as_tensor(padding_mask), rng)
        yield from self._step_tokens(state, step_function, max_new_tokens, rng)

    def _step_tokens(self, state, step_function, max_new_tokens, rng):
        """Yields each step's tokens `[b]`; returns the last state."""
        for _ in range(max_new_tokens):
            yield ops.convert_to_numpy(state.token)
            finished = ops.convert_to_numpy(state.done).all()
            if finished or int(ops.convert_to_numpy(state.step)) >= max_new_tokens:
                break
            state = step_function(state, rng)
        return state

    # === Chat: caches kept across calls ===

    def chat_prefill(self, token_ids, total_length):
        """Runs a first turn `[1, n]` (no padding); returns `(hidden_last, caches)`."""
        length = token_ids.shape[1]

        def run(token_ids):
            mask = ops.ones_like(token_ids)
            hidden, caches = decoding.prefill(
                self.causal_lm.backbone, token_ids, mask, total_length
            )
            return hidden[:, -1:, :], tuple(caches)

        return self.compiled("chat_prefill", (length, total_length), run)(as_tensor(token_ids))

    def chat_extend(self, caches, token_ids, slot, total_length):
        """Feeds `[1, n]` tokens at `slot` on top of `caches`.

        The turn is fed in chunks whose lengths are powers of two, so every
        turn length reuses at most `log2(n)` compiled shapes.
        """
        hidden = None
        position = 0
        length = token_ids.shape[1]
        padding_counts = np.zeros((token_ids.shape[0],), dtype="int32")
        backbone = self.causal_lm.backbone

        def run(caches, chunk_ids, slot, padding_counts):
            hidden, new_caches = decoding.extend(
                backbone, caches, chunk_ids, slot, padding_counts, WRITE
            )
            return hidden[:, -1:, :], tuple(new_caches)

        while position < length:
            chunk = 1 << ((length - position).bit_length() - 1)
            function = self.compiled("chat_extend", (chunk, total_length), run)
            chunk_ids = token_ids[:, position : position + chunk]
            hidden, caches = function(
                caches,
                as_tensor(chunk_ids),
                as_tensor(np.int32(slot + position)),
                as_tensor(padding_counts),
            )
            position += chunk
        return hidden, caches

    def chat_decode(
        self,
        hidden,
        caches,
        slot,
        max_new_tokens,
        total_length,
        sampler,
        stop_token_ids,
        seed=None,
        pad_token_id=0,
        stream=False,
    ):
        """Samples a reply after `hidden` (the last fed token at `slot - 1`).

        Returns `(tokens [1, capacity], count, caches)`, or with `stream=True`
        yields each token `[1]` and finally that tuple.
        """
        capacity = max_new_tokens
        loop = self._loop(sampler, stop_token_ids, total_length, capacity, pad_token_id)
        rng = self._rng(seed)
        key = (total_length, capacity, sampler.cache_key(), loop.stop_token_ids, pad_token_id)
        padding_counts = np.zeros((1,), dtype="int32")

        def start(hidden, caches, slot, padding_counts, rng):
            seen = loop.empty_seen(1)
            return loop.start(hidden, caches, slot, seen, padding_counts, self._seed_fn(rng))

        def run(state, max_new_tokens, rng):
            return loop.loop(state, max_new_tokens, self._seed_fn(rng))

        def step(state, rng):
            return loop.step(state, self._seed_fn(rng))

        start_function = self.compiled("chat_start", key, start)
        state = start_function(
            hidden, caches, as_tensor(np.int32(slot)), as_tensor(padding_counts), rng
        )
        if not stream:
            run_function = self.compiled("chat_loop", key, run)
            state = run_function(state, as_tensor(np.int32(max_new_tokens)), rng)
            return _reply(state)
        return self._chat_stream(state, self.compiled("chat_step", key, step), max_new_tokens, rng)

    def _chat_stream(self, state, step_function, max_new_tokens, rng):
        state = yield from self._step_tokens(state, step_function, max_new_tokens, rng)
        yield _reply(state)


def _reply(state):
    """`(tokens [b, capacity], count, caches)` of a finished chat reply."""
    output = ops.convert_to_numpy(state.output)
    return output, int(ops.convert_to_numpy(state.step)), state.caches
