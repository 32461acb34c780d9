"""keras-hub users' code on keras_gemma: each point of issue 21, tested on tiny models.

keras-hub's own suites, ported, are in tests/keras_hub_compat/; these check
the behaviour behind them (what the arguments map to, which tokens carry the
loss, the errors that name our equivalent).
"""

import keras
import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

import keras_gemma
from keras_gemma import Gemma3Backbone
from keras_gemma import GemmaBackbone
from keras_gemma import GemmaCausalLM
from keras_gemma import GemmaCausalLMPreprocessor
from keras_gemma import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config

SHARED = dict(
    vocabulary_size=40, num_layers=6, num_query_heads=4, num_key_value_heads=2, head_dim=4
)
INPUTS = {"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 4), "int32")}


def test_keras_hub_gemma2_arguments_map_to_layer_types_scale_and_branch_width():
    backbone = GemmaBackbone(
        **SHARED,
        hidden_dim=24,
        intermediate_dim=32,  # keras-hub: both branches -> 16 each here
        use_sliding_window_attention=True,
        sliding_window_size=3,
        query_head_dim_normalize=False,
    )
    config = backbone.get_config()
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 3
    assert config["sliding_window_size"] == 3
    assert config["query_pre_attn_scalar"] == 24 // 4  # hidden_dim / num_query_heads
    assert config["intermediate_dim"] == 16
    kernel = backbone.get_layer("decoder_block_0").feed_forward.ffw_gating.kernel
    assert tuple(kernel.shape) == (24, 16)


def test_keras_hub_defaults_query_head_dim_normalize_and_no_sliding():
    config = GemmaBackbone(
        **SHARED, hidden_dim=24, intermediate_dim=32, query_head_dim_normalize=True
    ).get_config()
    assert config["query_pre_attn_scalar"] == 4
    assert config["layer_types"] == ["full_attention"] * 6


def test_gemma3_backbone_reads_keras_hub_gemma3_arguments():
    config = Gemma3Backbone(
        **SHARED,
        hidden_dim=16,
        intermediate_dim=32,
        use_sliding_window_attention=True,
        global_rope_scaling_factor=8.0,
    ).get_config()
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert config["intermediate_dim"] == 32  # one branch in keras-hub's Gemma 3 too
    assert config["use_query_key_norm"] is True  # keras-hub's Gemma 3 default
    assert config["sliding_window_size"] == 1024
    assert (config["rope_wavelength"], config["local_rope_wavelength"]) == (1e6, 1e4)
    assert config["rope_scaling_factor"] == 8.0
    # Our own config through the Gemma 3 name is read as ours.
    ours = tiny_config("gemma3")
    assert Gemma3Backbone(**ours).get_config()["layer_types"] == ours["layer_types"]


def test_mixed_or_vision_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mix keras-hub's config keys"):
        GemmaBackbone(
            **SHARED,
            hidden_dim=16,
            intermediate_dim=32,
            use_sliding_window_attention=True,
            layer_types=["full_attention"] * 6,
        )
    with pytest.raises(ValueError, match="`vision_encoder` must be None"):
        Gemma3Backbone(**SHARED, hidden_dim=16, intermediate_dim=32, vision_encoder=object())
    with pytest.raises(ValueError, match="`image_converter` must be None"):
        keras_gemma.Gemma3CausalLMPreprocessor(None, image_converter=object())


def test_int8_model_built_from_its_config_gives_its_config_again():
    backbone = GemmaBackbone(**tiny_config("gemma"))
    backbone.quantize("int8")
    revived = GemmaBackbone.from_config(backbone.get_config())  # a DTypePolicyMap
    assert revived.get_config() == backbone.get_config()  # raised TypeError before


def test_float8_weights_round_trip_through_from_config():
    backbone = GemmaBackbone(**tiny_config("gemma3"))
    backbone.quantize("float8")
    revived = GemmaBackbone.from_config(backbone.get_config())
    revived.set_weights(backbone.get_weights())  # shape mismatch before
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(revived(INPUTS)), keras.ops.convert_to_numpy(backbone(INPUTS))
    )


def test_compile_on_construction_and_compile_false(tiny_lm):
    lm = GemmaCausalLM(tiny_lm.backbone, tiny_lm.preprocessor)
    assert lm.compiled and isinstance(lm.optimizer, keras.optimizers.AdamW)
    assert not GemmaCausalLM(tiny_lm.backbone, tiny_lm.preprocessor, compile=False).compiled


def test_backbone_refuses_arguments_keras_would_drop():
    with pytest.raises(TypeError, match=r"unexpected arguments \['compile'\]"):
        GemmaBackbone(**tiny_config("gemma"), compile=False)


def _without_spec_ids(path):
    model = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as file:
        model.ParseFromString(file.read())
    model.trainer_spec.pad_id = model.trainer_spec.bos_id = model.trainer_spec.eos_id = -1
    return model


def test_special_ids_fall_back_to_the_pieces_and_missing_pieces_raise(vocabulary_path, tokenizer):
    model = _without_spec_ids(vocabulary_path)
    fallback = GemmaTokenizer(model.SerializeToString())
    assert (fallback.pad_token_id, fallback.bos_token_id, fallback.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    model.pieces[tokenizer.eos_token_id].piece = "<not_eos>"
    with pytest.raises(ValueError, match="has no <eos> piece"):
        GemmaTokenizer(model.SerializeToString())


def test_keras_hub_tokenizer_names(tokenizer):
    assert tokenizer.vocabulary_size() == tokenizer.vocabulary_size == 400
    assert tokenizer.start_token_id == tokenizer.bos_token_id == 2
    assert tokenizer.end_token_id == tokenizer.eos_token_id == 1
    assert (tokenizer.start_token, tokenizer.end_token) == ("<bos>", "<eos>")


def test_prompts_and_responses_weight_only_the_response(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    prompt, response = tokenizer("The capital"), tokenizer(" is Paris")
    x, labels, weights = preprocessor({"prompts": ["The capital"], "responses": [" is Paris"]})
    row = [2] + prompt + response + [1]
    np.testing.assert_array_equal(x["token_ids"][0, : len(row)], row)
    expected = [0] * len(prompt) + [1] * (len(response) + 1)  # response and <eos>
    np.testing.assert_array_equal(weights[0, : len(expected)], expected)
    assert weights[0, len(expected) :].sum() == 0
    np.testing.assert_array_equal(labels[0, : len(row) - 1], row[1:])


def test_fit_on_prompts_and_responses_changes_the_weights(tokenizer):
    backbone = GemmaBackbone(**tiny_config("gemma", vocabulary_size=400))
    lm = GemmaCausalLM(backbone, GemmaCausalLMPreprocessor(tokenizer, sequence_length=8))
    before = [np.array(w) for w in lm.backbone.get_weights()]
    history = lm.fit(
        {"prompts": ["Hello", "Hi"], "responses": [" there", " you"]},
        epochs=1,
        batch_size=2,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, b) for a, b in zip(before, lm.backbone.get_weights()))


def test_predict_on_strings_and_score_forms(tiny_lm):
    logits = tiny_lm.predict(["Hello there"], verbose=0)
    assert logits.shape == (1, 32, 400)
    inputs = tiny_lm.preprocessor.generate_preprocess(["Hello there", "Hi"])
    scores = tiny_lm.score(inputs)
    longest = int(np.asarray(inputs["padding_mask"]).sum(axis=1).max())
    assert scores.shape == (2, longest - 1)  # trimmed to the longest row, as documented
    loss = tiny_lm.score(
        token_ids=inputs["token_ids"],
        padding_mask=inputs["padding_mask"],
        scoring_mode="loss",
        target_ids=np.roll(inputs["token_ids"], -1, 1),
    )
    assert tuple(loss.shape) == (2, 32)
    with pytest.raises(ValueError, match="get_layer"):
        tiny_lm.score(token_ids=inputs["token_ids"], layer_intercept_fn=lambda x, i: x)


def test_enable_lora_target_layer_names_and_from_preset_preprocessor(saved_preset, tokenizer):
    backbone = GemmaBackbone(**tiny_config("gemma"))
    backbone.enable_lora(2, target_layer_names=["query_dense", "value_dense"])
    paths = {w.path.rsplit("/", 2)[-2] for w in backbone.trainable_weights}
    assert paths == {"query", "value"}
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=7)
    lm = GemmaCausalLM.from_preset(saved_preset, preprocessor=preprocessor)
    assert lm.preprocessor is preprocessor


def test_get_layout_map_on_the_class_gives_keras_hub_layout():
    devices = [f"cpu:{i}" for i in range(2)]  # Only the mesh's shape matters here.
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout_map = GemmaBackbone.get_layout_map(mesh)
    assert tuple(layout_map["decoder_block_0/attention/key/kernel"].axes) == (
        "model",
        "batch",
        None,
    )
    assert tuple(layout_map["decoder_block_3/feed_forward/ffw_gating_2/kernel"].axes) == (
        "batch",
        "model",
    )
