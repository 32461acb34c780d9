"""The OpenAI-compatible ASGI app (Starlette) in front of a `Scheduler`.

Routes: `GET /health` (200 once the model is loaded and warm, 503 before),
`GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
(non-streaming, or server-sent events ending with `data: [DONE]`). Every
error, ours or Starlette's (unknown route, wrong method), is an OpenAI error
object. A client that disconnects cancels its job, which frees its row.
"""

import asyncio
import json
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from keras_gemma.serving import protocol
from keras_gemma.serving.protocol import ApiError
from keras_gemma.serving.scheduler import Job

# How often a non-streaming request checks whether its client is still there (seconds).
DISCONNECT_POLL = 0.5


def _error_response(error):
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request, exc):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(ApiError(exc.status_code, str(exc.detail), code=code))


async def _server_error(request, exc):
    return _error_response(ApiError(500, f"{type(exc).__name__}: {exc}"))


def build_app(scheduler, model_name):
    """The Starlette app serving `scheduler`'s model as `model_name`."""
    created = int(time.time())

    async def health(request):
        if not scheduler.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request):
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "keras-gemma"}
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(request):
        return await _complete(request, chat=False)

    async def chat_completions(request):
        return await _complete(request, chat=True)

    async def _complete(request, chat):
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ApiError(
                    400, f"The body is not valid JSON: {error}", code="invalid_json"
                ) from None
            parsed = protocol.parse_request(
                body, scheduler.causal_lm, model_name, scheduler.context, chat
            )
        except ApiError as error:
            return _error_response(error)
        job = scheduler.submit(
            Job(parsed.prompt, parsed.max_tokens, parsed.settings, parsed.seed, parsed.stop)
        )
        request_id = protocol.new_id(chat)
        if parsed.stream:
            events = _stream(job, chat, request_id, model_name, parsed.include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        pieces = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        return JSONResponse({}, status_code=499)
                    continue
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "error":
                    return _error_response(ApiError(500, event[1]))
                else:
                    break
        finally:
            job.cancel()  # A no-op once done; frees the row when the handler is cancelled.
        token_usage = protocol.usage(len(job.prompt), job.completion_tokens)
        return JSONResponse(
            protocol.completion(
                chat, request_id, model_name, "".join(pieces), job.finish_reason, token_usage
            )
        )

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def _sse(body):
    return f"data: {json.dumps(body)}\n\n"


async def _stream(job, chat, request_id, model, include_usage):
    """Server-sent events of `job`; closing the stream (a disconnect) cancels the job."""
    try:
        if chat:
            yield _sse(protocol.chunk(True, request_id, model, role=True))
        while True:
            event = await job.events.get()
            if event[0] == "text":
                yield _sse(protocol.chunk(chat, request_id, model, text=event[1]))
            elif event[0] == "error":
                yield _sse(ApiError(500, event[1]).body())
                break
            else:
                yield _sse(protocol.chunk(chat, request_id, model, finish_reason=event[1]))
                if include_usage:
                    token_usage = protocol.usage(len(job.prompt), job.completion_tokens)
                    yield _sse(protocol.chunk(chat, request_id, model, token_usage=token_usage))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
