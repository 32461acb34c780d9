"""Continuous batching: one thread owns a `DecodeBatch` and admits requests into free rows.

The HTTP side (`app.py`, on an asyncio loop) hands a `Job` to
`Scheduler.submit`, a thread-safe queue. The scheduler thread loops: it drops
cancelled jobs (their clients went away), admits waiting jobs into free rows
(`DecodeBatch.admit` prefills them while the other rows keep their state),
runs every active row a few steps (`DecodeBatch.run(limit=steps)`), and turns
each row's new tokens into text pieces (`IncrementalDetokenizer`), checking
stop tokens, stop strings and the token budget. A finished job frees its row
at once, so a request that arrives while others decode joins at the next step
boundary; more requests than rows wait in the queue.

Events go back to the job's asyncio loop with `call_soon_threadsafe`:
`("text", piece)` as text is decoded, then `("done", finish_reason)` or
`("error", message)`.
"""

import asyncio
import queue
import threading

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
    """

    def __init__(self, causal_lm, max_batch=8, context=2048, steps=STEPS):
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1. Received: {max_batch}")
        self.causal_lm = causal_lm
        self.max_batch = int(max_batch)
        self.context = int(context)
        self.steps = int(steps)
        self.rows = rows_for(self.max_batch)
        self.capacity = capacity_for(self.context)
        self.tokenizer = tokenizer_of(causal_lm)
        self.stop_token_ids = resolve_stop_token_ids(causal_lm, "auto")
        self.ready = False
        self.steps_run = 0
        # Counters for tests and benchmarks: most rows active at once, finish reasons.
        self.peak_rows = 0
        self.finished = {"stop": 0, "length": 0, "cancelled": 0}
        self._incoming = queue.Queue()
        self._jobs = {}  # row -> Job
        self._stopping = threading.Event()
        self._thread = None
        self.batch = None

    def _make_batch(self, rows, capacity):
        return DecodeBatch(self.causal_lm, rows, capacity, PAD_TOKEN_ID)

    def start(self):
        """Compiles the batch's programs (`warm`), then starts the thread; returns self."""
        self.causal_lm.generator.warm(self._make_batch, self.rows, self.capacity)
        self.batch = self._make_batch(self.rows, self.capacity)
        self._thread = threading.Thread(target=self._loop, name="keras-gemma-scheduler")
        self._thread.daemon = True
        self._thread.start()
        self.ready = True
        return self

    def stop(self, timeout=10):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.ready = False

    def submit(self, job):
        """Queues `job` (from any thread); it starts once a row is free."""
        self._incoming.put(job)
        return job

    @property
    def active_rows(self):
        """Rows decoding now (a snapshot)."""
        return sorted(self._jobs)

    @property
    def waiting(self):
        return self._incoming.qsize()

    # === The scheduler thread ===

    def _loop(self):
        while not self._stopping.is_set():
            for row, job in list(self._jobs.items()):
                if job.cancelled:
                    self._finish(row, job, None)
            self._admit()
            if not self._jobs:
                continue
            try:
                produced = self.batch.run(limit=self.steps)
            except Exception as error:  # A failed program call: fail its jobs, start clean.
                self._fail_all(error)
                continue
            self.steps_run += 1
            for row, job in list(self._jobs.items()):
                self._advance(row, job, produced.get(row, []))
                if row in self._jobs and not self.batch.rows.active[row]:
                    self._finish(row, job, "length")

    def _admit(self):
        """Moves waiting jobs into free rows; blocks briefly when there is nothing to do."""
        free = [row for row in range(self.max_batch) if row not in self._jobs]
        jobs = []
        while free:
            try:
                block = not self._jobs and not jobs
                job = self._incoming.get(block=block, timeout=IDLE_POLL if block else None)
            except queue.Empty:
                break
            if job.cancelled:
                continue
            job.row = free.pop(0)
            jobs.append(job)
        if not jobs:
            return
        stops = self.stop_token_ids
        requests = [
            Request(job.row, job.prompt, job.max_tokens, job.settings, job.seed, stops)
            for job in jobs
        ]
        try:
            self.batch.admit(requests)
        except Exception as error:
            for job in jobs:
                job._emit(("error", f"{type(error).__name__}: {error}"))
            self._fail_all(error)
            return
        for job in jobs:
            job._detokenizer = IncrementalDetokenizer(self.tokenizer)
            self._jobs[job.row] = job
        self.peak_rows = max(self.peak_rows, len(self._jobs))

    def _advance(self, row, job, tokens):
        """Feeds a row's new tokens to its job: text events, stop tokens, stop strings, budget."""
        for token in tokens:
            if token in self.stop_token_ids:
                self._finish(row, job, "stop")
                return
            job.completion_tokens += 1
            job._text += job._detokenizer.add(token)
            if self._check_stop_strings(job):
                self._finish(row, job, "stop", flush=False)
                return
            if job.completion_tokens >= job.max_tokens:
                self._finish(row, job, "length")
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

    def _finish(self, row, job, reason, flush=True):
        """Frees `row` at once; `reason` None means cancelled (no events)."""
        self.batch.release(row)
        self._jobs.pop(row, None)
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

    def _fail_all(self, error):
        message = f"{type(error).__name__}: {error}"
        for row, job in list(self._jobs.items()):
            job._emit(("error", message))
            self._jobs.pop(row, None)
        self.batch = self._make_batch(self.rows, self.capacity)
