"""The logits head of Gemma 3 270M (262,144 x 640) times one decode row, per backend and spelling.

Backs the kernel choice in `keras_gemma/generation/kernels.py`: which
float32, bfloat16, int8 and int4 spellings each backend runs fast on this CPU.
Random weights of the real shape; median of `--repeats` calls after two
warm-up calls; milliseconds per call.

    python benchmarks/matvec_kernels.py --backend torch     # or jax, tensorflow
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/matvec_kernels.py --backend jax
"""

import argparse
import statistics
import time

import numpy as np

ROWS, WIDTH = 262144, 640


def timed(function, repeats):
    function()
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def weights():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((ROWS, WIDTH), dtype=np.float32)
    scale = np.abs(table).max(axis=1) / 127
    quantized = np.round(table / scale[:, None]).astype(np.int8)
    row = rng.standard_normal((1, WIDTH), dtype=np.float32)
    return table, scale.astype(np.float32), quantized, row


def torch_cases(repeats, threads):
    import torch

    torch.set_num_threads(threads)
    table, scale, quantized, row = (torch.from_numpy(a) for a in weights())
    table_bf16, row_bf16 = table.bfloat16(), row.bfloat16()
    group = 128
    grouped = table.reshape(ROWS, WIDTH // group, group)
    low = grouped.amin(-1)
    step = (grouped.amax(-1) - low) / 15
    levels = torch.round((grouped - low[..., None]) / step[..., None]).clamp(0, 15)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        levels.to(torch.int32).reshape(ROWS, WIDTH), 2
    )
    scale_zero = torch.stack([step, low + 8 * step], -1).transpose(0, 1).contiguous()
    int8pack, int4pack = (
        torch.ops.aten._weight_int8pack_mm,
        torch.ops.aten._weight_int4pack_mm_for_cpu,
    )
    return {
        "float32 table @ row.T": lambda: table @ row.T,
        "bfloat16 table @ row.T": lambda: table_bf16 @ row_bf16.T,
        "int8 _weight_int8pack_mm, float32 row": lambda: int8pack(row, quantized, scale),
        "int8 _weight_int8pack_mm, bfloat16 row": lambda: int8pack(
            row_bf16, quantized, scale.bfloat16()
        ),
        "int4 _weight_int4pack_mm_for_cpu, float32 row": lambda: int4pack(
            row, packed, group, scale_zero
        ),
        "int4 _weight_int4pack_mm_for_cpu, bfloat16 row": lambda: int4pack(
            row_bf16, packed, group, scale_zero.bfloat16()
        ),
    }


def jax_cases(repeats, threads):
    import jax
    import jax.numpy as jnp

    table, scale, quantized, row = (jnp.asarray(a) for a in weights())
    table_bf16 = table.astype(jnp.bfloat16)

    def int8_dot(quantized, scale, row):
        row_scale = jnp.max(jnp.abs(row)) / 127
        row_int8 = jnp.round(row / row_scale).astype(jnp.int8)
        product = jax.lax.dot(quantized, row_int8.T, preferred_element_type=jnp.int32)
        return product.astype(jnp.float32) * scale[:, None] * row_scale

    spellings = {
        "float32 table @ row.T": (lambda t, r: t @ r.T, table, row),
        "bfloat16 table @ row.T": (lambda t, r: t @ r.T.astype(jnp.bfloat16), table_bf16, row),
        "int8 -> float32 then dot": (
            lambda q, s, r: (q.astype(jnp.float32) @ r.T) * s[:, None],
            quantized,
            scale,
            row,
        ),
        "int8 x int8 dot (int32)": (int8_dot, quantized, scale, row),
    }
    cases = {}
    for name, (function, *arguments) in spellings.items():
        jitted = jax.jit(function)
        cases[name] = lambda f=jitted, a=arguments: f(*a).block_until_ready()
    return cases


def tensorflow_cases(repeats, threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    table, scale, quantized, row = (tf.constant(a) for a in weights())
    table, quantized = tf.Variable(table), tf.Variable(quantized)
    table_bf16 = tf.Variable(tf.cast(table, tf.bfloat16))
    spellings = {
        "float32 table @ row.T": (lambda t, r: tf.matmul(t, r, transpose_b=True), table, row),
        "bfloat16 table @ row.T": (
            lambda t, r: tf.matmul(t, tf.cast(r, tf.bfloat16), transpose_b=True),
            table_bf16,
            row,
        ),
        "int8 -> float32 then matmul": (
            lambda q, s, r: tf.matmul(tf.cast(q, tf.float32), r, transpose_b=True) * s[:, None],
            quantized,
            scale,
            row,
        ),
    }
    cases = {}
    for name, (function, *arguments) in spellings.items():
        compiled = tf.function(function, autograph=False)
        cases[name] = lambda f=compiled, a=arguments: f(*a).numpy()
        xla = tf.function(function, autograph=False, jit_compile=True)
        cases[name + " (XLA)"] = lambda f=xla, a=arguments: f(*a).numpy()
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("torch", "jax", "tensorflow"), required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    make = {"torch": torch_cases, "jax": jax_cases, "tensorflow": tensorflow_cases}[args.backend]
    for name, function in make(args.repeats, args.threads).items():
        print(f"{args.backend:10s} {name:48s} {timed(function, args.repeats):8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
