"""
Title: One model, three backends
Author: keras_gemma contributors
Date created: 2025/01/01
Last modified: 2025/01/01
Description: Run the same Gemma on JAX, PyTorch and TensorFlow, and move presets between them.
Accelerator: None (runs on a laptop CPU)
"""

"""
## Introduction

`keras_gemma` is written against `keras.ops` and `keras.layers` only, so the
same model code runs on JAX, PyTorch and TensorFlow. The backend is picked the
Keras way: the `KERAS_BACKEND` environment variable, read once when Keras is
imported. This guide shows how to pick it, what changes between backends
(the tensor types you get back, how generation is compiled) and what does not
(the weights, the presets, the generated text).

Install the backends you want with keras_gemma, from a checkout of its
repository (it is not on PyPI):

```shell
pip install ".[jax,embedded]"         # JAX
pip install ".[torch,embedded]"       # PyTorch
pip install ".[tensorflow,embedded]"  # TensorFlow (+ tensorflow-text)
```

JAX and PyTorch users never need TensorFlow: the tokenizer uses the
`sentencepiece` package directly.

(The tests run this guide on a tiny random model: set
`KERAS_GEMMA_GUIDE_TINY=1` to do the same.)

## Pick the backend before importing Keras

Either in the shell, `KERAS_BACKEND=torch python my_script.py`, or at the very
top of the program, before anything imports Keras:
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # "jax", "torch" or "tensorflow"

import importlib.util
import subprocess
import sys
import tempfile

import keras
import numpy as np

import keras_gemma

print("Keras backend:", keras.config.backend())

"""
From a shell, the command line takes `--backend`:

```shell
keras-gemma --backend torch generate "The capital of France is"
```

Once Keras is imported the backend is fixed for the process. To compare
backends, run one process per backend, as this guide does below.

## The same model on any backend
"""

TINY = os.environ.get("KERAS_GEMMA_GUIDE_TINY") == "1"
workdir = tempfile.mkdtemp()

if TINY:
    from keras_gemma.testing.configs import tiny_config
    from keras_gemma.testing.vocab import build_tiny_vocabulary

    keras.utils.set_random_seed(0)
    tokenizer = keras_gemma.GemmaTokenizer(proto=build_tiny_vocabulary(workdir))
    backbone = keras_gemma.GemmaBackbone(
        **tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size)
    )
    gemma_lm = keras_gemma.GemmaCausalLM(backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer))
else:
    gemma_lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")

prompt = "The capital of France is"
text = gemma_lm.generate(prompt, max_new_tokens=8)
print(repr(text))

"""
Calling the model gives the backend's own tensor type: a `jax.Array`, a
`torch.Tensor` or a `tf.Tensor`. `keras.ops` works on all of them, and
`keras.ops.convert_to_numpy` turns any of them into NumPy.
"""

inputs = gemma_lm.preprocessor.generate_preprocess([prompt])
logits = gemma_lm(inputs)
print(type(logits).__module__, type(logits).__name__, tuple(logits.shape))
next_token = int(keras.ops.convert_to_numpy(keras.ops.argmax(logits[0, -1])))
print("next token:", repr(gemma_lm.preprocessor.tokenizer.detokenize([next_token])))

"""
`generate` is compiled on every backend: the JAX path jits the whole decoding
loop, TensorFlow uses `tf.function(jit_compile=True)` and PyTorch records one
decode step with `torch.jit.trace` and replays it (no per-op Python). The first
call with a new shape bucket compiles (or traces); later calls with shapes in
the same bucket reuse it.

## Move a preset between backends

A preset directory holds the configuration, the weights (`.h5`) and the
vocabulary. Nothing in it depends on the backend that wrote it.
"""

preset_dir = os.path.join(workdir, "my_gemma")
gemma_lm.save_to_preset(preset_dir)
print(sorted(os.listdir(preset_dir)))

"""
Load it in a fresh process on each other installed backend, generate with the
same (greedy) settings, and compare. Greedy decoding in float32 gives the
same text everywhere.
"""

CHILD = """
import sys
import keras_gemma
lm = keras_gemma.GemmaCausalLM.from_preset(sys.argv[1])
print(repr(lm.generate(sys.argv[2], max_new_tokens=8)))
"""

current = keras.config.backend()
module_of = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
others = [
    name for name in module_of if name != current and importlib.util.find_spec(module_of[name])
]
if TINY:
    others = others[:1]  # One other backend is enough for the tests.

for backend in others:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, preset_dir, prompt],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    other_text = result.stdout.strip().splitlines()[-1]
    print(f"{backend:>10}: {other_text}")
    assert other_text == repr(text), (backend, other_text, text)

"""
## Backend-specific training loops

`fit` is the same everywhere. If you write your own training step, use the
backend's usual tools on top of the model: `jax.grad` with
`model.stateless_call`, `torch` autograd on the model's outputs, or
`tf.GradientTape`. The weights are Keras variables either way, and a model
trained on one backend saves a preset that loads on the others.

## Numbers

`keras.ops.convert_to_numpy` is the portable way out of a backend tensor; for
example the per-token log-likelihoods from `score` are already NumPy:
"""

scores = gemma_lm.score(prompt)
print(np.round(scores, 3))
