"""LoRA rank 4 training throughput and peak memory: keras_gemma vs keras-hub.

Same Gemma 3 270M weights (ours from the embedded `gemma3_270m`; keras-hub's
`Gemma3Backbone` built from the matching config with the weights copied over),
LoRA rank 4 on query and value (keras-hub's default targets), AdamW, batch
2 x 256 random tokens, float32 on CPU. Each (backend, library) runs in its own
process so peak RSS (`ru_maxrss`, weights included) is its own.

    python benchmarks/lora_throughput.py                      # every backend
    python benchmarks/lora_throughput.py --backends jax --steps 3 --rounds 2
"""

import argparse
import json
import os
import subprocess
import sys
import time

BATCH, LENGTH, RANK = 2, 256, 4


def keras_hub_causal_lm(ours):
    """keras-hub's Gemma3CausalLM with our backbone's weights."""
    import keras_hub

    config = ours.get_config()
    sliding = [t == "sliding_attention" for t in config["layer_types"]]
    expected = [i % 6 < 5 for i in range(config["num_layers"])]
    if sliding != expected:
        raise ValueError("keras-hub's Gemma3Backbone hard-codes 5 sliding : 1 global layers.")
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=config["vocabulary_size"],
        image_size=None,
        num_layers=config["num_layers"],
        num_query_heads=config["num_query_heads"],
        num_key_value_heads=config["num_key_value_heads"],
        hidden_dim=config["hidden_dim"],
        intermediate_dim=config["intermediate_dim"],
        head_dim=config["head_dim"],
        query_head_dim_normalize=True,
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=config["sliding_window_size"],
        local_rope_scaling_factor=1.0,
        global_rope_scaling_factor=config["rope_scaling_factor"],
        layer_norm_epsilon=config["layer_norm_epsilon"],
    )
    # Same kernel layouts; our FFN layers sit under `feed_forward/`.
    ours_by_path = {v.path.replace("feed_forward/", ""): v for v in ours.weights}
    for variable in backbone.weights:
        path = (
            variable.path.split("/", 1)[1]
            if variable.path.startswith("gemma3_backbone/")
            else variable.path
        )
        variable.assign(ours_by_path.pop(path))
    if ours_by_path:
        raise ValueError(f"Unmapped weights: {sorted(ours_by_path)[:5]}")
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def run_one(library, steps):
    import resource

    import keras
    import numpy as np

    import keras_gemma

    ours = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    if library == "keras_hub":
        model = keras_hub_causal_lm(ours.backbone)
        del ours
        model.backbone.enable_lora(RANK)
    else:
        model = ours
        model.backbone.enable_lora(RANK)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    generator = np.random.default_rng(0)
    x = {
        "token_ids": generator.integers(3, 262_144, (BATCH, LENGTH)).astype("int32"),
        "padding_mask": np.ones((BATCH, LENGTH), "int32"),
    }
    y = np.roll(x["token_ids"], -1, axis=1)
    start = time.perf_counter()
    first_loss = model.train_on_batch(x, y)  # compiles
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return {
        "tokens_per_s": steps * BATCH * LENGTH / elapsed,
        "step_s": elapsed / steps,
        "first_step_s": compile_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable": trainable,
        "loss": [float(np.ravel(first_loss)[0]), float(np.ravel(loss)[0])],
    }


def run_child(backend, library, steps, timeout):
    environment = dict(os.environ, KERAS_BACKEND=backend)
    command = [sys.executable, __file__, "--child", backend, library, "--steps", str(steps)]
    try:
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
    return (
        json.loads(lines[-1][7:]) if lines else {"error": result.stderr.strip().splitlines()[-1:]}
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--libraries", nargs="+", default=["keras_gemma", "keras_hub"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating runs per (backend, library)"
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds per (backend, library)")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "LIBRARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT=" + json.dumps(run_one(args.child[1], args.steps)))
        return
    rows = []
    for backend in args.backends:
        # Libraries take turns (ours, keras-hub, ours, ...) so a machine whose
        # speed drifts weighs on both alike; each row is the round with the
        # median tokens/s (the upper one of an even count: of two, the faster).
        runs = {library: [] for library in args.libraries}
        for _ in range(args.rounds):
            for library in args.libraries:
                row = run_child(backend, library, args.steps, args.timeout)
                runs[library].append(row)
                print(backend, library, row, flush=True)
        for library, results in runs.items():
            finished = sorted(
                (r for r in results if "error" not in r), key=lambda r: r["tokens_per_s"]
            )
            rows.append(
                (backend, library, finished[len(finished) // 2] if finished else results[-1])
            )
    print(f"\nLoRA rank {RANK} (query, value), batch {BATCH} x {LENGTH}, float32, CPU")
    print(
        f"{'backend':<11}{'library':<13}{'tokens/s':>10}{'step s':>9}"
        f"{'1st step s':>12}{'peak RSS GB':>13}{'trainable':>11}"
    )
    for backend, library, row in rows:
        if "error" in row:
            print(f"{backend:<11}{library:<13}  {row['error']}")
            continue
        print(
            f"{backend:<11}{library:<13}{row['tokens_per_s']:>10.1f}{row['step_s']:>9.2f}"
            f"{row['first_step_s']:>12.1f}{row['peak_rss_gb']:>13.2f}{row['trainable']:>11,}"
        )


if __name__ == "__main__":
    main()
