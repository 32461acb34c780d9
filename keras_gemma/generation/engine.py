"""The compiled generation programs: the one module that branches on the backend.

Two programs serve all of `generate`, streaming and chat (beam search keeps
its own): `prefill`, one chunk of `PREFILL_CHUNKS` tokens per row at per-row
slots, and `decode`, up to `DECODE_STEPS` steps with sampling and stop
detection inside (`decode_loop.py`). Their arguments' shapes come from a few
buckets (rows in powers of two, cache capacity in `CAPACITIES`), and every
setting is a tensor, so after the first call of a bucket nothing compiles
again: not for a new prompt length, sampler setting or chat turn.

- JAX: each program is one `jax.jit` function taking the model's variables
  as arguments (`keras.StatelessScope`), caches donated so XLA updates them
  in place. The persistent compilation cache is on (`enable_compile_cache`),
  so a new process loads the programs instead of compiling them.
- TensorFlow: the same functions under `tf.function(jit_compile=True)`.
- PyTorch: the model's part of each program (a decode step, a prefill
  chunk: thousands of tensor ops) is recorded once per shape with
  `torch.jit.trace`, variables passed as inputs, and replayed by
  TorchScript's C++ interpreter; the decode loop and sampling (a few dozen
  ops per token) run in Python under `torch.inference_mode()`, caches written
  in place (`index_put_`).
"""

import os
import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_gemma._backend import cache_root
from keras_gemma.generation import decode_loop
from keras_gemma.generation import decoding
from keras_gemma.generation import kernels
from keras_gemma.generation.kv_cache import KVCache
from keras_gemma.generation.kv_cache import functional_write

BACKEND = keras.config.backend()

# Prefill chunk lengths: long prompts go in large chunks, the rest in small ones.
PREFILL_CHUNKS = (32, 256)
# Tokens a decode call may produce per row before returning to Python.
DECODE_STEPS = 32
# Cache capacities (slots per row); a longer conversation moves up once.
CAPACITIES = (2048, 8192, 32768, 131072)
# Decode programs whose attention reads only a cache's first `span` entries, used
# while every active row sits below the span (`span_for`); each capacity also has
# one that reads all of them. Short sequences then do not pay for the capacity:
# 270M, 8 rows, 2,048 slots: 132 against 173 ms a step (JAX, 2-core CPU).
DECODE_SPANS = (256, 2048)
# Set to "0" to keep JAX's persistent compilation cache off.
COMPILE_CACHE_VARIABLE = "KERAS_GEMMA_COMPILE_CACHE"


def _torch_write(buffer, rows, entries, update):
    """Stores `update[r, i]` at `(rows[r, i], entries[r, i])` of `buffer`, in place."""
    flat = (rows.reshape(-1), entries.reshape(-1))
    buffer.index_put_(flat, update.reshape((-1,) + tuple(update.shape[2:])).to(buffer.dtype))
    return buffer


# How cache entries are written on this backend (`KVCache.write`).
WRITE = _torch_write if BACKEND == "torch" else functional_write


def as_tensor(value):
    """`value` (NumPy) as an argument of the compiled functions."""
    if BACKEND == "jax":
        return value  # jit converts NumPy arguments itself.
    return ops.convert_to_tensor(value)


def enable_compile_cache():
    """Turns on JAX's persistent compilation cache under the package cache directory.

    Off when `KERAS_GEMMA_COMPILE_CACHE=0`, and left alone when the user has
    set a cache directory already. Returns the directory in use, or None.
    """
    if BACKEND != "jax" or os.environ.get(COMPILE_CACHE_VARIABLE, "1") == "0":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = os.path.join(cache_root(), "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def chunk_plan(count):
    """Chunk lengths that cover `count` tokens with less than one chunk of padding."""
    small, large = PREFILL_CHUNKS
    plan = []
    while count > 0:
        chunk = large if count > 4 * small else small
        plan.append(chunk)
        count -= chunk
    return plan


def capacity_for(length):
    """The smallest capacity bucket holding `length` slots."""
    for capacity in CAPACITIES:
        if length <= capacity:
            return capacity
    raise ValueError(
        f"A sequence of {length} tokens is longer than the largest cache ({CAPACITIES[-1]})."
    )


def spans_for(capacity):
    """The decode spans of a capacity: `DECODE_SPANS` below it, then None (all entries)."""
    return tuple(span for span in DECODE_SPANS if span < capacity) + (None,)


def span_for(capacity, slot):
    """The smallest decode span of `capacity` whose queries may sit at `slot`."""
    return next((span for span in spans_for(capacity)[:-1] if slot <= span), None)


def rows_for(count):
    """Rows of the batch that holds `count` sequences: the next power of two."""
    return 1 << max(count - 1, 0).bit_length()


class CompiledGenerator:
    """Compiles and caches the generation programs of one `GemmaCausalLM`.

    `compile_count` counts compiled programs: JAX executables and TensorFlow
    traces of our functions, PyTorch traces of the model's steps, so tests
    can see that new prompt lengths and settings compile nothing.
    `eager_fallbacks` counts PyTorch shapes that run eagerly because their
    trace failed or disagreed with eager execution.

    Args:
        causal_lm: the model: `causal_lm.backbone` and `causal_lm.variables`
            are used.
    """

    def __init__(self, causal_lm):
        self.causal_lm = causal_lm
        self._functions = {}
        self._torch_traces = 0
        self.eager_fallbacks = 0
        self._warm = set()
        enable_compile_cache()

    @property
    def compile_count(self):
        if BACKEND == "jax":
            return sum(f.jitted._cache_size() for f in self._functions.values() if _jitted(f))
        if BACKEND == "tensorflow":
            functions = self._functions.values()
            return sum(f.experimental_get_tracing_count() for f in functions if _traced_tf(f))
        return self._torch_traces

    # === Compilation ===

    def compiled(self, name, key, function, donate=()):
        """`function(*args)` compiled once per `(name, key)`.

        JAX: `function` runs under a `StatelessScope` with the variables passed
        as arguments; `donate` names the positions of arguments whose buffers
        the program may reuse. TensorFlow: `tf.function(jit_compile=True)`.
        PyTorch: the function itself, under `inference_mode`.
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

            jitted = jax.jit(stateless, donate_argnums=tuple(i + 1 for i in donate))

            def compiled(*args):
                return jitted([v.value for v in variables], *args)

            compiled.jitted = jitted
        elif BACKEND == "tensorflow":
            import tensorflow as tf

            compiled = tf.function(function, jit_compile=True, autograph=False)
        else:
            import torch

            def compiled(*args):
                with torch.inference_mode():
                    return function(*args)

        self._functions[cache_key] = compiled
        return compiled

    def step_logits(self, span=None):
        """`(caches, tokens [R], positions [R], active [R]) -> (logits, caches)`.

        Reads the caches' first `span` entries only (`decoding.feed`). JAX
        and TensorFlow get the plain function (it is traced inside their
        compiled loops); PyTorch gets it traced by `_torch_traced`.
        """
        backbone = self.causal_lm.backbone

        def forward(caches, tokens, positions, active):
            return decoding.next_logits(
                backbone, caches, tokens, positions, active, WRITE, span=span
            )

        if BACKEND != "torch":
            return forward
        return self._torch_traced(f"decode_step_{span}", forward)

    def _feed(self, name):
        backbone = self.causal_lm.backbone

        def feed(caches, token_ids, starts, counts, *row_ids):
            return decoding.feed(backbone, caches, token_ids, starts, counts, WRITE, *row_ids)[1]

        if BACKEND != "torch":
            return feed
        return self._torch_traced(name, feed)

    # === The two programs ===

    def prefill(self, caches, seen, token_ids, starts, counts, reset, row_ids=None):
        """Feeds a chunk `[k, C]` (NumPy) at `starts` `[k]`; returns `(caches, seen)`.

        `row_ids` `[k]` (distinct) names the batch rows the chunk's rows go to
        when it covers fewer than all (`decode_loop.prefill`); its own program.
        """
        name = "prefill" if row_ids is None else "prefill_rows"
        feed = self._feed(name)

        def run(caches, seen, token_ids, starts, counts, reset, *row_ids):
            return decode_loop.prefill(
                feed, caches, seen, token_ids, starts, counts, reset, *row_ids
            )

        function = self.compiled(name, (), run, donate=(0, 1))
        arguments = (token_ids, starts, counts, reset) + (() if row_ids is None else (row_ids,))
        return function(caches, seen, *(as_tensor(a) for a in arguments))

    def decode(self, caches, seen, rows, limit, pad_token_id=0, custom_filter=None, span=None):
        """Up to `min(DECODE_STEPS, limit)` steps; see `decode_loop.decode`.

        `rows` is a `decode_loop.Rows` of NumPy arrays. `span` (one of
        `spans_for(capacity)`): every active row's slots in these steps are
        `<= span`; a program of its own. Returns `(caches, seen, rows, tokens,
        count)` with `rows`, `tokens` `[R, DECODE_STEPS]` and `count` as NumPy.
        """
        step_logits = self.step_logits(span)
        rows = tree.map_structure(as_tensor, rows)
        limit = as_tensor(np.int32(limit))
        if BACKEND == "torch":
            result = self._torch_decode(
                step_logits, caches, seen, rows, limit, pad_token_id, custom_filter
            )
        else:

            def run(caches, seen, rows, limit):
                return decode_loop.decode(
                    step_logits,
                    caches,
                    seen,
                    rows,
                    limit,
                    DECODE_STEPS,
                    pad_token_id,
                    custom_filter,
                )

            key = (pad_token_id, None if custom_filter is None else id(custom_filter), span)
            function = self.compiled("decode", key, run, donate=(0, 1))
            result = function(caches, seen, rows, limit)
        caches, seen, rows, tokens, count = result
        rows = tree.map_structure(ops.convert_to_numpy, rows)
        return caches, seen, rows, ops.convert_to_numpy(tokens), int(ops.convert_to_numpy(count))

    def _torch_decode(self, step_logits, caches, seen, rows, limit, pad_token_id, custom_filter):
        """`decode_loop.decode` as a Python loop around the traced model step."""
        import torch

        with torch.inference_mode():
            count = min(int(limit), DECODE_STEPS)
            tokens = torch.full((rows.token.shape[0], DECODE_STEPS), -1, dtype=torch.int32)
            steps = 0
            while steps < count and bool(rows.active.any()):
                caches, seen, rows, new = decode_loop.decode_step(
                    step_logits, caches, seen, rows, pad_token_id, custom_filter
                )
                tokens[:, steps] = new
                steps += 1
        return caches, seen, rows, tokens, np.int32(steps)

    def warm(self, make_batch, rows, capacity, joining=False):
        """Runs every program of the `(rows, capacity)` bucket once, so none compiles later.

        Every decode span of the capacity (`spans_for`) is a program of its own.

        `make_batch(rows, capacity)` gives an empty `DecodeBatch`; its rows are
        inactive, so nothing is written but the trash entries. `joining` also
        warms the prefill of fewer rows (powers of two) into the batch, which
        a server runs when requests join rows that are decoding.
        """
        key = (rows, capacity, len(self.causal_lm.variables), joining)
        if key in self._warm:
            return
        batch = make_batch(rows, capacity)
        widths = [rows] + ([1 << i for i in range(rows.bit_length() - 1)] if joining else [])
        for _ in range(2 if BACKEND == "torch" else 1):  # PyTorch checks a trace on call 2.
            for width in widths:
                row_ids = None if width == rows else np.arange(width, dtype="int32")
                for chunk in PREFILL_CHUNKS:
                    empty = np.zeros((width,), "int32")
                    batch.feed_chunk(
                        np.zeros((width, chunk), "int32"), empty, empty, row_ids=row_ids
                    )
            for span in spans_for(capacity):
                if BACKEND == "torch":  # Its loop runs no step for inactive rows.
                    import torch

                    state = (batch.rows.token, batch.rows.position, batch.rows.active)
                    with torch.inference_mode():
                        self.step_logits(span)(batch.caches, *(as_tensor(a) for a in state))
                else:
                    batch.run(limit=1, span=span)
        self._warm.add(key)

    # === PyTorch traces ===

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
        Python. The model's steps do not: JAX compiles the same functions
        with every argument traced, where such a read raises. As a check on
        this backend, the call after tracing (new inputs) runs the trace on
        copies of its inputs beside the eager function on the real ones;
        unless both give the same outputs, the shape stays eager. Anything
        that fails to trace also runs eagerly. `function` must be safe to run
        twice on the same inputs: tracing runs it once, then it runs eagerly
        (a step rewrites the same cache entries with the same values).
        """
        import torch

        variables = self.causal_lm.variables
        # Packed quantized weights are constants of a trace: a repack (new
        # quantization, assigned weights) makes new traces. Checked once per
        # program call (a decode call, a prefill chunk), not per step.
        packing = kernels.prepare(self.causal_lm.backbone)

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
            self._torch_traces += 1
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
                    same = same_outputs(expected, replay(*copies))
                except Exception:  # noqa: BLE001
                    same = False
                self._functions[key] = replay if same else function
                self.eager_fallbacks += 0 if same else 1
                return expected

            return first_replay

        def call(*args):
            args = tree.map_structure(lambda tensor: tensor.contiguous(), args)
            shapes = tuple((tuple(t.shape), t.dtype) for t in tree.flatten(args))
            key = (name, len(variables), shapes, packing)
            if key not in self._functions:
                self._functions[key] = trace(key, args)
                # Checked on the next call: its inputs differ from the
                # trace's, so a value frozen into the trace would show.
                return function(*args)
            return self._functions[key](*args)

        return call


def without_trash(structure):
    """`structure` with each cache's trash entry dropped (`kv_cache`: it holds any value).

    Writes that must not land all go to the trash entry, several per call, so
    its final value depends on the order of the writes, which differs between
    eager PyTorch and a trace of the same function.
    """
    if isinstance(structure, KVCache):
        return structure.map(lambda tensor: tensor[:, :-1])
    if isinstance(structure, (list, tuple)) and not hasattr(structure, "_fields"):
        return type(structure)(without_trash(item) for item in structure)
    if isinstance(structure, tuple):  # Other NamedTuples (`DecodeState`, rows).
        return type(structure)(*(without_trash(item) for item in structure))
    if isinstance(structure, dict):
        return {key: without_trash(value) for key, value in structure.items()}
    return structure


def same_outputs(expected, result):
    """Whether a trace's outputs equal the eager function's (trash entries aside)."""
    import torch

    expected, result = tree.flatten(without_trash(expected)), tree.flatten(without_trash(result))
    return len(expected) == len(result) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(expected, result)
    )


def _jitted(function):
    return hasattr(function, "jitted")


def _traced_tf(function):
    return hasattr(function, "experimental_get_tracing_count")
