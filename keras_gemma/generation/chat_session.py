"""Multi-turn chat that keeps the KV cache between turns."""

from keras_gemma import samplers as sampler_lib
from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.generation.detokenizer import IncrementalDetokenizer
from keras_gemma.generation.engine import capacity_for
from keras_gemma.generation.prompts import check_token_count
from keras_gemma.generation.prompts import tokenizer_of
from keras_gemma.generation.settings import resolve_seed
from keras_gemma.generation.settings import resolve_settings
from keras_gemma.generation.stopping import resolve_stop_token_ids
from keras_gemma.generation.stopping import truncate_at_stop
from keras_gemma.generation.stopping import until_stop


class ChatSession:
    """A conversation with a `GemmaCausalLM` whose KV cache survives each turn.

    The first turn is prefilled from the chat template; each later turn feeds
    only its new tokens (the previous reply's `<end_of_turn>`, the new user
    turn and the model prompt) on top of the cached conversation, on the same
    compiled programs as `generate` (one row of a `DecodeBatch`), so no turn
    compiles anything. Nothing already read is read again. The cache starts
    at the smallest capacity bucket and moves to the next one once the
    conversation outgrows it.

    Args:
        causal_lm: a `GemmaCausalLM` with a preprocessor.
        max_length: int. Capacity of the conversation in tokens.
        sampler: sampler name or instance; defaults to the model's.
        stop_token_ids: as in `GemmaCausalLM.generate`.

    Example:
    ```python
    chat = lm.chat_session()
    chat.send("What is the capital of France?")
    chat.send("And of Italy?")
    ```
    """

    def __init__(self, causal_lm, max_length=4096, sampler=None, stop_token_ids="auto"):
        self.causal_lm = causal_lm
        self.tokenizer = tokenizer_of(causal_lm)
        self.max_length = int(max_length)
        self.sampler = causal_lm.sampler if sampler is None else sampler_lib.get(sampler)
        if isinstance(self.sampler, sampler_lib.BeamSampler):
            raise ValueError(
                "A chat session samples token by token; beam search is not supported here."
            )
        self.settings = resolve_settings(self.sampler)
        self.stop_token_ids = resolve_stop_token_ids(causal_lm, stop_token_ids)
        self.messages = []
        self.reset()

    def reset(self):
        """Forgets the conversation and its cache."""
        self.messages = []
        self._batch = None
        self._slot = 0
        self._pending = []  # Tokens generated but not fed yet (the stop token).
        self.tokens_read = 0  # Tokens run through the model: shows cache reuse.
        self._tokens = []  # Every token fed so far, in order.
        self._prompt_tokens = []  # The conversation as it stood before the last reply.

    @property
    def cache_length(self):
        """Slots of the conversation held in the cache."""
        return self._slot

    def send(self, message, max_new_tokens=256, stream=False, seed=None):
        """Adds a user turn and returns the model's reply (or streams it).

        Args:
            message: str. The user's message.
            max_new_tokens: int. Longest reply.
            stream: bool. Yield text pieces as they are decoded.
            seed: int. For reproducible sampling.

        Returns:
            The reply text, or an iterator of text pieces with `stream=True`.
        """
        if not isinstance(message, str):
            raise TypeError(f"`message` must be a string. Received: {type(message).__name__}")
        check_token_count("max_new_tokens", max_new_tokens, minimum=1)
        if self._batch is None:
            new_tokens = self.tokenizer.apply_chat_template([{"role": "user", "content": message}])
        else:
            turn = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], add_generation_prompt=True
            )
            # Drop the `<bos>`: the conversation already has one. Close the
            # previous model turn first.
            closing = self._pending or [self.tokenizer.end_of_turn_token_id]
            newline = self.tokenizer.tokenize("\n")
            new_tokens = closing + newline + list(turn[1:])
        needed = self._slot + len(new_tokens) + max_new_tokens
        if needed > self.max_length:
            raise ValueError(
                f"The conversation would reach {needed} tokens, beyond this session's "
                f"max_length={self.max_length}. Start a new session with a larger "
                "`max_length` (or call `reset()`)."
            )
        self.messages.append({"role": "user", "content": message})
        self._prepare(needed)
        request = Request(
            0,
            list(new_tokens),
            max_new_tokens,
            self.settings,
            resolve_seed(seed, self.sampler),
            self.stop_token_ids,
            reset=self._slot == 0,
        )
        self._batch.admit([request])
        self.tokens_read += len(new_tokens) - 1
        self._slot += len(new_tokens) - 1
        self._tokens.extend(int(t) for t in new_tokens)
        self._prompt_tokens = list(self._tokens)
        if stream:
            return self._stream_reply()
        reply = []
        while self._batch.any_active:
            reply.extend(self._batch.run().get(0, []))
        return self._finish(reply)

    def _prepare(self, needed):
        """A batch whose capacity holds `needed` slots (the next bucket when outgrown)."""
        capacity = capacity_for(needed)
        if self._batch is None:
            custom_filter = self.sampler.custom_filter

            def make_batch(rows, capacity):
                return DecodeBatch(self.causal_lm, rows, capacity, custom_filter=custom_filter)

            self.causal_lm.generator.warm(make_batch, 1, capacity)
            self._batch = make_batch(1, capacity)
        elif capacity > self._batch.capacity:
            self._batch.grow(capacity)

    def _finish(self, tokens):
        reply = truncate_at_stop(tokens, self.stop_token_ids)
        # The last prompt token and every reply token but the last were fed
        # while decoding; the last one (usually the stop token) is fed with
        # the next turn.
        self._slot += len(tokens)
        self.tokens_read += len(tokens)
        self._tokens.extend(int(t) for t in tokens[:-1])
        self._pending = [int(tokens[-1])] if tokens else []
        if self._pending and self._pending[0] not in self.stop_token_ids:
            # Stopped on length: close the turn explicitly after this token.
            self._pending.append(self.tokenizer.end_of_turn_token_id)
        text = self.tokenizer.detokenize(reply) if reply else ""
        self.messages.append({"role": "assistant", "content": text})
        return text

    def _history_tokens(self):
        """Token ids of the conversation up to the start of the last reply."""
        return list(self._prompt_tokens)

    def _stream_reply(self):
        """Text pieces of the reply, one decode step at a time."""
        tokens = []

        def steps():
            while self._batch.any_active:
                new = self._batch.run(limit=1).get(0, [])
                tokens.extend(new)
                yield from new

        text = IncrementalDetokenizer(self.tokenizer)
        for token in until_stop(steps(), self.stop_token_ids):
            piece = text.add(token)
            if piece:
                yield piece
        for _ in steps():  # The stop token came: the row is already done.
            pass
        self._finish(tokens)
        piece = text.flush()
        if piece:
            yield piece
