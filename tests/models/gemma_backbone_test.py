import zlib

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import FAMILIES
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.test_case import TestCase

SLIDING, FULL = "sliding_attention", "full_attention"
BATCH, LENGTH = 2, 12

# Two layers (one of each type) with every Gemma feature on, so a flip of any
# field has something to act on. The sequence is longer than the window.
BASE = tiny_config(
    "gemma3",
    num_layers=2,
    layer_types=[SLIDING, FULL],
    sliding_window_size=3,
    attention_logit_soft_cap=None,
    final_logit_soft_cap=None,
    rope_scaling_factor=1.0,
)


def make_inputs(vocabulary_size=BASE["vocabulary_size"]):
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, vocabulary_size, (BATCH, LENGTH)).astype("int32")
    padding_mask = np.ones((BATCH, LENGTH), "int32")
    padding_mask[1, -4:] = 0
    token_ids[1, -4:] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def randomize(model, spread=0.3):
    """Deterministic weights per variable path: models whose variables share a
    path and shape get the same values. Norm scales are far from zero."""
    for variable in model.weights:
        rng = np.random.default_rng(zlib.crc32(variable.path.encode()))
        std = 0.5 if variable.path.endswith("scale") else spread
        if "embeddings" in variable.path:
            std = 1.0
        value = rng.normal(0.0, std, tuple(variable.shape))
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    return model


def make_backbone(**overrides):
    return randomize(GemmaBackbone(**dict(BASE, **overrides)))


def count_params_closed_form(config):
    d, h, f = config["hidden_dim"], config["head_dim"], config["intermediate_dim"]
    n, k = config["num_query_heads"], config["num_key_value_heads"]
    norms = 2 + config["use_post_attention_norm"] + config["use_post_ffw_norm"]
    per_layer = (
        d * n * h  # query
        + 2 * d * k * h  # key, value
        + n * h * d  # output
        + 3 * d * f  # gate, up, down
        + norms * d
        + (2 * h if config["use_query_key_norm"] else 0)
    )
    return config["vocabulary_size"] * d + config["num_layers"] * per_layer + d


@pytest.fixture(scope="module")
def base_output():
    backbone = make_backbone()
    return keras.ops.convert_to_numpy(backbone(make_inputs()))


# Field → flipped value; each changes the output of a model whose other
# weights are identical.
OUTPUT_FLIPS = {
    "layer_types": [FULL, FULL],
    "sliding_window_size": 5,
    "query_pre_attn_scalar": 2,
    "attention_logit_soft_cap": 0.5,
    "use_post_attention_norm": False,
    "use_post_ffw_norm": False,
    "use_query_key_norm": False,
    "rope_wavelength": 10.0,
    "local_rope_wavelength": 10.0,
    "rope_scaling_factor": 4.0,
    "layer_norm_epsilon": 1.0,
}
# Field → flipped value; each changes the parameter count.
SHAPE_FLIPS = {
    "vocabulary_size": 321,
    "num_layers": 3,
    "num_query_heads": 2,
    "num_key_value_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 24,
    "head_dim": 4,
    "use_post_attention_norm": False,
    "use_post_ffw_norm": False,
    "use_query_key_norm": False,
}


class TestGemmaBackbone(TestCase):
    def test_backbone_basics(self):
        self.run_backbone_test(
            GemmaBackbone,
            init_kwargs=BASE,
            input_data=make_inputs(),
            expected_output_shape=(BATCH, LENGTH, BASE["hidden_dim"]),
        )

    def test_defaults(self):
        backbone = GemmaBackbone(
            vocabulary_size=320,
            num_layers=2,
            num_query_heads=4,
            num_key_value_heads=1,
            hidden_dim=32,
            intermediate_dim=48,
            head_dim=8,
        )
        config = backbone.get_config()
        assert config["layer_types"] == [FULL, FULL]
        assert config["query_pre_attn_scalar"] == 8
        assert config["local_rope_wavelength"] == config["rope_wavelength"] == 10000.0

    @pytest.mark.parametrize("field", sorted(OUTPUT_FLIPS))
    def test_field_changes_output(self, field, base_output):
        assert BASE[field] != OUTPUT_FLIPS[field]
        backbone = make_backbone(**{field: OUTPUT_FLIPS[field]})
        assert backbone.get_config()[field] == OUTPUT_FLIPS[field]
        self.assert_not_all_close(backbone(make_inputs()), base_output, atol=1e-4, msg=field)

    @pytest.mark.parametrize("field", sorted(SHAPE_FLIPS))
    def test_field_changes_parameter_count(self, field):
        overrides = {field: SHAPE_FLIPS[field]}
        if field == "num_layers":
            overrides["layer_types"] = [SLIDING, FULL, SLIDING]
        config = dict(BASE, **overrides)
        backbone = GemmaBackbone(**config)
        assert backbone.count_params() != count_params_closed_form(BASE)
        assert backbone.count_params() == count_params_closed_form(config)

    def test_final_logit_soft_cap_changes_logits(self):
        inputs = make_inputs()
        plain = GemmaCausalLM(make_backbone())(inputs)
        capped_lm = GemmaCausalLM(make_backbone(final_logit_soft_cap=2.0))
        capped = keras.ops.convert_to_numpy(capped_lm(inputs))
        self.assert_not_all_close(capped, plain, atol=1e-3)
        assert np.max(np.abs(capped)) <= 2.0
        expected = 2.0 * np.tanh(keras.ops.convert_to_numpy(plain) / 2.0)
        self.assert_all_close(capped, expected, atol=1e-4)

    def test_dropout_changes_output_in_training_only(self, base_output):
        backbone = make_backbone(dropout=0.5)
        inputs = make_inputs()
        self.assert_all_close(backbone(inputs), base_output, atol=1e-6)
        self.assert_not_all_close(backbone(inputs, training=True), base_output, atol=1e-4)

    def test_padding_does_not_leak(self):
        """Real tokens' outputs ignore whatever sits in padded slots."""
        backbone = make_backbone()
        inputs = make_inputs()
        changed = dict(inputs, token_ids=inputs["token_ids"].copy())
        changed["token_ids"][1, -4:] = 7
        first = keras.ops.convert_to_numpy(backbone(inputs))
        second = keras.ops.convert_to_numpy(backbone(changed))
        self.assert_all_close(first[:, :-4], second[:, :-4], atol=1e-5)

    @pytest.mark.parametrize("family", FAMILIES)
    def test_count_params_closed_form(self, family):
        config = tiny_config(family)
        assert GemmaBackbone(**config).count_params() == count_params_closed_form(config)

    def test_keras_file_round_trip(self):
        backbone = make_backbone()
        restored = self.run_model_saving_test(backbone, make_inputs())
        assert isinstance(restored, GemmaBackbone)
        assert restored.get_config() == backbone.get_config()

    @pytest.mark.parametrize(
        "dtype,variable_dtype", [("bfloat16", "bfloat16"), ("mixed_bfloat16", "float32")]
    )
    def test_low_precision_policies(self, dtype, variable_dtype, base_output):
        backbone = make_backbone(dtype=dtype)
        assert {keras.backend.standardize_dtype(v.dtype) for v in backbone.weights} == {
            variable_dtype
        }
        output = backbone(make_inputs())
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        output = keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))
        assert np.all(np.isfinite(output))
        self.assert_all_close(output, base_output, atol=0.25, rtol=0.1)
        assert backbone.get_config()["dtype"]["config"]["name"] == dtype
        revived = self.run_serialization_test(backbone)
        assert revived.dtype_policy.name == dtype
        assert {keras.backend.standardize_dtype(v.dtype) for v in revived.weights} == {
            variable_dtype
        }

    @pytest.mark.parametrize(
        "overrides,message",
        [
            (
                {"num_query_heads": 4, "num_key_value_heads": 3},
                "`num_query_heads` must be a multiple of `num_key_value_heads`. "
                "Received: num_query_heads=4, num_key_value_heads=3",
            ),
            (
                {"layer_types": [SLIDING]},
                "`layer_types` must have one entry per layer (num_layers=2). "
                "Received 1 entries: ['sliding_attention']",
            ),
            (
                {"layer_types": [SLIDING, "global"]},
                "`layer_types[1]` must be one of ('full_attention', 'sliding_attention'). "
                "Received: 'global'",
            ),
            (
                {"layer_types": "sliding_attention"},
                "`layer_types` must be a list with one entry per layer, not a string. "
                "Received: 'sliding_attention'",
            ),
            ({"hidden_dim": 0}, "`hidden_dim` must be a positive integer. Received: hidden_dim=0"),
            (
                {"num_layers": -1, "layer_types": []},
                "`num_layers` must be a positive integer. Received: num_layers=-1",
            ),
            (
                {"vocabulary_size": 2.5},
                "`vocabulary_size` must be a positive integer. Received: vocabulary_size=2.5",
            ),
            (
                {"head_dim": 7},
                "`head_dim` must be even for rotary embeddings. Received: head_dim=7",
            ),
            (
                {"sliding_window_size": None},
                "`sliding_window_size` must be a positive integer. "
                "Received: sliding_window_size=None",
            ),
            (
                {"rope_wavelength": -1.0},
                "`rope_wavelength` must be a finite positive number or None. "
                "Received: rope_wavelength=-1.0",
            ),
            ({"dropout": 1.0}, "`dropout` must be in [0, 1). Received: dropout=1.0"),
            (
                {"use_query_key_norm": "yes"},
                "`use_query_key_norm` must be a bool. Received: use_query_key_norm='yes'",
            ),
        ],
    )
    def test_validation_errors(self, overrides, message):
        with pytest.raises(ValueError) as info:
            GemmaBackbone(**dict(BASE, **overrides))
        assert str(info.value) == message
