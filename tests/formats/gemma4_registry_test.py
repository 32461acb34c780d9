"""The eight Gemma 4 registry entries: configs from GEMMA4_ARCHITECTURE.md, counts from HF."""

import pytest

from keras_gemma.formats.registry import count_parameters
from keras_gemma.formats.registry import preset_info
from keras_gemma.formats.transformers_config import transformers_config_from_backbone
from keras_gemma.layers.architecture import kv_source_layers
from keras_gemma.models.gemma_backbone import validate_config

SIZES = {  # name part -> (hidden, layers, heads, sliding kv, full kv, intermediate, window)
    "2b": (1536, 35, 8, 1, 1, 6144, 512),
    "4b": (2560, 42, 8, 2, 2, 10240, 512),
    "26b_a4b": (2816, 30, 16, 8, 2, 2112, 1024),
    "31b": (5376, 60, 32, 16, 4, 21504, 1024),
}
NAMES = [f"gemma4_{kind}{size}" for size in SIZES for kind in ("", "instruct_")]
# Our closed-form count, listed in the note; equal to HF's module count below.
PARAMS = {
    "2b": 4_628_569_379,
    "4b": 7_463_013_418,
    "26b_a4b": 25_233_141_790,
    "31b": 30_697_345_340,
}


def size_of(name):
    return name.replace("gemma4_", "").replace("instruct_", "")


@pytest.mark.parametrize("name", NAMES)
def test_config_follows_the_facts(name):
    info = preset_info(name)
    config, metadata = info["config"], info["metadata"]
    validate_config(config)
    hidden, layers, heads, kv, global_kv, intermediate, window = SIZES[size_of(name)]
    assert (config["hidden_dim"], config["num_layers"], config["num_query_heads"]) == (
        hidden,
        layers,
        heads,
    )
    assert (config["num_key_value_heads"], config["num_global_key_value_heads"]) == (kv, global_kv)
    assert (config["intermediate_dim"], config["sliding_window_size"]) == (intermediate, window)
    assert (config["head_dim"], config["global_head_dim"]) == (256, 512)
    assert config["vocabulary_size"] == 262_144
    assert config["final_logit_soft_cap"] == 30.0
    assert config["query_pre_attn_scalar"] == 1.0
    full = [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"]
    period = 5 if size_of(name) == "2b" else 6  # E2B 4:1, the others 5:1
    assert full == list(range(period - 1, layers, period))
    assert metadata["family"] == "gemma4"
    assert metadata["instruction_tuned"] == ("instruct" in name)
    assert metadata["params"] == count_parameters(config) == PARAMS[size_of(name)]
    assert f"/keras/{name}/" in info["sources"]["kaggle"]


def test_kv_sharing_producers():
    # Facts: E2B's shared layers read layers 13 (sliding) and 14 (full), E4B's 22 and 23.
    e2b = kv_source_layers(preset_info("gemma4_2b")["config"])
    assert set(e2b[15:]) == {13, 14} and e2b[:15] == list(range(15))
    e4b = kv_source_layers(preset_info("gemma4_4b")["config"])
    assert set(e4b[24:]) == {22, 23} and e4b[:24] == list(range(24))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_parameter_count_equals_transformers_module(size):
    """HF `Gemma4ForCausalLM` built on the meta device: its parameters plus the layer scalars."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers_config_from_backbone(preset_info(f"gemma4_{size}")["config"])
    for key in ("model_type", "architectures", "torch_dtype"):
        hf_config.pop(key)
    with torch.device("meta"):
        model = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**hf_config))
    count = sum(parameter.numel() for parameter in model.parameters())  # tied head once
    count += sum(b.numel() for n, b in model.named_buffers() if n.endswith("layer_scalar"))
    assert count == PARAMS[size]
