"""Interactive latency: what a new prompt length, sampler setting or chat turn costs.

Real Gemma 3 270M (the embedded `gemma3_270m`), float32, greedy unless noted,
one process per backend, beside keras-hub 0.32 and (PyTorch) HF transformers
on the same weights (the `export_to_transformers` export that
`generate_benchmark.py` writes):

    python benchmarks/recompile_benchmark.py             # all three backends
    python benchmarks/recompile_benchmark.py --backend jax

Per backend, after one warm-up call:
- each new case (prompt lengths 13-1,000 tokens; five sampler settings; chat
  turns 2-4) run once ("first") and again ("repeat"): first / repeat, the
  programs compiled (`generator.compile_count`) and, on JAX, backend compile
  seconds counted with `jax.monitoring`;
- a ~1,100-token prompt + 16 new tokens, ours and keras-hub (HF on PyTorch);
- time to first token of a 400-token prompt (ours streaming; peers asked for
  one new token);
- steady-state decode: 6-token prompt + 32 new tokens, ours / keras-hub;
- JAX only: a second process's first call / the first process's, with a
  fresh persistent compilation cache for the pair.
Threads are pinned to the machine's cores (`--threads`, default all of them).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = "The capital of France is"
SETTINGS = [
    {"temperature": 0.8, "top_k": 40},
    {"top_p": 0.9},
    {"min_p": 0.1},
    {"temperature": 1.7, "top_k": 7},
    {"repetition_penalty": 1.3},
]
LENGTHS = (13, 50, 160, 400, 1000)
HERE = os.path.dirname(os.path.abspath(__file__))


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


class CompileClock:
    """Seconds of XLA backend compilation on JAX (0 elsewhere), from `jax.monitoring`."""

    def __init__(self, backend):
        self.seconds = 0.0
        if backend == "jax":
            import jax

            def listener(event, duration, **kwargs):
                if event == "/jax/core/compile/backend_compile_duration":
                    self.seconds += duration

            jax.monitoring.register_event_duration_secs_listener(listener)


def text_of_length(tokenizer, count):
    words = " ".join(f"item {i} then" for i in range(count))
    return tokenizer.detokenize(tokenizer.tokenize(words)[: count - 1])


def measure_case(lm, clock, function):
    compiles, seconds = lm.generator.compile_count, clock.seconds
    first, _ = timed(function)
    first_compiles, first_compile_s = lm.generator.compile_count - compiles, clock.seconds - seconds
    repeat, _ = timed(function)
    return {
        "first_s": round(first, 3),
        "repeat_s": round(repeat, 3),
        "first_over_repeat": round(first / repeat, 2),
        "programs_compiled": first_compiles,
        "backend_compile_s": round(first_compile_s, 3),
    }


def first_call_only():
    import keras_gemma

    lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    seconds, _ = timed(lambda: lm.generate(PROMPT, max_new_tokens=16))
    print(json.dumps({"first_call_s": seconds}))


def second_process(args):
    """First call in two fresh processes sharing a new persistent compilation cache."""
    environment = dict(os.environ, KERAS_BACKEND="jax")
    environment["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_")
    times = []
    for _ in range(2):
        command = [sys.executable, __file__, "--first-call-only", "--threads", str(args.threads)]
        output = subprocess.run(command, env=environment, capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(output.stderr[-2000:])
        times.append(json.loads(lines[-1])["first_call_s"])
    return {
        "first_process_s": round(times[0], 2),
        "second_process_s": round(times[1], 2),
        "ratio": round(times[1] / times[0], 2),
    }


def peers(backend, export_dir):
    """`{name: generate(text, new_tokens)}` for keras-hub and (PyTorch) transformers."""
    runners = {}
    import keras_hub

    hub = keras_hub.models.Gemma3CausalLM.from_preset(export_dir)
    hub.compile(sampler="greedy")

    def hub_run(text, new_tokens):
        length = len(hub.preprocessor.tokenizer.tokenize(text)) + 1 + new_tokens
        return hub.generate(text, max_length=length, stop_token_ids=None)

    runners["keras-hub 0.32"] = hub_run
    if backend == "torch":
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(export_dir).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)

        def hf_run(text, new_tokens):
            batch = tokenizer([text], return_tensors="pt")
            with torch.inference_mode():
                return model.generate(
                    **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )

        runners[f"transformers {transformers.__version__} eager"] = hf_run
    return runners


def interleaved_medians(cases, runs):
    """`{name: median seconds}`; each warmed once, then run i of every case before run i + 1.

    A machine whose speed drifts (other tenants) slows every library alike.
    """
    for function in cases.values():
        function()
    times = {name: [] for name in cases}
    for _ in range(runs):
        for name, function in cases.items():
            times[name].append(timed(function)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def one_backend(args):
    import keras

    import keras_gemma

    backend = keras.config.backend()
    clock = CompileClock(backend)
    lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    tokenizer = lm.preprocessor.tokenizer
    result = {"backend": backend}
    warm_up, _ = timed(lambda: lm.generate(PROMPT, max_new_tokens=16))
    result["warm_up_call_s"] = round(warm_up, 2)
    result["warm_up_programs"] = lm.generator.compile_count
    cases = {}
    for length in LENGTHS:
        text = text_of_length(tokenizer, length)
        cases[f"prompt_{length}"] = measure_case(
            lm, clock, lambda text=text: lm.generate(text, max_new_tokens=16, stop_token_ids=None)
        )
    for settings in SETTINGS:
        name = "sampler_" + "_".join(f"{k}={v}" for k, v in settings.items())
        cases[name] = measure_case(
            lm,
            clock,
            lambda s=settings: lm.generate(PROMPT, max_new_tokens=16, seed=1, **s),
        )
    chat = lm.chat_session()
    chat.send("Hello, who are you?", max_new_tokens=16)
    for turn in range(2, 5):
        message = f"Tell me fact number {turn} about the sea."
        compiles, seconds = lm.generator.compile_count, clock.seconds
        elapsed, _ = timed(lambda m=message: chat.send(m, max_new_tokens=16))
        cases[f"chat_turn_{turn}"] = {
            "s": round(elapsed, 3),
            "programs_compiled": lm.generator.compile_count - compiles,
            "backend_compile_s": round(clock.seconds - seconds, 3),
        }
    result["cases"] = cases
    export_dir = os.path.join(tempfile.gettempdir(), "keras_gemma_bench", "gemma3_270m_hf")
    if not os.path.isfile(os.path.join(export_dir, "model.safetensors")):
        lm.export_to_transformers(export_dir)
    others = {} if args.skip_peers else peers(backend, export_dir)
    long_text = text_of_length(tokenizer, 1100)
    ttft_text = text_of_length(tokenizer, 400)

    def ours_ttft():
        return next(iter(lm.generate(ttft_text, max_new_tokens=8, stream=True, strip_prompt=True)))

    texts = {"long_1100_plus_16_s": (long_text, 16), "ttft_400_s": (ttft_text, 1)}
    texts["decode_6_plus_32_s"] = (PROMPT, 32)
    comparisons = {}
    for metric, (text, new_tokens) in texts.items():
        if metric == "ttft_400_s":
            cases = {"keras_gemma": ours_ttft}
        else:
            cases = {
                "keras_gemma": lambda t=text, n=new_tokens: lm.generate(
                    t, max_new_tokens=n, stop_token_ids=None
                )
            }
        for name, run in others.items():
            cases[name] = lambda run=run, t=text, n=new_tokens: run(t, n)
        comparisons[metric] = interleaved_medians(cases, args.runs)
    for values in comparisons.values():
        ours = values["keras_gemma"]
        for name in list(values):
            if name != "keras_gemma":
                values[f"ours/{name}"] = round(ours / values[name], 2)
            values[name] = round(values[name], 3)
    result["comparisons"] = comparisons
    if backend == "jax" and not args.skip_second_process:
        result["second_process"] = second_process(args)
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-second-process", action="store_true")
    parser.add_argument("--first-call-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_call_only:
        first_call_only()
        return
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend  # Keras is not imported yet.
        if args.backend == "torch":
            import torch

            torch.set_num_threads(args.threads)
        one_backend(args)
        return
    for backend in ("jax", "tensorflow", "torch"):
        command = [sys.executable, __file__, "--backend", backend, "--runs", str(args.runs)]
        command += ["--threads", str(args.threads)]
        command += ["--skip-peers"] if args.skip_peers else []
        command += ["--skip-second-process"] if args.skip_second_process else []
        environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        environment.setdefault("OMP_NUM_THREADS", str(args.threads))
        output = subprocess.run(command, env=environment, capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode or not lines:
            print(f"{backend} failed:\n{output.stderr[-3000:]}", file=sys.stderr)
            continue
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
