"""OpenAI's request fields, checked, and its response and error objects.

`parse_request` turns a request body (already JSON-decoded) of
`/v1/completions` or `/v1/chat/completions` into a `Parsed` tuple, or raises
`ApiError` with the HTTP status and OpenAI's error object. Sampling fields
keep `generate`'s meaning (`resolve_settings` on a greedy sampler): without
`temperature`, `top_p`, `top_k` or `min_p` a request decodes greedily.
"""

import numbers
import time
import uuid
from typing import NamedTuple

from keras_gemma import samplers
from keras_gemma.generation.prompts import prompt_ids
from keras_gemma.generation.settings import check_sampling
from keras_gemma.generation.settings import resolve_seed
from keras_gemma.generation.settings import resolve_settings

# Fields that ask for something this server does not do, and the value that means "off".
UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "response_format": (None, {"type": "text"}),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
}
MAX_STOP_STRINGS = 4


class ApiError(Exception):
    """An HTTP error with OpenAI's error object (`body()`)."""

    def __init__(self, status, message, param=None, code=None, kind=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self):
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class Parsed(NamedTuple):
    prompt: list
    max_tokens: int
    settings: dict
    seed: int
    stop: tuple
    stream: bool
    include_usage: bool


def _invalid(param, message, code="invalid_value"):
    return ApiError(400, message, param=param, code=code)


def _integer(body, name, low):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid(name, f"`{name}` must be an integer. Received: {value!r}", "invalid_type")
    if value < low:
        raise _invalid(name, f"`{name}` must be >= {low}. Received: {value}")
    return int(value)


def _boolean(body, name):
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(name, f"`{name}` must be true or false. Received: {value!r}", "invalid_type")
    return value


def _stop_strings(body):
    stop = body.get("stop")
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else stop
    if not isinstance(strings, list) or not all(isinstance(s, str) and s for s in strings):
        raise _invalid(
            "stop",
            f"`stop` must be a non-empty string or a list of them. Received: {stop!r}",
            "invalid_type",
        )
    if len(strings) > MAX_STOP_STRINGS:
        raise _invalid("stop", f"`stop` takes at most {MAX_STOP_STRINGS} strings.")
    return tuple(strings)


def _sampling(body):
    """`resolve_settings` of a greedy sampler with the request's sampling fields."""
    given = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        if body.get(name) is None:
            continue
        try:
            check_sampling(**{name: body[name]})
        except ValueError as error:
            kind = "invalid_type" if "number" in str(error) else "invalid_value"
            raise _invalid(name, str(error), kind) from None
        given[name] = body[name]
    return resolve_settings(samplers.GreedySampler(), **given)


def check_model(body, model_name):
    model = body.get("model")
    if model is None:
        raise _invalid("model", "`model` is required.", "missing_required_parameter")
    if not isinstance(model, str):
        raise _invalid("model", f"`model` must be a string. Received: {model!r}", "invalid_type")
    if model != model_name:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. This server serves `{model_name}`.",
            param="model",
            code="model_not_found",
        )


def _prompt_tokens(body, causal_lm, chat):
    if chat:
        messages = body.get("messages")
        if messages is None:
            raise _invalid("messages", "`messages` is required.", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages", "`messages` must be a non-empty list.", "invalid_type")
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, (str, list)):
                raise _invalid(
                    "messages",
                    f"messages[{index}] must be an object with a `role` and a string "
                    "`content` (or a list of text parts).",
                    "invalid_type",
                )
        try:
            return list(causal_lm.preprocessor.tokenizer.apply_chat_template(messages))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise _invalid("messages", f"Invalid `messages`: {error}") from None
    prompt = body.get("prompt")
    if prompt is None:
        raise _invalid("prompt", "`prompt` is required.", "missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _invalid("prompt", "`prompt` is empty.")
        return prompt_ids(causal_lm, prompt)[0][0]
    vocabulary_size = causal_lm.backbone.vocabulary_size
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        if not all(0 <= t < vocabulary_size for t in prompt):
            raise _invalid("prompt", f"Token ids must be in [0, {vocabulary_size}).")
        return list(prompt)
    raise _invalid(
        "prompt",
        "`prompt` must be one string or one non-empty list of token ids "
        f"(one prompt per request). Received: {str(prompt)[:100]}",
        "invalid_type",
    )


def parse_request(body, causal_lm, model_name, context, chat):
    """The checked request (see the module docstring); raises `ApiError`."""
    if not isinstance(body, dict):
        raise _invalid(None, "The request body must be a JSON object.", "invalid_type")
    check_model(body, model_name)
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise _invalid("n", f"Only `n=1` is supported. Received: n={n}")
    for name, off in UNSUPPORTED.items():
        if name in body and body[name] not in off:
            raise _invalid(name, f"`{name}` is not supported by this server.", "unsupported")
    prompt = _prompt_tokens(body, causal_lm, chat)
    max_tokens = _integer(body, "max_tokens", 1)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _integer(body, "max_completion_tokens", 1)
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = context - len(prompt)
        if max_tokens < 1:
            raise _invalid(
                "messages" if chat else "prompt",
                f"The prompt has {len(prompt)} tokens, which leaves none of the context of "
                f"{context} tokens for the answer. Shorten the prompt.",
                "context_length_exceeded",
            )
    elif len(prompt) + max_tokens > context:
        raise _invalid(
            name,
            f"The prompt ({len(prompt)} tokens) plus {name} ({max_tokens}) is "
            f"{len(prompt) + max_tokens} tokens, beyond the context of {context} tokens. "
            f"Shorten the prompt or lower {name}.",
            "context_length_exceeded",
        )
    settings = _sampling(body)
    try:
        seed = resolve_seed(body.get("seed"))
    except ValueError as error:
        raise _invalid("seed", str(error), "invalid_type") from None
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "`stream_options` must be an object.", "invalid_type")
    include_usage = _boolean(options or {}, "include_usage")
    return Parsed(prompt, max_tokens, settings, seed, _stop_strings(body), stream, include_usage)


# === Responses ===


def new_id(chat):
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(chat, request_id, model, text, finish_reason, token_usage):
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice.update(logprobs=None, finish_reason=finish_reason)
    return {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": token_usage,
    }


def chunk(chat, request_id, model, text=None, finish_reason=None, token_usage=None, role=False):
    """One streamed chunk; a usage-only chunk (no choices) when `token_usage` is given."""
    body = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if token_usage is not None:
        body.update(choices=[], usage=token_usage)
        return body
    if chat:
        delta = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice.update(logprobs=None, finish_reason=finish_reason)
    body["choices"] = [choice]
    return body
