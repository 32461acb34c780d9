"""Weight memory and generate speed of Gemma 3 270M in float32, bfloat16, int8 and int4.

For each precision: load the real `gemma3_270m` preset (int8 / int4: load in
float32, then Keras' `model.quantize`), sum the bytes of all variables, then
time greedy generation of 32 new tokens after a short prompt: one warm-up
call (compilation), then the median of 3. The decode rate is issue 22's
measure: new tokens after the first, `31 / (t(32 tokens) - t(1 token))`.
Resident memory is the process's VmRSS after the runs (and its peak, VmHWM),
beside llama.cpp's decode rates on the same weights for reference.

    KERAS_BACKEND=jax python benchmarks/precision.py            # one backend
    python benchmarks/precision.py --backends jax torch tensorflow
    python benchmarks/precision.py --precisions bfloat16 int8 --timeout 900

Each (backend, precision) runs in its own subprocess, killed after
`--timeout` seconds (reported as "timeout"). Prints one JSON line per run and
a table at the end.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "The capital of France is"
NEW_TOKENS = 32
PRECISIONS = ("float32", "bfloat16", "int8", "int4")
# llama.cpp on this 2-core CPU, same weights converted by its own converter
# (decode tokens/s, issue 22): f32, bf16, Q8_0, Q4_K_M.
LLAMA_CPP = {"float32": 39.3, "bfloat16": 64.2, "int8": 82.3, "int4": 80.0}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(precision, repeats=3):
    """Runs in the subprocess: one backend, one precision."""
    import keras
    import numpy as np

    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM

    start = time.perf_counter()
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    causal_lm = GemmaCausalLM.from_preset("gemma3_270m", dtype=dtype)
    if precision in ("int8", "int4"):
        causal_lm.quantize(precision)
    load_seconds = time.perf_counter() - start
    weight_bytes = sum(
        np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in causal_lm.weights
    )

    def generate(new_tokens=NEW_TOKENS):
        return causal_lm.generate(PROMPT, max_new_tokens=new_tokens, stop_token_ids=None)

    start = time.perf_counter()
    text = generate()
    warmup_seconds = time.perf_counter() - start
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate()
        timings.append(time.perf_counter() - start)
    generate(1)
    firsts = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(1)
        firsts.append(time.perf_counter() - start)
    decode_rate = (NEW_TOKENS - 1) / (statistics.median(timings) - statistics.median(firsts))
    return {
        "backend": keras.config.backend(),
        "precision": precision,
        "weight_mb": round(weight_bytes / 1e6, 1),
        "load_s": round(load_seconds, 1),
        "first_call_s": round(warmup_seconds, 2),
        "generate_s": round(statistics.median(timings), 3),
        "tokens_per_s": round(NEW_TOKENS / statistics.median(timings), 1),
        "decode_tokens_per_s": round(decode_rate, 1),
        "resident_mb": _status_mb("VmRSS"),
        "peak_resident_mb": _status_mb("VmHWM"),
        "text": text,
    }


def _status_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def run_one(backend, precision, timeout):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    command = [sys.executable, os.path.abspath(__file__), "--child", precision]
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"backend": backend, "precision": precision, "error": f"timeout after {timeout} s"}
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"backend": backend, "precision": precision, "error": completed.stderr.strip()[-300:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=[os.environ.get("KERAS_BACKEND", "jax")])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (backend, precision)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child)), flush=True)
        return
    results = []
    for backend in args.backends:
        for precision in args.precisions:
            result = run_one(backend, precision, args.timeout)
            print(json.dumps(result), flush=True)
            results.append(result)
    header = "backend     precision weights MB generate s decode tok/s  x f32  x llama.cpp  RSS MB"
    print("\n" + header)
    float32 = {
        r["backend"]: r for r in results if r.get("precision") == "float32" and "error" not in r
    }
    for r in results:
        if "error" in r:
            print(f"{r['backend']:11s} {r['precision']:9s} {r['error'][:60]}")
            continue
        base = float32.get(r["backend"])
        ratio = r["decode_tokens_per_s"] / base["decode_tokens_per_s"] if base else float("nan")
        print(
            f"{r['backend']:11s} {r['precision']:9s} {r['weight_mb']:10.1f} "
            f"{r['generate_s']:10.3f} {r['decode_tokens_per_s']:12.1f} {ratio:6.2f} "
            f"{r['decode_tokens_per_s'] / LLAMA_CPP[r['precision']]:11.2f} {r['resident_mb']:7.0f}"
        )


if __name__ == "__main__":
    main()
