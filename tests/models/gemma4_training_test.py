"""Gemma 4 with LoRA through fit(), int8 quantization and the layout map (experts included).

LoRA targets attention and the dense feed-forward; expert kernels stay frozen (not
targeted: one adapter per expert bank would share its `b` across experts).
"""

import json

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.layout_map import kernel_axes
from keras_gemma.models.lora import lora_parameter_count
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

INPUTS = ragged_inputs(tiny_config("gemma4")["vocabulary_size"], length=10, padding=3)


def random_lm(family, seed=0):
    backbone = GemmaBackbone(**tiny_config(family))
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        center = 1.0 if variable.path.endswith(("scale", "layer_scalar")) else 0.0
        values = rng.normal(center, 0.2, tuple(variable.shape))
        variable.assign(values.astype("float32"))
    return GemmaCausalLM(backbone)


class TestGemma4Training(TestCase):
    @pytest.mark.parametrize("family", ["gemma4", "gemma4_moe"])
    def test_lora_fit_trains_only_adapters(self, family):
        lm = random_lm(family)
        keras.utils.set_random_seed(0)  # The adapters' initial values (flaky on TF unseeded).
        lm.backbone.enable_lora(rank=2, target_names="all")
        config = lm.backbone.get_config()
        trainable = sum(int(np.prod(v.shape)) for v in lm.backbone.trainable_weights)
        assert trainable == lora_parameter_count(config, 2, "all")
        frozen = {v.path: keras.ops.convert_to_numpy(v) for v in lm.backbone.non_trainable_weights}
        lm.compile(optimizer=keras.optimizers.SGD(0.1))
        history = lm.fit(
            INPUTS, INPUTS["token_ids"], sample_weight=INPUTS["padding_mask"], epochs=3, verbose=0
        )
        losses = history.history["loss"]
        assert losses[-1] < losses[0]
        for variable in lm.backbone.non_trainable_weights:
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(variable), frozen[variable.path]
            )

    def test_int8_quantization_quantizes_experts_and_stays_correlated(self):
        lm = random_lm("gemma4_moe")
        expected = keras.ops.convert_to_numpy(lm(INPUTS))
        lm.quantize("int8")
        experts = lm.backbone.transformer_layers[0].mixture_of_experts
        assert experts.expert_gating.dtype_policy.quantization_mode == "int8"
        assert lm.backbone.transformer_layers[1].attention.query.dtype_policy.name.startswith(
            "int8"
        )
        actual = keras.ops.convert_to_numpy(lm(INPUTS))
        valid = INPUTS["padding_mask"].astype(bool)
        # Random tiny weights are far from int8-friendly and routing can flip an expert:
        # measured max error 30% of the largest logit, correlation 0.985 (dense shape: 0.997).
        assert not np.array_equal(actual, expected)
        correlation = np.corrcoef(actual[valid].ravel(), expected[valid].ravel())[0, 1]
        assert correlation > 0.97, correlation

    def test_layout_map_covers_experts_and_full_layer_key_values(self):
        config = GemmaBackbone(**tiny_config("gemma4_moe")).get_config()
        axes = kernel_axes(config, model_size=4, data_size=2)
        moe = r"decoder_block_\d+/mixture_of_experts/"
        assert axes[moe + "expert_gating(_2)?/kernel"] == ("model", "batch", None)
        assert axes[moe + "expert_linear/kernel"] == ("model", None, "batch")
        assert axes[moe + "router/kernel"] == ("batch", None)
        # Sliding layers: 2 KV heads, not divisible by 4 devices -> hidden axis split; the
        # full layer 3 has its own shape (1 head, head dim 16) under its exact path.
        assert axes["decoder_block_3/attention/key/kernel"] == (None, "model", "batch")
        e2b = GemmaBackbone(**tiny_config("gemma4")).get_config()
        embedding = kernel_axes(e2b, model_size=4, data_size=2)
        assert embedding["per_layer_embedding/per_layer_token_embedding/embeddings"] == (
            "model",
            "batch",
        )


DISTRIBUTED_SCRIPT = """
import json, keras, numpy as np
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import tiny_config
inputs = {"token_ids": np.array([[2, 5, 6, 7, 8, 9], [0, 0, 2, 7, 8, 9]], "int32"),
          "padding_mask": np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], "int32")}
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], keras.distribution.list_devices())
config = tiny_config("gemma4_moe")
keras.utils.set_random_seed(0)
single = GemmaCausalLM(GemmaBackbone(**config))
logits = np.asarray(single(inputs))
distribution = keras.distribution.ModelParallel(
    layout_map=GemmaBackbone.get_layout_map(mesh, config=config), batch_dim_name="batch")
with distribution.scope():
    parallel = GemmaCausalLM(GemmaBackbone(**config))
    parallel.set_weights(single.get_weights())
    difference = float(np.abs(np.asarray(parallel(inputs)) - logits).max())
variable = {v.path: v for v in parallel.backbone.weights}[
    "decoder_block_0/mixture_of_experts/expert_gating/kernel"].value
print("RESULT " + json.dumps({"difference": difference,
    "global": list(variable.shape), "local": list(variable.addressable_shards[0].data.shape)}))
"""


@pytest.mark.skipif(
    keras.config.backend() != "jax", reason="keras.distribution model parallelism is JAX-only"
)
def test_experts_split_on_eight_simulated_devices_match_one_device():
    from tests.models.distribution_test import run_on_simulated_devices

    output = run_on_simulated_devices(DISTRIBUTED_SCRIPT)
    result = json.loads(
        next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]
    )
    assert result["difference"] < 1e-4, result
    experts, hidden, width = result["global"]
    assert result["local"] == [experts // 4, hidden // 2, width]  # experts over "model"
