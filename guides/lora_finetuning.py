"""
Title: LoRA fine-tuning of Gemma with keras_gemma
Author: keras_gemma contributors
Date created: 2025/01/01
Last modified: 2025/01/01
Description: Fine-tune Gemma 3 270M on instructions with LoRA, on JAX, PyTorch or TensorFlow.
Accelerator: None (runs on a laptop CPU)
"""

"""
## Introduction

Low-Rank Adaptation (LoRA) freezes a model's weights and learns a small update
`(alpha / rank) * A @ B` for some projection matrices. With rank 8 on the query
and value projections, Gemma 3 270M trains about 0.4 million parameters instead
of 268 million, the optimizer state shrinks with it, and the adapter file is a
few megabytes.

This guide loads Gemma 3 270M, enables LoRA, fine-tunes it on a few
instruction/response pairs rendered with Gemma's chat template, generates with
the result, and saves the adapter. The same code runs on every Keras backend.
(The tests run it on a tiny random model: set `KERAS_GEMMA_GUIDE_TINY=1`.)

## Setup
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import tempfile

import keras

import keras_gemma

TINY = os.environ.get("KERAS_GEMMA_GUIDE_TINY") == "1"
workdir = tempfile.mkdtemp()
keras.utils.set_random_seed(0)

"""
## Load the model
"""

if TINY:
    from keras_gemma.testing.configs import tiny_config
    from keras_gemma.testing.vocab import build_tiny_vocabulary

    tokenizer = keras_gemma.GemmaTokenizer(proto=build_tiny_vocabulary(workdir))
    backbone = keras_gemma.GemmaBackbone(
        **tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size)
    )
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=64)
    gemma_lm = keras_gemma.GemmaCausalLM(backbone, preprocessor)
else:
    gemma_lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", sequence_length=128)
tokenizer = gemma_lm.preprocessor.tokenizer

"""
## Format the data with the chat template

Instruction-tuned Gemma models read conversations in turns:
`<start_of_turn>user ... <end_of_turn>` then `<start_of_turn>model ...`.
`apply_chat_template` renders a list of messages that way; we train on the
whole rendered text (the preprocessor adds `<bos>`).
"""

examples = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Write a short poem about the sea.", "The sea at night, the stars so bright."),
    ("What is machine learning?", "Machine learning is teaching computers from data."),
]


def render(instruction, response):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
        add_generation_prompt=False,
        tokenize=False,
    )
    return text.removeprefix("<bos>")


train_texts = [render(instruction, response) for instruction, response in examples]
print(train_texts[0])

"""
## Enable LoRA

`enable_lora` freezes every weight (embeddings and norms too) and adds
adapters through Keras' own `enable_lora` on the chosen projections:
`"query"`, `"key"`, `"value"`, `"attention_output"`, `"ffw_gating"`,
`"ffw_gating_2"`, `"ffw_linear"`, or the sets `"attention"` and `"all"`.
The summary shows the trainable count. Gradient checkpointing trades compute
for memory on long sequences.
"""

gemma_lm.enable_lora(rank=4, alpha=8, target_names=("query", "value"))
gemma_lm.enable_gradient_checkpointing()
gemma_lm.summary()

"""
## Fine-tune

`fit` takes the raw strings. Padding is masked out of the loss.
"""

gemma_lm.compile(
    optimizer=keras.optimizers.AdamW(learning_rate=5e-2 if TINY else 2e-4, weight_decay=0.01)
)
history = gemma_lm.fit(train_texts, epochs=6 if TINY else 2, batch_size=2)
print(f"fine-tuning loss: {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")

"""
## Generate

The prompt ends with an open model turn; generation stops at `<end_of_turn>`.
"""

prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}], tokenize=False
).removeprefix("<bos>")
print(gemma_lm.generate(prompt, max_new_tokens=16, strip_prompt=True))

"""
## Save the adapter, reload it, merge it

The adapter file holds only the LoRA weights with their rank, alpha and
targets. Load it onto the same base model to get the fine-tuned model back;
`merge_lora_weights` folds it into the base weights for deployment (no adapter
cost at generation), and `export_lora_to_peft` writes it for Hugging Face
`peft`.
"""

adapter_path = os.path.join(workdir, "gemma_instructions.lora.h5")
gemma_lm.save_lora_weights(adapter_path)
print(f"adapter: {os.path.getsize(adapter_path):,} bytes")

gemma_lm.export_lora_to_peft(os.path.join(workdir, "peft_adapter"))
print("peft files:", sorted(os.listdir(os.path.join(workdir, "peft_adapter"))))

gemma_lm.merge_lora_weights()
print(gemma_lm.generate(prompt, max_new_tokens=16, strip_prompt=True))
