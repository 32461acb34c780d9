"""Gemma 4 text in `GemmaBackbone`: logits equal HF transformers' `Gemma4ForCausalLM`.

Three tiny shapes (`keras_gemma/testing/configs.py`): "gemma4" (E2B-like: PLE,
KV sharing by the last 3 layers, double-wide MLP on them), "gemma4_moe"
(26B-A4B-like: experts, keys = values on full layers with 1 KV head instead
of 2) and "gemma4_dense" (31B-like). Each Gemma 4 config field is flipped: the
output changes and, where HF can express the flipped config, still equals HF.
"""

import keras
import pytest

from keras_gemma.layers.architecture import GEMMA4_DEFAULTS
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.configs import GEMMA4_FAMILIES
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase

pytest.importorskip("torch")
pytest.importorskip("transformers")

from keras_gemma.testing.transformers_checkpoints import make_transformers_model  # noqa: E402
from keras_gemma.testing.transformers_checkpoints import save_transformers_checkpoint  # noqa: E402
from keras_gemma.testing.transformers_checkpoints import transformers_logits  # noqa: E402

LENGTH, PADDING = 12, 4  # longer than the sliding window (4); second row right-padded
INPUTS = ragged_inputs(tiny_config("gemma4")["vocabulary_size"], length=LENGTH, padding=PADDING)
VALID = INPUTS["padding_mask"].astype(bool)


def checkpoint(config, directory, seed=0):
    """HF model for `config` saved in `directory`; returns its float32 logits on INPUTS."""
    # Embeddings N(0, 0.3^2): logits of spread ~2, so 1e-4 is a relative 5e-5 (TensorFlow's
    # oneDNN sums in another order: 1.4e-4 apart at logits of spread 6).
    model = make_transformers_model(config, seed=seed, embedding_scale=0.3)
    save_transformers_checkpoint(model, str(directory))
    return transformers_logits(model, INPUTS["token_ids"], INPUTS["padding_mask"])


def logits_of(lm):
    return keras.ops.convert_to_numpy(lm(INPUTS))


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    result = {}
    for seed, family in enumerate(GEMMA4_FAMILIES):
        directory = tmp_path_factory.mktemp(family)
        result[family] = (str(directory), checkpoint(tiny_config(family), directory, seed))
    return result


# (base family, overrides); every flip is expressible in transformers' gemma4_text.
HF_FLIPS = {
    "global_head_dim": ("gemma4", {"global_head_dim": 8}),
    "num_global_key_value_heads": ("gemma4_dense", {"num_global_key_value_heads": 2}),
    "global_keys_as_values": (
        "gemma4_dense",
        {"global_keys_as_values": False, "num_global_key_value_heads": 2},
    ),
    "global_partial_rotary_factor": ("gemma4", {"global_partial_rotary_factor": 0.5}),
    # (0 is the MoE and dense shapes; transformers 5.24 fails on KV sharing without PLE.)
    "per_layer_input_dim": ("gemma4", {"per_layer_input_dim": 16}),
    "num_kv_shared_layers": ("gemma4", {"num_kv_shared_layers": 2}),
    "use_double_wide_mlp": ("gemma4", {"use_double_wide_mlp": False}),
    "num_experts": ("gemma4_moe", {"num_experts": 3}),
    "num_experts_per_token": ("gemma4_moe", {"num_experts_per_token": 1}),
    "expert_intermediate_dim": ("gemma4_moe", {"expert_intermediate_dim": 6}),
}


class TestGemma4Parity(TestCase):
    @pytest.mark.parametrize("family", GEMMA4_FAMILIES)
    def test_logits_match_transformers(self, family, family_checkpoints):
        directory, expected = family_checkpoints[family]
        lm = GemmaCausalLM.from_preset(directory)
        config = lm.backbone.get_config()
        assert {key: config[key] for key in tiny_config(family)} == tiny_config(family)
        self.assert_all_close(logits_of(lm)[VALID], expected[VALID], atol=1e-4, rtol=1e-4)

    def test_tiny_shapes_exercise_the_features(self):
        e2b, moe, dense = (GemmaBackbone(**tiny_config(f)) for f in GEMMA4_FAMILIES)
        assert e2b.kv_source_layers == [0, 1, 2, 1, 1, 2]
        assert e2b.transformer_layers[3].intermediate_dim == 2 * e2b.intermediate_dim
        assert not hasattr(e2b.transformer_layers[3].attention, "key")
        full = dense.transformer_layers[1].attention
        assert (full.head_dim, full.num_key_value_heads, hasattr(full, "value")) == (16, 1, False)
        sliding = dense.transformer_layers[0].attention
        assert (sliding.head_dim, sliding.num_key_value_heads) == (8, 2)
        assert moe.transformer_layers[0].mixture_of_experts.num_experts == 4

    @pytest.mark.parametrize("field", sorted(HF_FLIPS))
    def test_flipped_field_changes_output_and_matches_transformers(
        self, field, family_checkpoints, tmp_path
    ):
        family, overrides = HF_FLIPS[field]
        base = dict(tiny_config(family), **GEMMA4_DEFAULTS)
        base.update(GemmaBackbone(**tiny_config(family)).get_config())
        assert base[field] != overrides[field]
        seed = GEMMA4_FAMILIES.index(family)
        expected = checkpoint(dict(tiny_config(family), **overrides), tmp_path, seed)
        lm = GemmaCausalLM.from_preset(str(tmp_path))
        assert lm.backbone.get_config()[field] == overrides[field]
        actual = logits_of(lm)
        self.assert_all_close(actual[VALID], expected[VALID], atol=1e-4, rtol=1e-4)
        base_logits = family_checkpoints[family][1]
        self.assert_not_all_close(actual[VALID], base_logits[VALID], atol=1e-3, msg=field)

    def test_normalization_scale_one_plus_scale_equals_scale_minus_one(self, family_checkpoints):
        """`x * (1 + (w - 1))` is `x * w`: flipping changes logits, w - 1 restores them."""
        directory, expected = family_checkpoints["gemma4"]
        lm = GemmaCausalLM.from_preset(directory)
        flipped = GemmaCausalLM(
            GemmaBackbone(**dict(lm.backbone.get_config(), normalization_scale="one_plus_scale"))
        )
        for source, target in zip(lm.backbone.weights, flipped.backbone.weights):
            assert source.path == target.path
            target.assign(source.value)
        self.assert_not_all_close(logits_of(flipped)[VALID], expected[VALID], atol=1e-3)
        for variable in flipped.backbone.weights:
            if variable.path.endswith("/scale") and "norm" in variable.path:
                variable.assign(variable.value - 1.0)
        self.assert_all_close(logits_of(flipped)[VALID], expected[VALID], atol=1e-4, rtol=1e-4)

    def test_layer_scalar_off_equals_scalars_of_one(self, family_checkpoints):
        directory, expected = family_checkpoints["gemma4_dense"]
        lm = GemmaCausalLM.from_preset(directory)
        flipped = GemmaCausalLM(
            GemmaBackbone(**dict(lm.backbone.get_config(), use_layer_scalar=False))
        )
        values = {variable.path: variable.value for variable in lm.backbone.weights}
        for variable in flipped.backbone.weights:
            variable.assign(values[variable.path])
        self.assert_not_all_close(logits_of(flipped)[VALID], expected[VALID], atol=1e-3)
        for block in lm.backbone.transformer_layers:
            block.layer_scalar.assign(1.0)
        self.assert_all_close(logits_of(flipped), logits_of(lm), atol=1e-5, rtol=1e-5)

    def test_value_norm_changes_output(self, family_checkpoints):
        # transformers always normalizes values in Gemma 4: no oracle for off.
        directory, expected = family_checkpoints["gemma4_moe"]
        lm = GemmaCausalLM.from_preset(directory)
        flipped = GemmaCausalLM(
            GemmaBackbone(**dict(lm.backbone.get_config(), use_value_norm=False))
        )
        for source, target in zip(lm.backbone.weights, flipped.backbone.weights):
            target.assign(source.value)
        self.assert_not_all_close(logits_of(flipped)[VALID], expected[VALID], atol=1e-3)


class TestGemma4Config(TestCase):
    @pytest.mark.parametrize("family", GEMMA4_FAMILIES)
    def test_config_round_trip(self, family):
        backbone = GemmaBackbone(**tiny_config(family))
        config = backbone.get_config()
        for name in GEMMA4_DEFAULTS:
            assert name in config
        assert GemmaBackbone.from_config(config).get_config() == config

    def test_defaults_are_gemma3(self):
        config = GemmaBackbone(**tiny_config("gemma3")).get_config()
        assert config["global_head_dim"] == config["head_dim"]
        assert config["num_global_key_value_heads"] == config["num_key_value_heads"]
        for name, value in GEMMA4_DEFAULTS.items():
            if value is not None:
                assert config[name] == value, name

    @pytest.mark.parametrize(
        "overrides, message",
        [
            (
                {"global_head_dim": 7},
                "`global_head_dim` must be even, for rotary embeddings. "
                "Received: global_head_dim=7",
            ),
            (
                {"num_global_key_value_heads": 3},
                "`num_global_key_value_heads` must be a divisor of num_query_heads=4. "
                "Received: num_global_key_value_heads=3",
            ),
            (
                {"global_partial_rotary_factor": 0.0},
                "`global_partial_rotary_factor` must be a number in (0, 1]. "
                "Received: global_partial_rotary_factor=0.0",
            ),
            (
                {"normalization_scale": "plus_one"},
                "`normalization_scale` must be one of ('one_plus_scale', 'scale'). "
                "Received: normalization_scale='plus_one'",
            ),
            (
                {"use_value_norm": 1},
                "`use_value_norm` must be a bool. Received: use_value_norm=1",
            ),
            (
                {"per_layer_input_dim": -1},
                "`per_layer_input_dim` must be an integer >= 0. Received: per_layer_input_dim=-1",
            ),
            (
                {"num_kv_shared_layers": 6},
                "`num_kv_shared_layers` must be smaller than num_layers=6 (a layer must produce "
                "keys/values). Received: num_kv_shared_layers=6",
            ),
            (
                {"num_kv_shared_layers": 4},
                "`num_kv_shared_layers=4`: shared layer 2 is 'full_attention', but no earlier "
                "non-shared layer has that type to read keys/values from. Lower "
                "num_kv_shared_layers or change layer_types.",
            ),
            (
                {"num_kv_shared_layers": 0},
                "`use_double_wide_mlp` must be False when num_kv_shared_layers is 0 (no layer to "
                "widen). Received: use_double_wide_mlp=True",
            ),
            (
                {"num_experts": 2, "num_experts_per_token": 3, "expert_intermediate_dim": 4},
                "`num_experts_per_token` must be an integer in [1, num_experts=2]. "
                "Received: num_experts_per_token=3",
            ),
            (
                {"num_experts": 2, "num_experts_per_token": 1},
                "`expert_intermediate_dim` must be a positive integer when num_experts > 0. "
                "Received: expert_intermediate_dim=None",
            ),
            (
                {"num_experts_per_token": 2},
                "`num_experts_per_token` and `expert_intermediate_dim` need `num_experts` > 0. "
                "Received: num_experts=0, num_experts_per_token=2, expert_intermediate_dim=None",
            ),
        ],
    )
    def test_validation_errors(self, overrides, message):
        with pytest.raises(ValueError) as info:
            GemmaBackbone(**dict(tiny_config("gemma4"), **overrides))
        assert str(info.value) == message
