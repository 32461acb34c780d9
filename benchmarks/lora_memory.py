"""Peak memory of one LoRA training step at sequence length 2,048, with and
without gradient checkpointing (Gemma 3 270M, batch 1, float32, CPU).

Each configuration runs in its own process; peak RSS (`ru_maxrss`) includes the
weights (about 1.1 GB in float32), so the difference is the activation memory
that checkpointing saves.

    python benchmarks/lora_memory.py --backends jax torch --length 2048
"""

import argparse
import json
import os
import subprocess
import sys
import time


def run_one(checkpointing, length, rank):
    import resource

    import keras
    import numpy as np

    import keras_gemma

    model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.enable_lora(rank)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    generator = np.random.default_rng(0)
    x = {
        "token_ids": generator.integers(3, 262_144, (1, length)).astype("int32"),
        "padding_mask": np.ones((1, length), "int32"),
    }
    y = np.roll(x["token_ids"], -1, axis=1)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return {
        "weights_rss_gb": before_rss,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "first_step_s": first,
        "step_s": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--child", nargs=2, metavar=("BACKEND", "CHECKPOINTING"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        result = run_one(args.child[1] == "1", args.length, args.rank)
        print("RESULT=" + json.dumps(result))
        return
    rows = []
    for backend in args.backends:
        for checkpointing in ("0", "1"):
            command = [
                sys.executable,
                __file__,
                "--child",
                backend,
                checkpointing,
                "--length",
                str(args.length),
                "--rank",
                str(args.rank),
            ]
            try:
                result = subprocess.run(
                    command,
                    env=dict(os.environ, KERAS_BACKEND=backend),
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
                row = (
                    json.loads(lines[-1][7:])
                    if lines
                    else {"error": result.stderr.strip().splitlines()[-1:]}
                )
            except subprocess.TimeoutExpired:
                row = {"error": f"timed out after {args.timeout}s"}
            rows.append((backend, checkpointing == "1", row))
            print(backend, checkpointing, row, flush=True)
    print(f"\nGemma 3 270M, LoRA rank {args.rank}, batch 1 x {args.length}, float32, CPU")
    print(
        f"{'backend':<11}{'checkpointing':<15}{'peak RSS GB':>13}{'after load GB':>15}{'step s':>9}"
    )
    for backend, checkpointing, row in rows:
        if "error" in row:
            print(f"{backend:<11}{str(checkpointing):<15}  {row['error']}")
            continue
        print(
            f"{backend:<11}{str(checkpointing):<15}{row['peak_rss_gb']:>13.2f}"
            f"{row['weights_rss_gb']:>15.2f}{row['step_s']:>9.1f}"
        )


if __name__ == "__main__":
    main()
