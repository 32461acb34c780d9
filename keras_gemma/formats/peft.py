"""LoRA adapters in Hugging Face PEFT's layout (`adapter_config.json`, safetensors).

The adapter loads with `peft.PeftModel.from_pretrained(hf_model, directory)`
onto the transformers model that `export_to_transformers` writes. Keras
multiplies `a @ b`; PEFT adds `B @ A` to HF's `[out, in]` weight:
- Dense `(in, out)`: `A = a.T`, `B = b.T`.
- attention_output `(n, h, d)` with `a (n, h, r)`: HF's input is `n*h`
  flattened head-major, so `A = a.reshape(n*h, r).T`, `B = b.T`, rank `r`.
- query/key/value `(heads, d, h)` with a per-head `a (heads, d, r)` and a
  shared `b (r, h)`: HF's output is `heads*h`, so the exact PEFT form has
  rank `heads*r`: `A` stacks the heads' `a`, `B` is block-diagonal with `b.T`
  per head. Those modules declare their rank in `rank_pattern` and
  `alpha_pattern`, so the scaling `alpha / rank` is unchanged.
"""

import os

import numpy as np

from keras_gemma.formats.files import atomic_directory_write
from keras_gemma.formats.files import write_json

# HF module names (under `model.layers.{i}.`) for each LoRA target.
PEFT_MODULES = {
    "query": "self_attn.q_proj",
    "key": "self_attn.k_proj",
    "value": "self_attn.v_proj",
    "attention_output": "self_attn.o_proj",
    "ffw_gating": "mlp.gate_proj",
    "ffw_gating_2": "mlp.up_proj",
    "ffw_linear": "mlp.down_proj",
}
DENSE_TARGETS = ("ffw_gating", "ffw_gating_2", "ffw_linear")
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def peft_factors(lora_kernel_a, lora_kernel_b, target_name):
    """`(lora_A [r', in], lora_B [out, r'], r')` in HF's layout for one layer's adapter."""
    a = np.asarray(lora_kernel_a, "float32")
    b = np.asarray(lora_kernel_b, "float32")
    rank = b.shape[0]
    if target_name in DENSE_TARGETS:
        return a.T, b.T, rank
    if target_name == "attention_output":
        return a.reshape(-1, rank).T, b.T, rank
    heads, hidden, _ = a.shape
    head_dim = b.shape[1]
    lora_a = a.transpose(0, 2, 1).reshape(heads * rank, hidden)  # (heads*r, d)
    lora_b = np.zeros((heads * head_dim, heads * rank), "float32")  # (heads*h, heads*r)
    for head in range(heads):
        rows = slice(head * head_dim, (head + 1) * head_dim)
        lora_b[rows, head * rank : (head + 1) * rank] = b.T
    return lora_a, lora_b, heads * rank


def write_peft_adapter(
    directory, adapters, rank, alpha, target_names, base_model=None, overwrite=False
):
    """Writes a PEFT adapter directory, atomically.

    A `directory` holding files other than a previous adapter's is refused
    unless `overwrite`.

    Args:
        directory: the directory to write.
        adapters: `[(layer index, target name, lora_kernel_a, lora_kernel_b)]`
            with Keras' factors (NumPy arrays).
        rank: int, the adapters' rank.
        alpha: float; updates are scaled by `alpha / rank`.
        target_names: the targets, in order (for `target_modules`).
        base_model: `base_model_name_or_path` to record, or None.
    """
    tensors = {}
    ranks = {}
    for index, name, lora_kernel_a, lora_kernel_b in adapters:
        lora_a, lora_b, module_rank = peft_factors(lora_kernel_a, lora_kernel_b, name)
        module = f"base_model.model.model.layers.{index}.{PEFT_MODULES[name]}"
        tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        ranks[PEFT_MODULES[name].split(".")[-1]] = module_rank
    scale = alpha / rank
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": [PEFT_MODULES[name].split(".")[-1] for name in target_names],
        # Per-module ranks where the exact form needs more than `r` (q/k/v).
        "rank_pattern": {module: r for module, r in ranks.items() if r != rank},
        "alpha_pattern": {module: r * scale for module, r in ranks.items() if r != rank},
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }

    def write(staging):
        from safetensors.numpy import save_file

        write_json(os.path.join(staging, PEFT_CONFIG_FILE), adapter_config)
        save_file(tensors, os.path.join(staging, PEFT_WEIGHTS_FILE), metadata={"format": "pt"})

    atomic_directory_write(
        directory, write, (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE), overwrite=overwrite
    )
