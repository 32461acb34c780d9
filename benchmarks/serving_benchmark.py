"""OpenAI-API serving throughput and latency with 1, 4, 8, 16 concurrent clients.

Starts a server command in a subprocess (by default `keras-gemma serve`;
`--transformers` also runs `transformers serve PATH --continuous-batching`,
a benchmark-only dependency, `transformers[serving]`), waits for `/health`,
and sends each client's streaming completion requests with the `openai`
client. Per concurrency level: total new tokens/s (all clients, wall
clock), time to first token and per-token latency (time between the first
and last streamed text over the tokens between) p50/p95, and whether every
greedy text equals the one-client text of the same prompt. One JSON line per server and level,
then one comparing the servers' greedy texts prompt by prompt.

    PYTHONPATH=. KERAS_BACKEND=jax python benchmarks/serving_benchmark.py \
        --preset gemma3_270m --max-tokens 64 --levels 1 4 8 16
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import openai

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three uses of a paperclip:",
    "The quick brown fox",
    "Explain photosynthesis in one sentence.",
    "Once upon a time, in a small village,",
    "The best way to learn a language is",
    "Python is a programming language that",
]


def wait_healthy(url, process, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def one_request(client, model, prompt, max_tokens, chat):
    start = time.perf_counter()
    times, pieces, tokens = [], [], None
    if chat:
        create = client.chat.completions.create
        request = dict(messages=[{"role": "user", "content": prompt}])
    else:
        create = client.completions.create
        request = dict(prompt=prompt)
    stream = create(
        model=model,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **request,
    )
    for chunk in stream:
        text = None
        if chunk.choices:
            choice = chunk.choices[0]
            text = choice.delta.content if chat else choice.text
        if text:
            times.append(time.perf_counter())
            pieces.append(text)
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    return start, times, "".join(pieces), tokens


def run_level(url, model, clients, max_tokens, rounds, chat):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    results = [[] for _ in range(clients)]

    def worker(index):
        for r in range(rounds):
            prompt = PROMPTS[(index + r) % len(PROMPTS)]
            results[index].append((prompt, *one_request(client, model, prompt, max_tokens, chat)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ttft, per_token, texts, total = [], [], {}, 0
    for runs in results:
        for prompt, start, times, text, tokens in runs:
            texts.setdefault(prompt, set()).add(text)
            tokens = len(times) if tokens is None else tokens  # No usage: count chunks.
            total += tokens
            if times:
                ttft.append(times[0] - start)
                if tokens > 1:
                    per_token.append((times[-1] - times[0]) / (tokens - 1))
    return wall, ttft, per_token, texts, total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--transformers", default=None, help="HF checkpoint dir to serve too")
    parser.add_argument(
        "--transformers-path",
        default=None,
        help="extra PYTHONPATH for `transformers serve` only (where its serving extra is)",
    )
    parser.add_argument("--skip-keras-gemma", action="store_true")
    parser.add_argument("--chat", action="store_true", help="chat completions (else completions)")
    args = parser.parse_args()
    servers = [
        (
            "keras_gemma",
            [sys.executable, "-m", "keras_gemma", "serve", args.preset, "--port", str(args.port)]
            + ["--max-batch", str(args.max_batch), "--model-name", "bench"],
            "bench",
            dict(os.environ),
        )
    ]
    if args.skip_keras_gemma:
        servers = []
    if args.transformers:
        command = [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve"]
        command += [args.transformers, "--continuous-batching", "--port", str(args.port)]
        env = dict(os.environ)
        if args.transformers_path:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (args.transformers_path, env.get("PYTHONPATH")) if p
            )
        servers.append(("transformers", command, args.transformers, env))
    url = f"http://127.0.0.1:{args.port}"
    texts_by_server = {}  # server -> its greedy text of each prompt
    for name, command, model, env in servers:
        process = subprocess.Popen(command, env=env)
        try:
            wait_healthy(url, process)
            run_level(url, model, 1, 4, 1, args.chat)  # Warm-up.
            solo = None
            for clients in args.levels:
                wall, ttft, per_token, texts, tokens = run_level(
                    url, model, clients, args.max_tokens, args.rounds, args.chat
                )
                flat = {p: next(iter(t)) for p, t in texts.items()}
                if solo is None:
                    solo = flat
                texts_by_server.setdefault(name, {}).update(flat)
                same = all(len(t) == 1 for t in texts.values()) and all(
                    solo.get(p, text) == text for p, text in flat.items()
                )
                record = {
                    "server": name,
                    "endpoint": "chat" if args.chat else "completions",
                    "clients": clients,
                    "requests": clients * args.rounds,
                    "max_tokens": args.max_tokens,
                    "wall_s": round(wall, 2),
                    "tokens": tokens,
                    "tokens_per_s": round(tokens / wall, 1),
                    "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3),
                    "ttft_p95_s": round(float(np.percentile(ttft, 95)), 3),
                    "token_p50_ms": round(1000 * float(np.percentile(per_token, 50)), 1),
                    "token_p95_ms": round(1000 * float(np.percentile(per_token, 95)), 1),
                    "greedy_equal_to_one_client": same,
                }
                print(json.dumps(record), flush=True)
        finally:
            process.terminate()
            process.wait(60)
    if (
        len(texts_by_server) > 1
    ):  # Greedy texts of the servers against each other, prompt by prompt.
        (first, a), (second, b) = list(texts_by_server.items())[:2]
        same = [p for p in a if a[p] == b.get(p)]
        record = {"servers": [first, second], "prompts": len(a), "greedy_texts_equal": len(same)}
        record["differing"] = {p: [a[p], b.get(p)] for p in a if p not in same}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
