"""Text-level generation and scoring: prompts in, text out.

Turns strings or pre-tokenized dicts into left-padded, bucketed prompt
arrays, checks the arguments, runs the model's `generator` (a
`CompiledGenerator`, `engine.py`) or beam search, and turns tokens back into
text. `GemmaCausalLM.generate` and `score` call `generate` and `score` here.
"""

from keras import ops

from keras_gemma import samplers as sampler_lib
from keras_gemma.generation.beam_search import beam_search
from keras_gemma.generation.detokenizer import IncrementalDetokenizer
from keras_gemma.generation.prompts import bucket_new_tokens
from keras_gemma.generation.prompts import bucket_prompt_length
from keras_gemma.generation.prompts import check_encodable
from keras_gemma.generation.prompts import check_prompts
from keras_gemma.generation.prompts import check_seed
from keras_gemma.generation.prompts import left_pad
from keras_gemma.generation.prompts import new_token_budget
from keras_gemma.generation.prompts import normalize_stop_token_ids
from keras_gemma.generation.prompts import prompt_ids
from keras_gemma.generation.prompts import right_pad
from keras_gemma.generation.prompts import tokenizer_of
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
):
    """Generates after one prompt or a batch of prompts; see `GemmaCausalLM.generate`.

    Args:
        causal_lm: the model: its `backbone`, `preprocessor`, `sampler` and
            `generator` are used.
        inputs, max_length, max_new_tokens, stop_token_ids, strip_prompt,
        stream, sampler, seed: as in `GemmaCausalLM.generate`.

    Returns:
        Text (or a dict of token ids) as `GemmaCausalLM.generate` documents;
        an iterator of pieces with `stream=True`.
    """
    seed = check_seed(seed)
    stop_token_ids = normalize_stop_token_ids(causal_lm, stop_token_ids)
    check_encodable(inputs)
    sampler = causal_lm.sampler if sampler is None else sampler_lib.get(sampler)
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

    prompt_length = bucket_prompt_length(max(len(p) for p in prompts))
    total_length = prompt_length + bucket_new_tokens(budget)
    token_ids, padding_mask = left_pad(prompts, prompt_length, PAD_TOKEN_ID)
    if stream:
        if len(prompts) != 1:
            raise ValueError(f"`stream=True` takes one prompt; received {len(prompts)}.")
        arrays = (token_ids, padding_mask, budget, total_length, sampler, stops, seed)
        return _stream(causal_lm, prompts[0], arrays, strip_prompt, is_text_input)
    if budget == 0:
        new_tokens = [[] for _ in prompts]
    else:
        output, count = causal_lm.generator.generate(
            token_ids,
            padding_mask,
            budget,
            total_length,
            sampler,
            stops,
            seed=seed,
            pad_token_id=PAD_TOKEN_ID,
        )
        new_tokens = [truncate_at_stop(row[:count], stops) for row in output]
    return _format(causal_lm, prompts, new_tokens, is_text_input, single, strip_prompt)


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


def _stream(causal_lm, prompt, arrays, strip_prompt, is_text_input):
    """Yields text pieces (or single-token id lists for id inputs) as decoded.

    `arrays` is `(token_ids, padding_mask, budget, total_length, sampler,
    stops, seed)`, as `CompiledGenerator.stream` takes them.
    """
    token_ids, padding_mask, budget, total_length, sampler, stops, seed = arrays
    if budget == 0:
        return
    text = None
    if is_text_input:
        prefix = [] if strip_prompt else prompt
        text = IncrementalDetokenizer(tokenizer_of(causal_lm), prefix=prefix)
        if not strip_prompt:
            yield text.emitted
    steps = causal_lm.generator.stream(
        token_ids, padding_mask, budget, total_length, sampler, stops, seed=seed
    )
    for token in until_stop((tokens[0] for tokens in steps), stops):
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
