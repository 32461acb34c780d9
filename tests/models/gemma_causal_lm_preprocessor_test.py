import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor

BOS, EOS, PAD = 2, 1, 0
# Ids of the tiny vocabulary, checked in `test_tiny_vocabulary_ids`.
THE_FOX = [330, 264, 282, 333, 353]  # "t", "he", "▁f", "o", "x"
A = [331]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "café 你好 🤖\n  code(x)  ",
    "<start_of_turn>user\nhi<end_of_turn>",
]


def test_tiny_vocabulary_ids(tokenizer):
    assert tokenizer("the fox") == THE_FOX
    assert tokenizer("a") == A
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS, EOS)
    assert tokenizer.pad_token_id == PAD


def test_call_outputs(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    x, labels, sample_weight = preprocessor(["the fox", "a"])
    np.testing.assert_array_equal(
        x["token_ids"],
        [
            [BOS, *THE_FOX, EOS, PAD],
            [BOS, *A, EOS, PAD, PAD, PAD, PAD, PAD],
        ],
    )
    np.testing.assert_array_equal(
        x["padding_mask"],
        [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(
        labels,
        [[*THE_FOX, EOS, PAD, PAD], [*A, EOS, PAD, PAD, PAD, PAD, PAD, PAD]],
    )
    np.testing.assert_array_equal(
        sample_weight,
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
    )
    assert x["token_ids"].dtype == np.int32
    assert x["padding_mask"].dtype == bool
    assert labels.dtype == np.int32
    assert sample_weight.dtype == np.float32


def test_unbatched_and_array_inputs(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    batched = preprocessor(["the fox", "a"])
    single = preprocessor("a")
    assert single[0]["token_ids"].shape == (8,)
    np.testing.assert_array_equal(single[1], batched[1][1])
    from_array = preprocessor(np.array(["the fox", "a"]))
    np.testing.assert_array_equal(from_array[1], batched[1])


def test_without_start_and_end_tokens(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(
        tokenizer, sequence_length=6, add_start_token=False, add_end_token=False
    )
    x, labels, sample_weight = preprocessor(["the fox"])
    np.testing.assert_array_equal(x["token_ids"], [[*THE_FOX, PAD]])
    np.testing.assert_array_equal(labels, [[*THE_FOX[1:], PAD, PAD]])
    np.testing.assert_array_equal(sample_weight, [[1, 1, 1, 1, 0, 0]])


def test_too_long_text_raises(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=5)
    preprocessor(["a", "the f"])  # 1 + 4 + 1 tokens fit.
    with pytest.raises(
        ValueError,
        match=r"Sample 1 is 7 tokens long .* the limit is 6 "
        r"\(`sequence_length=5`.*truncate='right'",
    ):
        preprocessor(["a", "the fox"])
    with pytest.raises(ValueError, match="Sample 0 is 6 tokens long"):
        preprocessor.generate_preprocess(["the fox"])


def test_explicit_truncation(tokenizer):
    right = GemmaCausalLMPreprocessor(tokenizer, sequence_length=5, truncate="right")
    x, labels, sample_weight = right(["the fox"])
    np.testing.assert_array_equal(x["token_ids"], [[BOS, *THE_FOX[:4]]])
    np.testing.assert_array_equal(labels, [[*THE_FOX[:4], EOS]])
    np.testing.assert_array_equal(sample_weight, [[1, 1, 1, 1, 1]])
    left = GemmaCausalLMPreprocessor(tokenizer, sequence_length=5, truncate="left")
    x, labels, _ = left(["the fox"])
    np.testing.assert_array_equal(x["token_ids"], [[BOS, *THE_FOX[1:]]])
    np.testing.assert_array_equal(labels, [[*THE_FOX[1:], EOS]])
    with pytest.raises(ValueError, match=r"\('error', 'right', 'left'\)"):
        GemmaCausalLMPreprocessor(tokenizer, truncate=True)


def test_labels_are_not_accepted(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    with pytest.raises(ValueError, match="pass only `x`"):
        preprocessor(["a"], y=["b"])


def test_generate_preprocess_and_postprocess(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=4)
    inputs = preprocessor.generate_preprocess(["the fox", "a"], 8)
    np.testing.assert_array_equal(
        inputs["token_ids"],
        [[BOS, *THE_FOX, PAD, PAD], [BOS, *A, PAD, PAD, PAD, PAD, PAD, PAD]],
    )
    np.testing.assert_array_equal(
        inputs["padding_mask"],
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
    )
    assert inputs["token_ids"].dtype == np.int32
    # The model wrote `EOS` and `<end_of_turn>` after the prompts; ids where
    # the padding mask is False are dropped whatever they are.
    end_of_turn = tokenizer.end_of_turn_token_id
    token_ids = np.array([[BOS, *THE_FOX, end_of_turn, EOS], [BOS, *A, *A, EOS, 331, 331, 0, 0]])
    padding_mask = np.array([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]], bool)
    outputs = preprocessor.generate_postprocess(
        {
            "token_ids": keras.ops.convert_to_tensor(token_ids),
            "padding_mask": keras.ops.convert_to_tensor(padding_mask),
        }
    )
    assert outputs == ["the fox<end_of_turn>", "aa"]
    single = preprocessor.generate_postprocess(
        {"token_ids": token_ids[1], "padding_mask": padding_mask[1]}
    )
    assert single == "aa"


def test_matches_keras_hub(vocabulary_path, tokenizer):
    import keras_hub  # Needs TensorFlow, installed wherever tests run.

    peer = keras_hub.models.GemmaCausalLMPreprocessor(
        keras_hub.models.GemmaTokenizer(proto=vocabulary_path),
        sequence_length=64,
    )
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=64)
    expected = peer(TEXTS)
    actual = preprocessor(TEXTS)
    for name in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(
            actual[0][name], keras.ops.convert_to_numpy(expected[0][name])
        )
    for index in (1, 2):
        np.testing.assert_array_equal(actual[index], keras.ops.convert_to_numpy(expected[index]))


def test_tensorflow_dataset_matches_eager(tokenizer):
    import tensorflow as tf

    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=64)
    expected = preprocessor(TEXTS)
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS)
    for batched in (
        dataset.batch(3).map(preprocessor),
        dataset.map(preprocessor).batch(3),
    ):
        x, labels, sample_weight = tf.nest.map_structure(
            lambda *parts: tf.concat(parts, 0), *batched
        )
        assert x["token_ids"].dtype == tf.int32
        assert x["padding_mask"].dtype == tf.bool
        assert sample_weight.dtype == tf.float32
        np.testing.assert_array_equal(x["token_ids"], expected[0]["token_ids"])
        np.testing.assert_array_equal(x["padding_mask"], expected[0]["padding_mask"])
        np.testing.assert_array_equal(labels, expected[1])
        np.testing.assert_array_equal(sample_weight, expected[2])


def test_tensorflow_truncation_matches_eager(tokenizer):
    import tensorflow as tf

    texts = ["the fox", "a", "the capital of France"]
    for truncate in ("right", "left"):
        preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=5, truncate=truncate)
        for method in (preprocessor, preprocessor.generate_preprocess):
            expected = method(texts)
            actual = tf.function(method)(tf.constant(texts))
            tf.nest.map_structure(np.testing.assert_array_equal, actual, expected)
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=5)
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncate="):
        list(dataset.map(preprocessor))


def test_config_round_trip(tokenizer):
    preprocessor = GemmaCausalLMPreprocessor(
        tokenizer, sequence_length=16, add_end_token=False, truncate="left"
    )
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(preprocessor)))
    restored = keras.saving.deserialize_keras_object(serialized)
    assert restored.get_config() == preprocessor.get_config()
    np.testing.assert_array_equal(restored(TEXTS)[1], preprocessor(TEXTS)[1])


def test_preset_round_trip(tokenizer, tmp_path):
    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=16, truncate="right")
    preprocessor.save_to_preset(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "assets",
        "preprocessor.json",
        "tokenizer.json",
    ]
    with open(tmp_path / "preprocessor.json") as file:
        assert json.load(file) == {
            "class_name": "GemmaCausalLMPreprocessor",
            "config": {
                "sequence_length": 16,
                "add_start_token": True,
                "add_end_token": True,
                "truncate": "right",
            },
        }
    restored = GemmaCausalLMPreprocessor.from_preset(str(tmp_path))
    assert restored.get_config() == preprocessor.get_config()
    longer = GemmaCausalLMPreprocessor.from_preset(str(tmp_path), sequence_length=32)
    assert longer.sequence_length == 32
    assert longer(TEXTS)[0]["token_ids"].shape == (len(TEXTS), 32)


def test_loads_keras_hub_preset(vocabulary_path, tmp_path):
    import keras_hub

    peer = keras_hub.models.GemmaCausalLMPreprocessor(
        keras_hub.models.GemmaTokenizer(proto=vocabulary_path),
        sequence_length=48,
    )
    peer.save_to_preset(str(tmp_path))
    preprocessor = GemmaCausalLMPreprocessor.from_preset(str(tmp_path))
    assert preprocessor.sequence_length == 48
    np.testing.assert_array_equal(
        preprocessor(TEXTS)[1], keras.ops.convert_to_numpy(peer(TEXTS)[1])
    )


def test_works_without_tensorflow(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["tensorflow"] = None  # Any import of it now fails.
        sys.modules["tensorflow_text"] = None
        from keras_gemma.models.gemma_causal_lm_preprocessor import (
            GemmaCausalLMPreprocessor,
        )
        from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
        from keras_gemma.testing.vocab import build_tiny_vocabulary

        tokenizer = GemmaTokenizer(proto=build_tiny_vocabulary(sys.argv[1]))
        ids = tokenizer(["hello <bos> world", "café"])
        assert tokenizer.detokenize(ids)[1] == "café"
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
        preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
        x, labels, sample_weight = preprocessor(["the fox", "a"])
        assert x["token_ids"].shape == (2, 8)
        inputs = preprocessor.generate_preprocess("the fox")
        assert preprocessor.generate_postprocess(inputs) == "the fox"
        preprocessor.save_to_preset(sys.argv[1] + "/preset")
        GemmaCausalLMPreprocessor.from_preset(sys.argv[1] + "/preset")
        loaded = [
            name
            for name, module in sys.modules.items()
            if name.startswith("tensorflow") and module is not None
        ]
        assert not loaded, loaded
        print("OK")
        """
    )
    import keras_gemma

    repository = os.path.dirname(os.path.dirname(keras_gemma.__file__))
    python_path = os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")]))
    environment = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=python_path)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
