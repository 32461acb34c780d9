"""GemmaCausalLM's own contract: logits, config, presets, training, scoring, errors.

Generation is tested in tests/generation/; the backbone in gemma_backbone_test.py.
"""

import keras
import numpy as np
import pytest

from keras_gemma import samplers
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.models import random_backbone


def numpy_logits(lm, inputs):
    """Final hidden states times the transposed embedding, soft-capped, in NumPy."""
    hidden = keras.ops.convert_to_numpy(lm.backbone(inputs)).astype(np.float64)
    embedding = keras.ops.convert_to_numpy(lm.backbone.token_embedding.embeddings)
    logits = hidden @ embedding.T.astype(np.float64)
    cap = lm.backbone.final_logit_soft_cap
    return logits if cap is None else cap * np.tanh(logits / cap)


@pytest.mark.parametrize("family, soft_cap", [("gemma", None), ("gemma2", 5.0), ("gemma3", None)])
def test_logits_are_hidden_states_times_the_tied_embedding(family, soft_cap):
    overrides = {} if family == "gemma" else {"final_logit_soft_cap": soft_cap}
    lm = GemmaCausalLM(random_backbone(seed=2, family=family, **overrides))
    inputs = ragged_inputs()
    logits = lm(inputs)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert tuple(logits.shape) == (2, 9, lm.backbone.vocabulary_size)
    expected = numpy_logits(lm, inputs)
    if soft_cap is not None:
        assert np.abs(expected).max() <= soft_cap  # The cap was exercised.
        assert np.abs(expected).max() > 0.5 * soft_cap
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_config_round_trip_gives_the_same_logits(tiny_lm):
    inputs = ragged_inputs()
    config = tiny_lm.get_config()
    assert set(config) == {"backbone", "preprocessor", "name", "trainable"}
    restored = GemmaCausalLM.from_config(config)
    restored.set_weights(tiny_lm.get_weights())
    assert isinstance(restored.preprocessor, GemmaCausalLMPreprocessor)
    assert restored.preprocessor.sequence_length == tiny_lm.preprocessor.sequence_length
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(inputs)),
        keras.ops.convert_to_numpy(tiny_lm(inputs)),
        atol=1e-6,
    )


def test_preset_round_trip_gives_the_same_logits_and_text(tiny_lm, saved_preset):
    inputs = ragged_inputs()
    loaded = GemmaCausalLM.from_preset(saved_preset)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(tiny_lm(inputs))
    )
    prompt = "the quick brown"
    assert loaded.generate(prompt, max_new_tokens=5) == tiny_lm.generate(prompt, max_new_tokens=5)


def test_score_is_the_log_softmax_of_the_call_at_the_next_tokens(tiny_lm):
    inputs = ragged_inputs()
    scores = np.asarray(tiny_lm.score(inputs))
    logits = keras.ops.convert_to_numpy(tiny_lm(inputs)).astype(np.float64)
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    next_tokens = inputs["token_ids"][:, 1:]
    expected = np.take_along_axis(log_probabilities[:, :-1], next_tokens[..., None], -1)[..., 0]
    expected = np.where(inputs["padding_mask"][:, 1:] == 1, expected, 0.0)
    assert scores.shape == (2, 8)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_compile_sets_the_default_sampler_of_generate(tiny_lm, saved_preset):
    lm = GemmaCausalLM.from_preset(saved_preset)
    assert isinstance(lm.sampler, samplers.GreedySampler)
    lm.compile(sampler=samplers.TopKSampler(k=3, temperature=1.5))
    assert isinstance(lm.sampler, samplers.TopKSampler) and lm.sampler.k == 3
    seeded = lm.generate("the quick brown", max_new_tokens=6, seed=5)
    explicit = tiny_lm.generate("the quick brown", max_new_tokens=6, seed=5, sampler=lm.sampler)
    assert seeded == explicit


def test_fit_on_raw_strings_lowers_the_loss(saved_preset):
    lm = GemmaCausalLM.from_preset(saved_preset)
    lm.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2))
    texts = ["the quick brown fox jumps over the lazy dog"] * 4
    history = lm.fit(texts, epochs=4, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    # evaluate() takes strings the same way and agrees with the last weights.
    assert lm.evaluate(texts, batch_size=4, verbose=0, return_dict=True)["loss"] < losses[0]


def test_string_inputs_without_a_preprocessor_are_refused():
    lm = GemmaCausalLM(random_backbone(seed=0))
    lm.compile()
    with pytest.raises(ValueError, match="String inputs need a preprocessor"):
        lm.fit(["some text"], verbose=0)


def test_string_inputs_with_labels_are_refused(saved_preset):
    lm = GemmaCausalLM.from_preset(saved_preset)
    lm.compile()
    with pytest.raises(ValueError, match="labels and weights come from the text; pass only `x`"):
        lm.fit(["some text"], np.zeros((1, 4)), verbose=0)
