"""`keras_gemma.serving` driven over HTTP by the official `openai` client, on a tiny model.

One live uvicorn server (a thread, a free port) serves `tiny_lm`, whose
`generate` is the oracle: greedy answers must equal it. The oracle runs only
while the server is idle, in batches of the server's row count, so both use
one set of compiled programs (TensorFlow compiles each bucket slowly).
tests/guides/serving_test.py serves a preset directory with the real command.
"""

import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

MAX_BATCH = 4  # Fewer rows than the 8 concurrent clients: some wait in the queue.
CONTEXT = 2048
MODEL = "tiny"
PROMPTS = [
    "the quick brown fox",
    "hello world",
    "a b c d e f",
    "once upon a time",
    "the cat sat on the mat",
    "numbers one two three",
    "keras gemma",
    "to be or not to be",
]


class Server:
    def __init__(self, scheduler, server, thread):
        self.scheduler = scheduler
        self.server = server
        self.thread = thread
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def post(self, path, data):
        """Raw POST (`data`: bytes or a JSON-able object) -> `(status, decoded body)`."""
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_idle(self, timeout=20):
        deadline = time.time() + timeout
        while self.scheduler.active_rows or self.scheduler.waiting:
            assert time.time() < deadline, f"rows still active: {self.scheduler.active_rows}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_lm):
    from keras_gemma.serving import Scheduler
    from keras_gemma.serving import build_app

    # Sizes 1 and 4 (not 2): one fewer set of programs to compile.
    scheduler = Scheduler(tiny_lm, MAX_BATCH, CONTEXT, sizes=(1, MAX_BATCH)).start()
    config = uvicorn.Config(
        build_app(scheduler, MODEL), host="127.0.0.1", port=0, log_level="error"
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Server(scheduler, uvicorn_server, thread)
    uvicorn_server.should_exit = True
    thread.join(10)
    scheduler.stop()


def _oracle(tiny_lm, prompts, max_new_tokens):
    """`tiny_lm.generate`'s greedy outputs, in batches of `MAX_BATCH` rows (the server's bucket:
    one set of compiled programs serves both); strings give texts, id lists give new ids."""
    outputs = []
    for start in range(0, len(prompts), MAX_BATCH):
        batch = prompts[start : start + MAX_BATCH]
        padded = batch + [batch[0]] * (MAX_BATCH - len(batch))
        if isinstance(batch[0], str):
            outputs += tiny_lm.generate(padded, max_new_tokens=max_new_tokens, strip_prompt=True)
            continue
        length = max(len(p) for p in padded)
        token_ids = np.array([p + [0] * (length - len(p)) for p in padded])
        mask = np.array([[i < len(p) for i in range(length)] for p in padded])
        output = tiny_lm.generate(
            {"token_ids": token_ids, "padding_mask": mask},
            max_new_tokens=max_new_tokens,
            strip_prompt=True,
        )
        for ids, keep in zip(output["token_ids"], output["padding_mask"]):
            outputs.append([int(t) for t in np.asarray(ids)[np.asarray(keep, bool)]])
    return outputs[: len(prompts)]


def expected_ids(tiny_lm, prompt_ids, max_new_tokens):
    return _oracle(tiny_lm, [list(prompt_ids)], max_new_tokens)[0]


def expected_text(tiny_lm, prompt, max_new_tokens):
    return _oracle(tiny_lm, [prompt], max_new_tokens)[0]


def test_health_and_models(server):
    with urllib.request.urlopen(server.url + "/health") as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}
    models = server.client.models.list()
    assert [model.id for model in models.data] == [MODEL]


def test_completion_equals_generate(server, tiny_lm):
    response = server.client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=12)
    choice = response.choices[0]
    assert choice.text == expected_text(tiny_lm, PROMPTS[0], 12)
    prompt_tokens = len(tiny_lm.preprocessor.tokenizer(PROMPTS[0])) + 1  # <bos>
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    assert (choice.finish_reason == "length") == (response.usage.completion_tokens == 12)
    assert response.object == "text_completion" and response.model == MODEL


def test_chat_uses_the_chat_template(server, tiny_lm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    response = server.client.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=10
    )
    prompt = tiny_lm.preprocessor.tokenizer.apply_chat_template(messages)
    new_ids = expected_ids(tiny_lm, prompt, 10)
    message = response.choices[0].message
    assert message.role == "assistant"
    assert message.content == tiny_lm.preprocessor.tokenizer.detokenize(new_ids)
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens == len(new_ids)
    assert response.choices[0].finish_reason == ("length" if len(new_ids) == 10 else "stop")


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_streaming_equals_non_streaming(server, chat):
    if chat:
        create = server.client.chat.completions.create
        request = dict(messages=[{"role": "user", "content": PROMPTS[3]}])
    else:
        create = server.client.completions.create
        request = dict(prompt=PROMPTS[3])
    whole = create(model=MODEL, max_tokens=16, **request)
    chunks = list(
        create(
            model=MODEL,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            **request,
        )
    )
    choices = [c.choices[0] for c in chunks if c.choices]
    if chat:
        assert choices[0].delta.role == "assistant"
        text = "".join(c.delta.content or "" for c in choices)
        assert text == whole.choices[0].message.content
    else:
        assert "".join(c.text for c in choices) == whole.choices[0].text
    assert [c.finish_reason for c in choices][-1] == whole.choices[0].finish_reason
    assert all(c.finish_reason is None for c in choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stop_strings_end_the_text(server, tiny_lm):
    full = expected_text(tiny_lm, PROMPTS[4], 20)
    stop = full[5:8]
    assert stop.strip(), f"need a visible stop string in {full!r}"
    response = server.client.completions.create(
        model=MODEL, prompt=PROMPTS[4], max_tokens=20, stop=[stop]
    )
    assert response.choices[0].text == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    streamed = server.client.completions.create(
        model=MODEL, prompt=PROMPTS[4], max_tokens=20, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_eight_concurrent_clients_each_equal_generate(server, tiny_lm):
    results = {}
    errors = []
    start = threading.Barrier(len(PROMPTS))

    def client(index):
        try:
            start.wait()
            response = server.client.completions.create(
                model=MODEL, prompt=PROMPTS[index], max_tokens=24
            )
            results[index] = response.choices[0].text
        except Exception as error:  # Reported below; a thread cannot fail the test.
            errors.append(error)

    expected = _oracle(tiny_lm, PROMPTS, 24)  # Before the server runs: one caller at a time.
    peak_before = server.scheduler.peak_rows
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for index, prompt in enumerate(PROMPTS):
        assert results[index] == expected[index], prompt
    assert max(peak_before, server.scheduler.peak_rows) == MAX_BATCH  # They did share the batch.
    server.wait_idle()


def test_a_request_joins_while_another_decodes(server, tiny_lm, monkeypatch):
    monkeypatch.setattr(server.scheduler, "recent", 0)  # Earlier tests' load is forgotten.
    tokenizer = tiny_lm.preprocessor.tokenizer
    prompt = [tokenizer.bos_token_id] + [int(t) for t in tokenizer(PROMPTS[6])]
    long_ids = expected_ids(tiny_lm, prompt, 96)
    assert len(long_ids) == 96, "the long request must not stop early"
    short_text = expected_text(tiny_lm, PROMPTS[7], 8)
    stream = server.client.completions.create(
        model=MODEL, prompt=PROMPTS[6], max_tokens=96, stream=True
    )
    pieces = [next(stream).choices[0].text]  # Decoding has begun.
    assert server.scheduler.active_rows == [(1, 0)]  # Alone: in the 1-row batch.
    short = server.client.completions.create(model=MODEL, prompt=PROMPTS[7], max_tokens=8)
    assert server.scheduler.active_rows == [(1, 0)]  # The long one still decodes.
    assert short.choices[0].text == short_text
    pieces += [chunk.choices[0].text for chunk in stream]
    assert "".join(pieces) == tokenizer.detokenize(long_ids)


def test_a_quiet_server_sizes_its_batch_by_the_recent_load(server, tiny_lm, monkeypatch):
    """A burst of clients coming back a moment apart shares one batch; a lone client later not."""
    server.wait_idle()
    threads = [
        threading.Thread(
            target=server.client.completions.create,
            kwargs=dict(model=MODEL, prompt=PROMPTS[i], max_tokens=4),
        )
        for i in range(MAX_BATCH)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    server.wait_idle()
    expected = expected_text(tiny_lm, PROMPTS[6], 96)  # 96 tokens: it decodes a while.
    for recent, slot in ((60.0, (MAX_BATCH, 0)), (0.0, (1, 0))):
        monkeypatch.setattr(server.scheduler, "recent", recent)
        stream = server.client.completions.create(
            model=MODEL, prompt=PROMPTS[6], max_tokens=96, stream=True
        )
        pieces = [next(stream).choices[0].text]
        assert server.scheduler.active_rows == [slot]
        pieces += [chunk.choices[0].text for chunk in stream]
        assert "".join(pieces) == expected
        server.wait_idle()


def test_seeded_sampling_is_reproducible(server):
    def sample(seed):
        return (
            server.client.completions.create(
                model=MODEL, prompt=PROMPTS[1], max_tokens=12, temperature=1.0, seed=seed
            )
            .choices[0]
            .text
        )

    assert sample(7) == sample(7)


def test_client_dropping_mid_stream_frees_its_row(server, tiny_lm):
    cancelled = server.scheduler.finished["cancelled"]
    body = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": CONTEXT - 16, "stream": True}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "x"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")  # The stream has begun.
    connection.sock.shutdown(2)
    connection.close()
    server.wait_idle()
    assert server.scheduler.finished["cancelled"] == cancelled + 1
    # The server keeps serving.
    response = server.client.completions.create(model=MODEL, prompt=PROMPTS[5], max_tokens=8)
    assert response.choices[0].text == expected_text(tiny_lm, PROMPTS[5], 8)


BAD_REQUESTS = {
    "malformed JSON": ("/v1/completions", b'{"model": "tiny", "prompt": ', 400, None),
    "not an object": ("/v1/completions", [1, 2], 400, None),
    "missing model": ("/v1/completions", {"prompt": "hi"}, 400, "model"),
    "missing prompt": ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    "missing messages": ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    "bad role": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages",
    ),
    "max_tokens a string": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "max_tokens": "ten"},
        400,
        "max_tokens",
    ),
    "max_tokens zero": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "max_tokens": 0},
        400,
        "max_tokens",
    ),
    "temperature negative": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "temperature": -1},
        400,
        "temperature",
    ),
    "top_p above one": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "top_p": 1.5},
        400,
        "top_p",
    ),
    "top_k a float": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "top_k": 2.5},
        400,
        "top_k",
    ),
    "stream not a bool": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "stream": "yes"},
        400,
        "stream",
    ),
    "stop not strings": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "stop": [1]},
        400,
        "stop",
    ),
    "n of two": ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 2}, 400, "n"),
    "unknown model": ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    "unknown route": ("/v1/embeddings", {"model": MODEL, "input": "hi"}, 404, None),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_openai_error_objects(server, case):
    path, data, status, param = BAD_REQUESTS[case]
    code, body = server.post(path, data)
    assert code == status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


def test_context_overflow_names_both_numbers(server, tiny_lm):
    prompt_tokens = len(tiny_lm.preprocessor.tokenizer(PROMPTS[0])) + 1
    with pytest.raises(openai.BadRequestError) as raised:
        server.client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=CONTEXT)
    error = raised.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert f"({prompt_tokens} tokens)" in error["message"]
    assert f"({CONTEXT})" in error["message"] and f"context of {CONTEXT}" in error["message"]
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(
            model="other", messages=[{"role": "user", "content": "hi"}]
        )
    # The server keeps serving after bad requests.
    response = server.client.completions.create(model=MODEL, prompt="hello", max_tokens=4)
    assert response.choices[0].text == expected_text(tiny_lm, "hello", 4)
