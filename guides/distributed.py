"""
Title: Model parallelism, bfloat16 and int8 with keras_gemma
Author: keras_gemma contributors
Date created: 2025/01/01
Last modified: 2025/01/01
Description: Split Gemma over a device mesh with keras.distribution; shrink it with bf16, int8.
Accelerator: 8 devices (simulated on CPU here)
"""

"""
## Introduction

Gemma 27B does not fit one accelerator. Keras' distribution API splits a
model's weights over a mesh of devices: you describe the mesh, say which
axis of which weight goes along which mesh axis (a `LayoutMap`), and Keras
places every variable accordingly; XLA inserts the communication.
`GemmaBackbone.get_layout_map` writes that layout map for any Gemma config.

Model parallelism through `keras.distribution` runs on **JAX**. To try it
without 8 accelerators, ask XLA for 8 simulated CPU devices *before JAX is
imported*:

```shell
XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax python distributed.py
```

This guide uses a tiny random Gemma 3 so it runs in seconds; a real preset
works the same way (`GemmaCausalLM.from_preset(...)` inside the scope).

## Setup
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import keras
import numpy as np

import keras_gemma
from keras_gemma.testing.configs import tiny_config

if keras.config.backend() != "jax":
    print(
        "keras.distribution model parallelism needs the JAX backend; this is "
        f"{keras.config.backend()!r}. Rerun with KERAS_BACKEND=jax. (bfloat16 and "
        "int8, shown at the end, work on every backend.)"
    )
    raise SystemExit(0)

devices = keras.distribution.list_devices()
print("devices:", len(devices))

"""
## A 2 x 4 mesh and the layout map

Two mesh axes: `"batch"` for data parallelism (each batch is split in two) and
`"model"` for tensor parallelism (each weight is split in four). The layout
map splits attention heads, the feed-forward width and the vocabulary along
`"model"`, and the hidden axis along `"batch"` (FSDP-style). Gemma's
multi-query attention has a single key/value head, which cannot be split four
ways: those kernels are split along the hidden axis instead. Norms stay
whole.

`get_layout_map` needs the model config. Call it on the class with
`config=` to build the model already distributed (no full copy on one
device), or on an existing backbone: `backbone.get_layout_map(mesh)`.
"""

config = tiny_config("gemma3", hidden_dim=64, intermediate_dim=128)
mesh = keras.distribution.DeviceMesh(
    shape=(2, 4), axis_names=("batch", "model"), devices=devices[:8]
)
layout_map = keras_gemma.GemmaBackbone.get_layout_map(mesh, config=config)
for path in layout_map:
    print(f"{path:54s} {layout_map[path].axes}")

distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")

"""
## Building the model under the distribution

Variables created inside `distribution.scope()` are placed on the mesh as they
are created. (`keras.distribution.set_distribution(distribution)` does the
same globally.)
"""

keras.utils.set_random_seed(0)
with distribution.scope():
    causal_lm = keras_gemma.GemmaCausalLM(keras_gemma.GemmaBackbone(**config))

kernel = causal_lm.backbone.get_layer("decoder_block_0").attention.query.kernel
print("query kernel", kernel.shape, "->", kernel.value.sharding.spec)
print("one device holds", kernel.value.addressable_shards[0].data.shape)

"""
## Same numbers as on one device

Greedy generation and `fit` run unchanged: the compiled generate loop takes
the sharded weights as they are. Copy the weights into an undistributed model
and compare.
"""

inputs = {
    "token_ids": np.array([[2, 17, 33, 48, 61], [2, 90, 91, 92, 93]], "int32"),
    "padding_mask": np.ones((2, 5), "int32"),
}
with distribution.scope():
    parallel_tokens = causal_lm.generate(inputs, max_new_tokens=6, stop_token_ids=None)["token_ids"]
    parallel_logits = keras.ops.convert_to_numpy(causal_lm(inputs))

single = keras_gemma.GemmaCausalLM(keras_gemma.GemmaBackbone(**config))
single.set_weights(causal_lm.get_weights())
single_tokens = single.generate(inputs, max_new_tokens=6, stop_token_ids=None)["token_ids"]
difference = np.abs(keras.ops.convert_to_numpy(single(inputs)) - parallel_logits).max()
print("largest logit difference vs one device:", f"{difference:.1e}")
print("same greedy tokens:", bool((single_tokens == parallel_tokens).all()))

with distribution.scope():
    causal_lm.compile(optimizer=keras.optimizers.AdamW(1e-3))
    labels = np.roll(inputs["token_ids"], -1, axis=1)
    history = causal_lm.fit(inputs, labels, batch_size=2, epochs=2, verbose=0)
print("distributed fit loss:", [round(v, 3) for v in history.history["loss"]])

"""
## Smaller weights: bfloat16 and int8

These work on every backend, with or without a distribution.

- `dtype="bfloat16"` stores weights in 16 bits. Loaders build the model in
  bfloat16 and fill it tensor by tensor, so no float32 copy of the model
  exists on the way: `GemmaCausalLM.from_preset("gemma3_270m", dtype="bfloat16")`.
- `dtype="mixed_bfloat16"` keeps float32 weights and computes in bfloat16: the
  usual setting for training.
- `model.quantize("int8")` (or `"int4"`) is Keras' own weight quantization:
  int8 kernels with per-channel scales, a quarter of float32. A quantized
  model still generates, takes LoRA adapters (`enable_lora`) for fine-tuning,
  and `save_to_preset` / `from_preset` round-trip it exactly. It saves memory,
  not time, on a CPU; on PyTorch's CPU backend int8 generation is about 6x
  slower than float32 (Keras multiplies int8 kernels as int32 there, without
  BLAS; see benchmarks/README.md), so prefer bfloat16 there.
"""

small = keras_gemma.GemmaCausalLM(keras_gemma.GemmaBackbone(**config))
small.set_weights(single.get_weights())


def weight_megabytes(model):
    return sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in model.weights) / 1e6


before = weight_megabytes(small)
small.quantize("int8")
print(f"int8 weights: {before:.3f} MB -> {weight_megabytes(small):.3f} MB")
print(
    "int8 greedy tokens:",
    small.generate(inputs, max_new_tokens=6, stop_token_ids=None)["token_ids"][0, 5:],
)
