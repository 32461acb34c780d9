"""Text-level generation and scoring: prompts in, text out.

Turns strings or pre-tokenized dicts into left-padded, bucketed prompt
arrays, checks the arguments, runs the model's `generator` (a
`CompiledGenerator`, `engine.py`) or beam search, and turns tokens back into
text. `GemmaCausalLM.generate` and `score` call `generate` and `score` here.
"""

from keras import ops

from keras_gemma import samplers as sampler_lib
from keras_gemma.generation.batch import DecodeBatch
from keras_gemma.generation.batch import Request
from keras_gemma.generation.beam_search import beam_search
from keras_gemma.generation.detokenizer import IncrementalDetokenizer
from keras_gemma.generation.engine import capacity_for
from keras_gemma.generation.engine import rows_for
from keras_gemma.generation.prompts import check_encodable
from keras_gemma.generation.prompts import check_prompts
from keras_gemma.generation.prompts import new_token_budget
from keras_gemma.generation.prompts import normalize_stop_token_ids
from keras_gemma.generation.prompts import prompt_ids
from keras_gemma.generation.prompts import right_pad
from keras_gemma.generation.prompts import tokenizer_of
from keras_gemma.generation.settings import resolve_seed
from keras_gemma.generation.settings import resolve_settings
from keras_gemma.generation.stopping import resolve_stop_token_ids
from keras_gemma.generation.stopping import truncate_at_stop
from keras_gemma.generation.stopping import until_stop

PAD_TOKEN_ID = 0


def generate(
    causal_lm,
    inputs,
    max_length=None,
    max_new_tokens=None,
    stop_token_ids="auto",
    strip_prompt=False,
    stream=False,
    sampler=None,
    seed=None,
    **sampling,
):
    """Generates after one prompt or a batch of prompts; see `GemmaCausalLM.generate`.

    Args:
        causal_lm: the model: its `backbone`, `preprocessor`, `sampler` and
            `generator` are used.
        inputs, max_length, max_new_tokens, stop_token_ids, strip_prompt,
        stream, sampler, seed: as in `GemmaCausalLM.generate`.
        **sampling: `temperature`, `top_k`, `top_p`, `min_p`,
            `repetition_penalty`, as in `GemmaCausalLM.generate`.

    Returns:
        Text (or a dict of token ids) as `GemmaCausalLM.generate` documents;
        an iterator of pieces with `stream=True`.
    """
    stop_token_ids = normalize_stop_token_ids(causal_lm, stop_token_ids)
    check_encodable(inputs)
    sampler = causal_lm.sampler if sampler is None else sampler_lib.get(sampler)
    settings = resolve_settings(sampler, **sampling)
    seed = resolve_seed(seed, sampler)
    prompts, is_text_input, single = prompt_ids(causal_lm, inputs)
    check_prompts(prompts, causal_lm.backbone.vocabulary_size)
    budget = new_token_budget(prompts, max_length, max_new_tokens)
    stops = resolve_stop_token_ids(causal_lm, stop_token_ids)
    if isinstance(sampler, sampler_lib.BeamSampler):
        if stream:
            raise ValueError(
                "Beam search cannot stream: its best sequence is known only at the end."
            )
        new_tokens = beam_search(causal_lm, prompts, budget, sampler, stops, PAD_TOKEN_ID)
        return _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt)
    if stream and len(prompts) != 1:
        raise ValueError(f"`stream=True` takes one prompt; received {len(prompts)}.")
    if budget == 0:
        if stream:
            return iter(())
        return _format(
            causal_lm, prompts, [[] for _ in prompts], is_text_input, single, strip_prompt
        )
    batch = start_batch(causal_lm, prompts, budget, settings, seed, stops, sampler.custom_filter)
    if stream:
        return _stream(causal_lm, prompts[0], batch, stops, strip_prompt, is_text_input)
    new_tokens = [[] for _ in prompts]
    while batch.any_active:
        for row, tokens in batch.run().items():
            new_tokens[row].extend(tokens)
    new_tokens = [truncate_at_stop(row, stops) for row in new_tokens]
    return _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt)


def start_batch(causal_lm, prompts, budget, settings, seed, stops, custom_filter=None):
    """A `DecodeBatch` with one row per prompt, prompts prefilled, ready to `run`.

    Row `i` samples with seed `seed + i`, so a prompt's output does not depend
    on the prompts batched with it.
    """
    rows = rows_for(len(prompts))
    capacity = capacity_for(max(len(p) for p in prompts) + budget)

    def make_batch(rows, capacity):
        return DecodeBatch(causal_lm, rows, capacity, PAD_TOKEN_ID, custom_filter)

    causal_lm.generator.warm(make_batch, rows, capacity)
    batch = make_batch(rows, capacity)
    requests = [
        Request(row, prompt, budget, settings, (seed + row) % (2**31), stops)
        for row, prompt in enumerate(prompts)
    ]
    batch.admit(requests)
    return batch


def _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt):
    """Text, or a right-padded dict of ids, of each prompt (unless stripped) and its new tokens."""
    sequences = [new if strip_prompt else prompt + new for prompt, new in zip(prompts, new_tokens)]
    if is_text_input:
        tokenizer = tokenizer_of(causal_lm)
        texts = [tokenizer.detokenize(sequence) if sequence else "" for sequence in sequences]
        return texts[0] if single else texts
    length = max(1, max(len(s) for s in sequences))
    token_ids, padding_mask = right_pad(sequences, length, mask_dtype="bool")
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _stream(causal_lm, prompt, batch, stops, strip_prompt, is_text_input):
    """Yields text pieces (or single-token id lists for id inputs) as decoded."""
    text = None
    if is_text_input:
        prefix = [] if strip_prompt else prompt
        text = IncrementalDetokenizer(tokenizer_of(causal_lm), prefix=prefix)
        if not strip_prompt:
            yield text.emitted

    def tokens():
        while batch.any_active:
            yield from batch.run(limit=1).get(0, [])

    for token in until_stop(tokens(), stops):
        if text is None:
            yield [token]
            continue
        piece = text.add(token)
        if piece:
            yield piece
    if text is not None:
        piece = text.flush()
        if piece:
            yield piece


def score(causal_lm, inputs):
    """Per-token log-likelihoods; see `GemmaCausalLM.score`."""
    prompts, is_text_input, single = prompt_ids(causal_lm, inputs)
    token_ids, padding_mask = right_pad(prompts, max(len(p) for p in prompts))
    logits = causal_lm({"token_ids": token_ids, "padding_mask": padding_mask})
    log_probs = ops.log_softmax(ops.cast(logits[:, :-1, :], "float32"), axis=-1)
    targets = ops.convert_to_tensor(token_ids[:, 1:, None])
    scores = ops.convert_to_numpy(ops.take_along_axis(log_probs, targets, axis=-1))[..., 0]
    scores = scores * padding_mask[:, 1:]
    if not is_text_input:
        return scores.astype("float32")
    rows = [scores[row, : len(prompt) - 1].astype("float32") for row, prompt in enumerate(prompts)]
    return rows[0] if single else rows
