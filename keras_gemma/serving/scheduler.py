"""Continuous batching: one thread owns `DecodeBatch`es and admits requests into free rows.

The HTTP side (`app.py`, on an asyncio loop) hands a `Job` to
`Scheduler.submit`, a thread-safe queue. The scheduler thread loops: it drops
cancelled jobs (their clients went away), admits waiting jobs into free rows
(`DecodeBatch.admit` prefills them while the other rows keep their state),
runs every active row a few steps (`DecodeBatch.run(limit=steps)`), and turns
each row's new tokens into text pieces (`IncrementalDetokenizer`), checking
stop tokens, stop strings and the token budget. A finished job frees its row
at once, so a request that arrives while others decode joins at the next step
boundary; more requests than rows wait in the queue.

A batch's programs cost the same whatever number of its rows is active, so
the scheduler keeps one batch per size in `sizes` (powers of two up to
`max_batch`'s, each compiled at start): a request goes into the largest
running batch with a free row; else, when nothing runs, into the smallest
batch that holds both the requests waiting with it and the most requests
that ran at once in the last `RECENT` seconds, and when something runs, into
the largest idle batch (later requests join it, so at most two sizes decode
side by side while the first drains). One client decodes in a 1-row batch;
busy clients share one batch; each step runs every non-empty batch. The
recent peak matters when a batch of clients all finish together and come
back a few milliseconds apart: without it the first few started a small
batch and the rest a second one, and both decoded side by side for the whole
round (measured on the 270M, JAX, 8 clients arriving over 30 ms: 36.8
tokens/s without it, 43.2 with it, 53.3 when they arrive together).

Events go back to the job's asyncio loop with `call_soon_threadsafe`:
`("text", piece)` as text is decoded, then `("done", finish_reason)` or
`("error", message)`.
"""

import asyncio
import collections
import queue
import threading
import time

from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.generation.detokenizer import IncrementalDetokenizer
from keras_gemma.generation.engine import capacity_for
from keras_gemma.generation.engine import rows_for
from keras_gemma.generation.prompts import tokenizer_of
from keras_gemma.generation.stopping import resolve_stop_token_ids

PAD_TOKEN_ID = 0
# Decode steps per `run` call: a new request waits at most this many steps.
STEPS = 4
# How often an idle scheduler looks at its stop flag (seconds).
IDLE_POLL = 0.1
# How long a quiet server waits after a first request for others of the same burst (seconds),
# so that they share one batch instead of the first decoding alone in a 1-row batch.
GATHER = 0.01
# How long the most requests that ran at once sizes the batch a quiet server starts (seconds).
RECENT = 2.0


class Job:
    """One request: what to generate, and the events that come back.

    Args:
        prompt: list of token ids (start token included).
        max_tokens: int >= 1, new tokens at most.
        settings: sampler settings dict (`resolve_settings`).
        seed: int.
        stop: tuple of stop strings (checked on the decoded text).
        loop: the asyncio loop that reads `events` (the caller's by default).
    """

    def __init__(self, prompt, max_tokens, settings, seed, stop=(), loop=None):
        self.prompt = list(prompt)
        self.max_tokens = int(max_tokens)
        self.settings = dict(settings)
        self.seed = int(seed)
        self.stop = tuple(stop)
        self.loop = asyncio.get_running_loop() if loop is None else loop
        self.events = asyncio.Queue()
        self.completion_tokens = 0
        self.finish_reason = None
        self.cancelled = False
        self.row = None
        # Scheduler-side text state.
        self._text = ""
        self._sent = 0
        self._detokenizer = None

    def cancel(self):
        """Asks the scheduler to drop the job (thread-safe; the row frees at the next step)."""
        self.cancelled = True

    def _emit(self, event):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # The loop is closed: nobody is listening.
            self.cancelled = True


class Scheduler:
    """Runs `causal_lm` on a batch of `max_batch` rows in a thread of its own.

    Args:
        causal_lm: a `GemmaCausalLM` with a preprocessor (its tokenizer).
        max_batch: int >= 1, requests decoding at once (rows: the next power of two).
        context: int, the longest prompt plus new tokens a request may take.
        steps: decode steps per `run` call.
        sizes: batch sizes (powers of two) to keep; default every power of
            two up to `max_batch`'s. Fewer sizes compile less at start.
    """

    def __init__(self, causal_lm, max_batch=8, context=2048, steps=STEPS, sizes=None):
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1. Received: {max_batch}")
        self.causal_lm = causal_lm
        self.max_batch = int(max_batch)
        self.context = int(context)
        self.steps = int(steps)
        self.rows = rows_for(self.max_batch)
        if sizes is None:
            sizes = [1 << i for i in range(self.rows.bit_length())]
        self.sizes = sorted(set(int(size) for size in sizes) | {self.rows})
        if any(size != rows_for(size) or size > self.rows for size in self.sizes):
            raise ValueError(f"`sizes` must be powers of two up to {self.rows}. Received: {sizes}")
        self.capacity = capacity_for(self.context)
        self.tokenizer = tokenizer_of(causal_lm)
        self.stop_token_ids = resolve_stop_token_ids(causal_lm, "auto")
        self.ready = False
        self.steps_run = 0
        # Counters for tests and benchmarks: most rows active at once, finish reasons.
        self.peak_rows = 0
        self.finished = {"stop": 0, "length": 0, "cancelled": 0}
        self.recent = RECENT
        self._load = collections.deque()  # (time, requests running) after each admission
        self._incoming = queue.Queue()
        self._jobs = {}  # (size, row) -> Job
        self._stopping = threading.Event()
        self._thread = None
        self.batches = {}  # size -> DecodeBatch

    def _make_batch(self, rows, capacity):
        return DecodeBatch(self.causal_lm, rows, capacity, PAD_TOKEN_ID)

    def warm(self):
        """Compiles the batches' programs (`generator.warm`); the server is ready after."""
        for size in self.sizes:
            self.causal_lm.generator.warm(self._make_batch, size, self.capacity, joining=True)
            self.batches[size] = self._make_batch(size, self.capacity)
        self.ready = True
        return self

    def start(self):
        """`warm`, then runs the scheduling loop in a thread of its own; returns self.

        On PyTorch prefer `run` in the thread that loaded the model: measured
        on a 2-core CPU, small matmuls in another thread than the one whose
        OpenMP pool already ran took 4x as long (a 270M decode step: 95
        against 57 ms), so `keras-gemma serve` runs HTTP in a thread instead.
        """
        self.warm()
        self._thread = threading.Thread(target=self.run, name="keras-gemma-scheduler")
        self._thread.daemon = True
        self._thread.start()
        return self

    def run(self):
        """The scheduling loop in the calling thread, until `stop` (`warm` first)."""
        if not self.ready:
            self.warm()
        self._loop()

    def stop(self, timeout=10):
        """Ends the loop (thread-safe); joins its thread if `start` made one."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.ready = False

    def submit(self, job):
        """Queues `job` (from any thread); it starts once a row is free."""
        self._incoming.put(job)
        return job

    @property
    def active_rows(self):
        """`(batch size, row)` of the jobs decoding now (a snapshot)."""
        return sorted(self._jobs)

    @property
    def waiting(self):
        return self._incoming.qsize()

    # === The scheduler thread ===

    def _loop(self):
        while not self._stopping.is_set():
            for slot, job in list(self._jobs.items()):
                if job.cancelled:
                    self._finish(slot, job, None)
            self._admit()
            if not self._jobs:
                continue
            for size in sorted({slot[0] for slot in self._jobs}):
                batch = self.batches[size]
                try:
                    produced = batch.run(limit=self.steps)
                except Exception as error:  # A failed program call: fail its jobs, start clean.
                    self._fail(size, error)
                    continue
                self.steps_run += 1
                for slot, job in list(self._jobs.items()):
                    if slot[0] != size:
                        continue
                    self._advance(slot, job, produced.get(slot[1], []))
                    if slot in self._jobs and not batch.rows.active[slot[1]]:
                        self._finish(slot, job, "length")

    def _place(self, demand, taken):
        """A free `(size, row)` for one of `demand` jobs still to place."""
        used = set(self._jobs) | taken
        running = {size for size, _ in used}
        order = sorted(running, reverse=True)
        idle = [size for size in self.sizes if size not in running]
        if not running:  # A quiet server: the smallest batch for the newcomers and recent load.
            order += [size for size in idle if size >= max(demand, self._recent_peak())]
        order += sorted(idle, reverse=True)  # Busy: the largest, so that later ones join it.
        for size in order:
            for row in range(size):
                if (size, row) not in used:
                    return size, row
        raise RuntimeError("no free row")  # Unreachable: jobs never exceed max_batch.

    def _admit(self):
        """Moves waiting jobs into free rows; blocks briefly when there is nothing to do."""
        jobs = []
        while len(self._jobs) + len(jobs) < self.max_batch:
            try:
                block = not self._jobs and not jobs
                job = self._incoming.get(block=block, timeout=IDLE_POLL if block else None)
            except queue.Empty:
                break
            if job.cancelled:
                continue
            jobs.append(job)
            if block:  # Woken on a quiet server: gather a burst that arrives with it.
                time.sleep(GATHER)
        taken = set()
        for index, job in enumerate(jobs):
            job.row = self._place(len(jobs) - index, taken)
            taken.add(job.row)
        stops = self.stop_token_ids
        for size in sorted({job.row[0] for job in jobs}):
            group = [job for job in jobs if job.row[0] == size]
            requests = [
                Request(job.row[1], job.prompt, job.max_tokens, job.settings, job.seed, stops)
                for job in group
            ]
            try:
                self.batches[size].admit(requests)
            except Exception as error:
                for job in group:
                    job._emit(("error", f"{type(error).__name__}: {error}"))
                self._fail(size, error)
                continue
            for job in group:
                job._detokenizer = IncrementalDetokenizer(self.tokenizer)
                self._jobs[job.row] = job
        self.peak_rows = max(self.peak_rows, len(self._jobs))
        if jobs:
            self._forget_old_load()  # Also here: a server that is never quiet keeps admitting.
            self._load.append((time.monotonic(), len(self._jobs)))

    def _forget_old_load(self):
        horizon = time.monotonic() - self.recent
        while self._load and self._load[0][0] < horizon:
            self._load.popleft()

    def _recent_peak(self):
        """The most requests running at once over the last `recent` seconds."""
        self._forget_old_load()
        return max((count for _, count in self._load), default=0)

    def _advance(self, slot, job, tokens):
        """Feeds a row's new tokens to its job: text events, stop tokens, stop strings, budget."""
        for token in tokens:
            if token in self.stop_token_ids:
                self._finish(slot, job, "stop")
                return
            job.completion_tokens += 1
            job._text += job._detokenizer.add(token)
            if self._check_stop_strings(job):
                self._finish(slot, job, "stop", flush=False)
                return
            if job.completion_tokens >= job.max_tokens:
                self._finish(slot, job, "length")
                return
            self._send(job, final=False)  # One streamed chunk per token, as OpenAI sends.

    def _check_stop_strings(self, job):
        """Cuts `job._text` at the first stop string; True when one was found."""
        if not job.stop:
            return False
        start = max(0, job._sent - max(len(s) for s in job.stop))
        found = [i for i in (job._text.find(s, start) for s in job.stop) if i >= 0]
        if not found:
            return False
        job._text = job._text[: min(found)]
        return True

    def _send(self, job, final):
        """Emits the text not sent yet, holding back an end that may begin a stop string."""
        end = len(job._text)
        if not final:
            for stop in job.stop:
                for size in range(min(len(stop) - 1, end), 0, -1):
                    if job._text.endswith(stop[:size]):
                        end = min(end, len(job._text) - size)
                        break
        if end > job._sent:
            job._emit(("text", job._text[job._sent : end]))
            job._sent = end

    def _finish(self, slot, job, reason, flush=True):
        """Frees `slot` at once; `reason` None means cancelled (no events)."""
        self.batches[slot[0]].release(slot[1])
        self._jobs.pop(slot, None)
        if reason is None:
            self.finished["cancelled"] += 1
            return
        if flush:
            job._text += job._detokenizer.flush()
            if self._check_stop_strings(job):
                reason = "stop"
        self._send(job, final=True)
        job.finish_reason = reason
        self.finished[reason] += 1
        job._emit(("done", reason))

    def _fail(self, size, error):
        """Fails every job of the `size` batch and replaces the batch (its state is unknown)."""
        message = f"{type(error).__name__}: {error}"
        for slot, job in list(self._jobs.items()):
            if slot[0] == size:
                job._emit(("error", message))
                self._jobs.pop(slot, None)
        self.batches[size] = self._make_batch(size, self.capacity)
