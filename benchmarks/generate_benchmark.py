"""Generation speed: keras_gemma beside keras-hub 0.32 and HF transformers.

Same weights everywhere: the real Gemma 3 270M that `gemma3_270m` loads
offline, exported once with `export_to_transformers`; keras-hub and
transformers load that export. One process per backend:

    python benchmarks/generate_benchmark.py              # all three backends
    python benchmarks/generate_benchmark.py --backend jax --runs 5

Reported per backend: first call (compile included), median warm latency of
32 new tokens after the 6-token prompt at batch 1 and batch 8, a 1,000-token
prompt + 16 new tokens, peak RSS, and the ratio ours / peer (< 1 is faster).
Warm-up runs are excluded; the median of `--runs` runs is reported.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = "The capital of France is"
NEW_TOKENS = 32
LONG_NEW_TOKENS = 16
LONG_PROMPT_TOKENS = 1000
EXPORT_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "keras_gemma_bench", "gemma3_270m_hf")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function, runs):
    function()  # warm-up (compiles)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_call(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def ensure_export(ours):
    if not os.path.isfile(os.path.join(EXPORT_DIR, "model.safetensors")):
        ours.export_to_transformers(EXPORT_DIR)
    return EXPORT_DIR


def long_prompt(tokenizer):
    words = ("The history of the city is long and its people have built many bridges over the river. " * 200)
    ids = tokenizer.tokenize(words)[: LONG_PROMPT_TOKENS - 1]
    return tokenizer.detokenize(ids)


def bench_ours(runs, dtype):
    import keras_gemma

    lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", dtype=dtype)
    tokenizer = lm.preprocessor.tokenizer
    results = {"prompt_tokens": 1 + len(tokenizer.tokenize(PROMPT))}
    kwargs = dict(max_new_tokens=NEW_TOKENS, stop_token_ids=None)
    results["first_call_s"], text = first_call(lambda: lm.generate(PROMPT, **kwargs))
    results["text"] = text
    results["batch1_s"] = timed(lambda: lm.generate(PROMPT, **kwargs), runs)
    results["batch8_s"] = timed(lambda: lm.generate([PROMPT] * 8, **kwargs), runs)
    long_text = long_prompt(tokenizer)
    results["long_s"] = timed(
        lambda: lm.generate(long_text, max_new_tokens=LONG_NEW_TOKENS, stop_token_ids=None), max(1, runs // 2)
    )
    results["peak_rss_mb"] = peak_rss_mb()
    return lm, results, long_text


def bench_keras_hub(export_dir, runs, prompt_tokens, long_text, dtype):
    import keras_hub

    lm = keras_hub.models.Gemma3CausalLM.from_preset(export_dir, dtype=dtype)
    lm.compile(sampler="greedy")
    length = prompt_tokens + NEW_TOKENS

    def run(prompts):
        return lm.generate(prompts, max_length=length, stop_token_ids=None)

    results = {}
    results["first_call_s"], text = first_call(lambda: run(PROMPT))
    results["text"] = text
    results["batch1_s"] = timed(lambda: run(PROMPT), runs)
    results["batch8_s"] = timed(lambda: run([PROMPT] * 8), runs)
    results["long_s"] = timed(
        lambda: lm.generate(long_text, max_length=LONG_PROMPT_TOKENS + LONG_NEW_TOKENS, stop_token_ids=None),
        max(1, runs // 2),
    )
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def bench_transformers(export_dir, runs, long_text, dtype):
    import torch
    import transformers

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch_dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)

    def run(prompts, new_tokens=NEW_TOKENS):
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return tokenizer.batch_decode(output, skip_special_tokens=True)

    tokenizer.padding_side = "left"
    results = {}
    results["first_call_s"], text = first_call(lambda: run([PROMPT]))
    results["text"] = text[0]
    results["batch1_s"] = timed(lambda: run([PROMPT]), runs)
    results["batch8_s"] = timed(lambda: run([PROMPT] * 8), runs)
    results["long_s"] = timed(lambda: run([long_text], LONG_NEW_TOKENS), max(1, runs // 2))
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def one_backend(args):
    import keras

    backend = keras.config.backend()
    lm, ours, long_text = bench_ours(args.runs, args.dtype)
    export_dir = ensure_export(lm) if args.dtype == "float32" else EXPORT_DIR
    del lm
    peers = {}
    if not args.skip_keras_hub:
        peers["keras-hub 0.32"] = bench_keras_hub(export_dir, args.runs, ours["prompt_tokens"], long_text, args.dtype)
    if backend == "torch" and not args.skip_transformers:
        import transformers

        peers[f"transformers {transformers.__version__}"] = bench_transformers(export_dir, args.runs, long_text, args.dtype)
    print(json.dumps({"backend": backend, "dtype": args.dtype, "ours": ours, "peers": peers}))


def table(results):
    lines = [
        "| backend | metric | keras_gemma | peer | peer time | ours / peer |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        ours = result["ours"]
        for peer, values in result["peers"].items():
            for metric in ("first_call_s", "batch1_s", "batch8_s", "long_s"):
                ratio = ours[metric] / values[metric]
                lines.append(
                    f"| {result['backend']} | {metric} | {ours[metric]:.2f} s | {peer} | "
                    f"{values[metric]:.2f} s | {ratio:.2f} |"
                )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-keras-hub", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    if args.backend:
        one_backend(args)
        return
    results = []
    for backend in ("jax", "tensorflow", "torch"):
        command = [sys.executable, __file__, "--backend", backend, "--runs", str(args.runs), "--dtype", args.dtype]
        command += ["--skip-keras-hub"] if args.skip_keras_hub else []
        environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        output = subprocess.run(command, env=environment, capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode or not lines:
            print(f"{backend} failed:\n{output.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(lines[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
