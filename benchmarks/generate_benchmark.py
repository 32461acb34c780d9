"""Generation speed: keras_gemma beside keras-hub 0.32 and HF transformers.

Same weights everywhere: the real Gemma 3 270M that `gemma3_270m` loads
offline, exported once with `export_to_transformers`; keras-hub and
transformers load that export. One process per backend:

    python benchmarks/generate_benchmark.py              # all three backends
    python benchmarks/generate_benchmark.py --backend jax --runs 5
    python benchmarks/generate_benchmark.py --model gemma_2b_random --dtype bfloat16   # on a GPU

Reported per backend: first call (compile included), median warm latency of
32 new tokens after the 6-token prompt at batch 1 and batch 8, a 1,000-token
prompt + 16 new tokens, peak RSS, and the ratio ours / peer (< 1 is faster).
Warm-up runs are excluded; the median of `--runs` runs is reported. All
libraries are loaded in the one process and their timed runs alternate
(ours, keras-hub, HF, ours, ...), so a machine whose speed drifts (a shared
VM's memory bandwidth moved by 25% within minutes here) weighs on each alike.
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


def first_call(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def interleaved_medians(cases, runs):
    """`{library: seconds}`: median of `runs` calls, the libraries taking turns.

    Each library warms up first; then run i of every library happens before
    run i + 1 of any, so a machine that slows down (shared memory bandwidth,
    other tenants) slows every library alike.
    """
    for function in cases.values():
        function()
    times = {library: [] for library in cases}
    for _ in range(runs):
        for library, function in cases.items():
            start = time.perf_counter()
            function()
            times[library].append(time.perf_counter() - start)
    return {library: statistics.median(values) for library, values in times.items()}


def ensure_export(ours):
    if not os.path.isfile(os.path.join(EXPORT_DIR, "model.safetensors")):
        ours.export_to_transformers(EXPORT_DIR)
    return EXPORT_DIR


def long_prompt(tokenizer):
    words = " ".join(f"word{i} is followed by" for i in range(LONG_PROMPT_TOKENS))
    ids = tokenizer.tokenize(words)[: LONG_PROMPT_TOKENS - 1]
    return tokenizer.detokenize(ids)


def ours_cases(dtype):
    """Loads keras_gemma; returns `(runner, prompt_tokens, long_text, export_dir)`."""
    import keras_gemma

    lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", dtype=dtype)
    tokenizer = lm.preprocessor.tokenizer
    long_text = long_prompt(tokenizer)
    export_dir = ensure_export(lm) if dtype == "float32" else EXPORT_DIR

    def run(prompts, new_tokens=NEW_TOKENS):
        return lm.generate(prompts, max_new_tokens=new_tokens, stop_token_ids=None)

    return run, 1 + len(tokenizer.tokenize(PROMPT)), long_text, export_dir


def keras_hub_runner(export_dir, prompt_tokens, dtype):
    import keras_hub

    lm = keras_hub.models.Gemma3CausalLM.from_preset(export_dir, dtype=dtype)
    lm.compile(sampler="greedy")

    def run(prompts, new_tokens=NEW_TOKENS):
        length = (
            LONG_PROMPT_TOKENS if new_tokens == LONG_NEW_TOKENS else prompt_tokens
        ) + new_tokens
        return lm.generate(prompts, max_length=length, stop_token_ids=None)

    return run


def transformers_runner(export_dir, dtype):
    import torch
    import transformers

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch_dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    tokenizer.padding_side = "left"

    def run(prompts, new_tokens=NEW_TOKENS):
        prompts = [prompts] if isinstance(prompts, str) else prompts
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        return texts[0] if len(texts) == 1 else texts

    return run


def one_backend(args):
    import keras

    backend = keras.config.backend()
    ours, prompt_tokens, long_text, export_dir = ours_cases(args.dtype)
    runners = {"keras_gemma": ours}
    results = {"keras_gemma": {"prompt_tokens": prompt_tokens}}
    results["keras_gemma"]["first_call_s"], results["keras_gemma"]["text"] = first_call(
        lambda: ours(PROMPT)
    )
    results["keras_gemma"]["peak_rss_mb_after_load"] = peak_rss_mb()
    peers = []
    if not args.skip_keras_hub:
        peers.append(
            ("keras-hub 0.32", lambda: keras_hub_runner(export_dir, prompt_tokens, args.dtype))
        )
    if backend == "torch" and not args.skip_transformers:
        import transformers

        peers.append(
            (
                f"transformers {transformers.__version__}",
                lambda: transformers_runner(export_dir, args.dtype),
            )
        )
    for name, load in peers:
        runners[name] = load()
        results[name] = {}
        results[name]["first_call_s"], results[name]["text"] = first_call(
            lambda runner=runners[name]: runner(PROMPT)
        )
    cases = {
        "batch1_s": lambda run: run(PROMPT),
        "batch8_s": lambda run: run([PROMPT] * 8),
        "long_s": lambda run: run(long_text, LONG_NEW_TOKENS),
    }
    for metric, case in cases.items():
        runs = args.runs if metric != "long_s" else max(1, args.runs // 2)
        medians = interleaved_medians(
            {name: (lambda run=run, case=case: case(run)) for name, run in runners.items()}, runs
        )
        for name, seconds in medians.items():
            results[name][metric] = seconds
    results["keras_gemma"]["peak_rss_mb"] = peak_rss_mb()
    ours_result = results.pop("keras_gemma")
    print(
        json.dumps({"backend": backend, "dtype": args.dtype, "ours": ours_result, "peers": results})
    )


def random_2b_tokens_per_s(args):
    """Gemma 1 2B shapes, random weights: prompt 32 + 128 new tokens, batch 1.

    For a GPU (issue 7's GPU targets); `--layers` shrinks the depth for a CPU
    smoke run. Ours builds the backbone from `preset_config("gemma_2b_en")`;
    keras-hub's `GemmaBackbone` and (PyTorch) transformers load our export of
    the same weights. Reports tokens/s = 128 / median seconds per call.
    """
    import keras
    import numpy as np

    import keras_gemma

    backend = keras.config.backend()
    config = dict(keras_gemma.preset_config("gemma_2b_en"))
    if args.layers:
        config["num_layers"] = args.layers
        config["layer_types"] = config["layer_types"][: args.layers]
    keras.utils.set_random_seed(0)
    backbone = keras_gemma.GemmaBackbone(**config, dtype=args.dtype)
    lm = keras_gemma.GemmaCausalLM(backbone)
    prompt_length, new_tokens = 32, 128
    ids = (
        np.random.default_rng(0)
        .integers(3, config["vocabulary_size"], (1, prompt_length))
        .astype("int32")
    )
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    export_dir = os.path.join(
        os.path.dirname(EXPORT_DIR), f"gemma_2b_random_{config['num_layers']}_{args.dtype}"
    )
    if not os.path.isfile(os.path.join(export_dir, "config.json")):
        lm.export_to_transformers(export_dir)

    def ours():
        return lm.generate(
            inputs, max_new_tokens=new_tokens, stop_token_ids=None, strip_prompt=True
        )

    runners = {"keras_gemma": ours}
    if not args.skip_keras_hub:
        import keras_hub

        hub_backbone = keras_hub.models.GemmaBackbone.from_preset(export_dir, dtype=args.dtype)
        hub = keras_hub.models.GemmaCausalLM(backbone=hub_backbone, preprocessor=None)
        hub.compile(sampler="greedy")
        hub_inputs = {
            "token_ids": np.pad(ids, [[0, 0], [0, new_tokens]]),
            "padding_mask": np.pad(np.ones_like(ids), [[0, 0], [0, new_tokens]]),
        }
        runners["keras-hub 0.32"] = lambda: hub.generate(hub_inputs, stop_token_ids=None)
    if backend == "torch" and not args.skip_transformers:
        import torch
        import transformers

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        model = (
            transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch_dtype)
            .to(device)
            .eval()
        )
        hf_ids = torch.tensor(ids, device=device)

        def hf():
            with torch.inference_mode():
                return model.generate(
                    hf_ids,
                    attention_mask=torch.ones_like(hf_ids),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                )

        runners[f"transformers {transformers.__version__} (eager)"] = hf
    results = {}
    for name, function in runners.items():
        results[name] = {"first_call_s": first_call(function)[0]}
    for name, seconds in interleaved_medians(runners, args.runs).items():
        results[name]["call_s"] = seconds
        results[name]["tokens_per_s"] = new_tokens / seconds
    print(
        json.dumps(
            {
                "backend": backend,
                "dtype": args.dtype,
                "model": "gemma_2b_random",
                "layers": config["num_layers"],
                "device": device_name(backend),
                "results": results,
            }
        )
    )


def device_name(backend):
    """The accelerator the backend computes on, or "cpu"."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return getattr(device, "device_kind", str(device))
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (
        tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        if gpus
        else "cpu"
    )


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-keras-hub", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--model",
        default="gemma3_270m",
        choices=["gemma3_270m", "gemma_2b_random"],
        help="gemma_2b_random: Gemma 1 2B shapes, random weights, prompt 32 + 128 (for a GPU)",
    )
    parser.add_argument(
        "--layers", type=int, help="gemma_2b_random only: fewer layers, for a smoke run"
    )
    args = parser.parse_args()
    if args.backend and args.model == "gemma_2b_random":
        random_2b_tokens_per_s(args)
        return
    if args.backend:
        one_backend(args)
        return
    results = []
    for backend in ("jax", "tensorflow", "torch"):
        command = [
            sys.executable,
            __file__,
            "--backend",
            backend,
            "--runs",
            str(args.runs),
            "--dtype",
            args.dtype,
        ]
        command += ["--model", args.model] + (["--layers", str(args.layers)] if args.layers else [])
        command += ["--skip-keras-hub"] if args.skip_keras_hub else []
        command += ["--skip-transformers"] if args.skip_transformers else []
        environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        output = subprocess.run(command, env=environment, capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode or not lines:
            print(f"{backend} failed:\n{output.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(lines[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.model == "gemma3_270m":
        print(table(results))


if __name__ == "__main__":
    main()
