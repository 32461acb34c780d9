"""keras-hub 0.32 Gemma 4 presets (`Gemma4Backbone`) load into our classes with identical logits.

keras-hub only builds the reference models here; `keras_gemma` never imports it.
"""

import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from keras_gemma.formats import keras_hub_preset
from keras_gemma.formats import preset as preset_files
from keras_gemma.formats.loader import handle_kind
from keras_gemma.generation.stopping import resolve_stop_token_ids
from keras_gemma.layers.architecture import block_arguments
from keras_gemma.layers.architecture import kv_source_layers
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.test_case import TestCase
from keras_gemma.testing.vocab import GEMMA4_TURN_TOKENS
from keras_gemma.testing.vocab import build_tiny_vocabulary

keras_hub = pytest.importorskip("keras_hub")

SLIDING, FULL = "sliding_attention", "full_attention"
# Gemma4Tokenizer needs its media pieces; the tiny vocabulary gets them appended.
MEDIA_PIECES = ("<|image>", "<|image|>", "<image|>", "<|video|>")
VOCABULARY_SIZE = 400 + len(MEDIA_PIECES)
LENGTH = 12  # Longer than the sliding windows (4).
COMMON = dict(
    vocabulary_size=VOCABULARY_SIZE,
    image_size=16,
    num_query_heads=4,
    hidden_dim=32,
    intermediate_dim=48,
    head_dim=8,
    global_head_dim=16,
    sliding_window_size=4,
    global_rope_partial_rotary_factor=0.25,
    final_logit_soft_cap=30.0,
    dtype="float32",
)
KERAS_HUB_CONFIGS = {
    # E2B-like: PLE, the last 2 layers read layer 1's (the last sliding one, not 0)
    # and layer 2's keys and values, with a double-wide MLP.
    "e2b": dict(
        COMMON,
        num_layers=5,
        num_key_value_heads=1,
        layer_types=[SLIDING, SLIDING, FULL, SLIDING, FULL],
        hidden_size_per_layer_input=8,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
    ),
    # 26B-A4B-like: experts beside the dense FFN; keys = values on the full layer,
    # which has its own KV-head count.
    "moe": dict(
        COMMON,
        num_layers=4,
        num_key_value_heads=2,
        num_global_key_value_heads=1,
        layer_types=[SLIDING] * 3 + [FULL],
        enable_moe_block=True,
        num_experts=4,
        expert_intermediate_dim=12,
        num_experts_per_token=2,
    ),
    # 31B-like: dense, keys = values on full layers; RoPE bases and scaling off their defaults.
    "dense": dict(
        COMMON,
        num_layers=4,
        num_key_value_heads=2,
        num_global_key_value_heads=1,
        layer_types=[SLIDING, FULL] * 2,
        global_rope_wavelength=50_000.0,
        local_rope_wavelength=2_000.0,
        global_rope_scaling_factor=4.0,
    ),
}
INPUTS = ragged_inputs(VOCABULARY_SIZE, length=LENGTH, padding=3, seed=0)
VALID = INPUTS["padding_mask"].astype(bool)


def randomize(model, seed):
    """Every weight re-drawn so each term counts (as `assign_scaled_random_weights`).

    Norm scales N(0, 0.5²) (Gemma 4 multiplies by `w`, not `1 + w`),
    embeddings N(0, 1), projections N(0, 1 / fan_in), layer scalars in [0.5, 1.5].
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("layer_scalar"):
            values = rng.uniform(0.5, 1.5, shape)
        elif variable.path.endswith("scale") or len(shape) < 2:
            values = rng.normal(0.0, 0.5, shape)
        elif "embedding" in variable.path:
            values = rng.normal(0.0, 1.0, shape)
        else:
            fan_in = np.prod(shape[:-1]) if "output" in variable.path else shape[-2]
            values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        variable.assign(values.astype("float32"))
    return model


def keras_hub_logits(backbone, inputs=INPUTS):
    """keras-hub's logits (its tied head applies the final soft cap)."""
    positions = np.broadcast_to(np.arange(LENGTH, dtype="int32"), inputs["token_ids"].shape)
    # One compiled program: on JAX much faster than op-by-op eager calls.
    hidden = backbone.predict_on_batch({**inputs, "position_ids": positions})
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))


def our_logits(lm):
    return np.asarray(lm.predict_on_batch(INPUTS))  # One compiled program, as above.


def gemma4_vocabulary(directory):
    """The tiny vocabulary with Gemma 4's turn markers and media pieces (USER_DEFINED)."""
    path = build_tiny_vocabulary(directory, turn_tokens=GEMMA4_TURN_TOKENS)
    with open(path, "rb") as file:
        proto = sentencepiece_model_pb2.ModelProto.FromString(file.read())
    for piece in MEDIA_PIECES:
        proto.pieces.add(piece=piece, score=0.0, type=proto.SentencePiece.USER_DEFINED)
    with open(path, "wb") as file:
        file.write(proto.SerializeToString())
    return path


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """Per shape: the keras-hub preset dir and keras-hub's logits on `INPUTS`."""
    vocabulary = gemma4_vocabulary(tmp_path_factory.mktemp("gemma4_vocabulary"))
    result = {}
    for seed, (shape, config) in enumerate(KERAS_HUB_CONFIGS.items()):
        directory = str(tmp_path_factory.mktemp(f"keras_hub_gemma4_{shape}"))
        backbone = randomize(keras_hub.models.Gemma4Backbone(**config), seed)
        if shape == "e2b":
            # A whole task with its tokenizer and preprocessor, as Kaggle presets have.
            tokenizer = keras_hub.models.Gemma4Tokenizer(proto=vocabulary)
            preprocessor = keras_hub.models.Gemma4CausalLMPreprocessor(
                tokenizer, sequence_length=24
            )
            keras_hub.models.Gemma4CausalLM(
                backbone=backbone, preprocessor=preprocessor
            ).save_to_preset(directory)
            result["tokenizer"] = tokenizer
        elif shape == "moe":
            backbone.save_to_preset(directory, max_shard_size=6e-5)  # 60 KB shards.
        else:
            backbone.save_to_preset(directory)
        result[shape] = {
            "directory": directory,
            "logits": keras_hub_logits(backbone),
            "backbone": backbone,
        }
    result["vocabulary"] = vocabulary
    return result


def copy_preset(presets, shape, target, **config_changes):
    """A copy of the `shape` preset in `target`, its `config.json` fields changed."""
    shutil.copytree(presets[shape]["directory"], target)
    file = os.path.join(target, "config.json")
    with open(file) as handle:
        stored = json.load(handle)
    stored["config"].update(config_changes)
    with open(file, "w") as handle:
        json.dump(stored, handle)
    return str(target)


class TestKerasHubGemma4Presets(TestCase):
    @pytest.mark.parametrize("shape", list(KERAS_HUB_CONFIGS))
    def test_logits_equal_keras_hub(self, shape, presets):
        preset = presets[shape]
        assert handle_kind(preset["directory"]) == preset_files.KERAS_HUB_PRESET
        logits = our_logits(GemmaCausalLM.from_preset(preset["directory"]))
        self.assert_all_close(logits[VALID], preset["logits"][VALID], atol=1e-4, rtol=1e-4)
        # The logits are far from trivial: random weights, all terms active.
        assert np.std(preset["logits"][VALID]) > 0.1

    @pytest.mark.parametrize("shape", list(KERAS_HUB_CONFIGS))
    def test_keras_hub_equals_transformers(self, shape, presets, tmp_path):
        """keras-hub's numerics are HF's: its weights, exported by us, in transformers.

        A fact about keras-hub and HF, not about our backend: checked once, under
        PyTorch (where importing torch costs nothing extra).
        """
        if keras.config.backend() != "torch":
            pytest.skip("keras-hub vs transformers is checked under the torch backend")
        transformers = pytest.importorskip("transformers")
        from keras_gemma.testing.transformers_checkpoints import transformers_logits

        lm = GemmaCausalLM.from_preset(presets[shape]["directory"])
        lm.export_to_transformers(str(tmp_path / "exported"))
        model = transformers.Gemma4ForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
        model.config._experts_implementation = "eager"
        expected = transformers_logits(model, INPUTS["token_ids"], INPUTS["padding_mask"])
        self.assert_all_close(
            presets[shape]["logits"][VALID], expected[VALID], atol=1e-4, rtol=1e-4
        )

    def test_mapped_configs(self, presets):
        e2b, dtype = keras_hub_preset.backbone_config(presets["e2b"]["directory"])
        assert dtype == "float32"
        assert (e2b["num_kv_shared_layers"], e2b["per_layer_input_dim"]) == (2, 8)
        assert e2b["use_double_wide_mlp"] and not e2b["global_keys_as_values"]
        assert e2b["num_experts"] == 0
        widths = [block_arguments(e2b, index)["intermediate_dim"] for index in range(5)]
        assert widths == [48, 48, 48, 96, 96]
        assert kv_source_layers(e2b) == [0, 1, 2, 1, 2]
        assert (e2b["global_head_dim"], e2b["global_partial_rotary_factor"]) == (16, 0.25)
        assert (e2b["rope_wavelength"], e2b["local_rope_wavelength"]) == (1e6, 1e4)
        assert (e2b["query_pre_attn_scalar"], e2b["normalization_scale"]) == (1.0, "scale")
        assert e2b["final_logit_soft_cap"] == 30.0 and e2b["sliding_window_size"] == 4
        moe, _ = keras_hub_preset.backbone_config(presets["moe"]["directory"])
        assert (moe["num_experts"], moe["num_experts_per_token"]) == (4, 2)
        assert moe["expert_intermediate_dim"] == 12 and moe["num_kv_shared_layers"] == 0
        assert moe["global_keys_as_values"] and moe["num_global_key_value_heads"] == 1
        assert moe["num_key_value_heads"] == 2 and moe["per_layer_input_dim"] == 0
        assert moe["layer_types"] == [SLIDING] * 3 + [FULL]
        dense, _ = keras_hub_preset.backbone_config(presets["dense"]["directory"])
        assert (dense["rope_wavelength"], dense["local_rope_wavelength"]) == (5e4, 2e3)
        assert (dense["rope_scaling_factor"], e2b["rope_scaling_factor"]) == (4.0, 1.0)
        assert dense["num_experts"] == 0 and dense["global_keys_as_values"]
        assert dense["layer_types"] == [SLIDING, FULL] * 2

    def test_sharded_weights_are_read(self, presets):
        """The "moe" preset is sharded: `test_logits_equal_keras_hub[moe]` read its shards."""
        directory = presets["moe"]["directory"]
        assert os.path.isfile(os.path.join(directory, "model.weights.json"))
        assert not os.path.isfile(os.path.join(directory, "model.weights.h5"))
        variables, files = keras_hub_preset.read_hdf5_variables(directory)
        assert len(files) > 1
        config, _ = keras_hub_preset.backbone_config(directory)
        tensors = keras_hub_preset.read_weights(directory, config)
        hub = {weight.path: weight for weight in presets["moe"]["backbone"].weights}
        for ours, theirs in (
            (
                "decoder_block_3/mixture_of_experts/expert_linear/kernel",
                "moe_expert_bank/down_proj",
            ),
            (
                "decoder_block_3/mixture_of_experts/per_expert_scale",
                "moe_expert_bank/per_expert_scale",
            ),
            ("decoder_block_3/layer_scalar", "layer_scalar"),
        ):
            value = keras.ops.convert_to_numpy(hub[f"decoder_block_3/{theirs}"])
            np.testing.assert_array_equal(tensors[ours], value)

    def test_tokenizer_and_chat_format(self, presets):
        directory = presets["e2b"]["directory"]
        lm = GemmaCausalLM.from_preset(directory)
        tokenizer = lm.preprocessor.tokenizer
        assert lm.preprocessor.sequence_length == 24  # From keras-hub's preprocessor.json.
        text = "the capital of France is Paris"
        ids = tokenizer(text)
        assert ids == GemmaTokenizer(proto=presets["vocabulary"])(text)
        assert ids == keras.ops.convert_to_numpy(presets["tokenizer"](text)).tolist()
        assert tokenizer.detokenize(ids) == text
        assert tokenizer.turn_tokens == GEMMA4_TURN_TOKENS
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert tokenizer.apply_chat_template(messages, tokenize=False) == (
            "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
        )
        end_of_turn = tokenizer.token_to_id("<turn|>")
        assert resolve_stop_token_ids(lm, "auto") == (tokenizer.eos_token_id, end_of_turn)
        # A backbone-only keras-hub preset has no vocabulary: no preprocessor.
        assert GemmaCausalLM.from_preset(presets["dense"]["directory"]).preprocessor is None

    def test_vision_encoder_preset_loads_its_text_part(self, presets, tmp_path):
        """The "dense" model with a vision encoder: its text part loads, the encoder is skipped."""
        vision_encoder = keras_hub.models.Gemma4VisionEncoder(
            image_size=16,
            patch_size=4,
            num_heads=2,
            hidden_dim=8,
            num_layers=1,
            intermediate_dim=16,
            head_dim=4,
            output_dim=32,
            pool_size=2,
            position_embedding_size=16,
        )
        multimodal = randomize(
            keras_hub.models.Gemma4Backbone(
                **KERAS_HUB_CONFIGS["dense"],
                vision_encoder=vision_encoder,
                use_vision_bidirectional_attention=True,
            ),
            seed=7,
        )
        text_weights = {weight.path: weight for weight in presets["dense"]["backbone"].weights}
        for weight in multimodal.weights:
            if weight.path in text_weights:
                weight.assign(text_weights[weight.path])
        multimodal.save_to_preset(str(tmp_path))
        with open(tmp_path / "config.json") as file:
            assert json.load(file)["config"]["vision_encoder"] is not None
        # The same config and text weights as the "dense" preset, whose logits are tested.
        config, _ = keras_hub_preset.backbone_config(str(tmp_path))
        dense_config, _ = keras_hub_preset.backbone_config(presets["dense"]["directory"])
        assert config == dense_config
        tensors = keras_hub_preset.read_weights(str(tmp_path), config)
        dense_tensors = keras_hub_preset.read_weights(presets["dense"]["directory"], config)
        assert tensors.keys() == dense_tensors.keys()
        for path, value in tensors.items():
            np.testing.assert_array_equal(value, dense_tensors[path], err_msg=path)
        assert GemmaBackbone.from_preset(str(tmp_path)).num_layers == 4


class TestDamagedGemma4Presets:
    def test_missing_weight_is_named(self, presets, tmp_path):
        import h5py

        directory = copy_preset(presets, "dense", tmp_path / "p")
        name = "layers/gemma4_text_decoder_block_1/attention/key_norm/vars/0"
        with h5py.File(os.path.join(directory, "model.weights.h5"), "a") as file:
            del file[name]
        with pytest.raises(ValueError, match=f"model.weights.h5.*no weight `{name}`"):
            GemmaBackbone.from_preset(directory)

    def test_extra_weight_is_named(self, presets, tmp_path):
        """A shared layer's own keys (HF checkpoints keep such stale tensors) are refused."""
        import h5py

        directory = copy_preset(presets, "e2b", tmp_path / "p")
        name = "layers/gemma4_text_decoder_block_4/attention/key_dense/vars/0"
        with h5py.File(os.path.join(directory, "model.weights.h5"), "a") as file:
            file.create_dataset(name, data=np.zeros((1, 32, 8), "float32"))
        with pytest.raises(ValueError, match=f"model.weights.h5.*no place for.*{name}"):
            GemmaBackbone.from_preset(directory)

    @pytest.mark.parametrize(
        "shape, change, message",
        [
            # Layer 3 would compute its own keys: the preset has none for it.
            ("e2b", {"num_kv_shared_layers": 1}, "no weight `layers/gemma4_text_decoder_block_3/"),
            # Without PLE the final norm is the first RMS normalization: the PLE one is found.
            ("e2b", {"hidden_size_per_layer_input": 0}, "rms_normalization/.* has shape \\(8,\\)"),
            ("moe", {"num_experts": 3}, "has shape \\(4,\\), but .*per_expert_scale` needs"),
            # Full layers would have 2 KV heads (not 1) and values of their own.
            ("dense", {"num_global_key_value_heads": None}, "key_dense/.* has shape \\(1, 32, 16"),
        ],
    )
    def test_config_disagreeing_with_weights(self, presets, tmp_path, shape, change, message):
        directory = copy_preset(presets, shape, tmp_path / "p", **change)
        weights = "model.weights.json`'s shards" if shape == "moe" else "model.weights.h5`"
        with pytest.raises(ValueError, match=f"{weights} in {re.escape(repr(directory))}"):
            GemmaCausalLM.from_preset(directory)
        with pytest.raises(ValueError, match=message):
            GemmaBackbone.from_preset(directory)

    @pytest.mark.parametrize(
        "field, value",
        [
            ("use_bidirectional_attention", True),
            ("is_embedding_model", True),
            ("num_kv_shared_layers", 5),
            ("use_sliding_window_attention", False),
            ("vocab_size_per_layer_input", 100),
            ("local_rope_scaling_factor", 2.0),
            ("a_future_field", 1),
        ],
    )
    def test_unsupported_config_fields_are_named(self, presets, tmp_path, field, value):
        directory = copy_preset(presets, "e2b", tmp_path / "p", **{field: value})
        with pytest.raises(ValueError, match=f"config.json.*{field}"):
            keras_hub_preset.backbone_config(directory)
