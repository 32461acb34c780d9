"""keras-hub's `TestCase` contract (keras_hub/src/tests/test_case.py), for the ported tests.

keras-hub's own module imports `grain` (not a dependency here) at import
time, so the ported tests import this one instead. Each `run_*_test` checks
what keras-hub's does for text models: config and serialization round trips,
eager and `tf.data` calls agreeing, `predict` / `fit` on raw data, mixed
precision, int8 / float8 policies, saving. keras-hub's Grain-pipeline checks
are left out (Grain is not installed), and so are its image-model branches.
The test vocabularies keras-hub ships as files are built here (`test_data`).
"""

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
from absl.testing import parameterized
from keras import ops
from keras import tree

from keras_gemma.models.gemma_tokenizer import GemmaTokenizer

_TEST_DATA = {}


def _to_comparable(value):
    if hasattr(value, "numpy") and getattr(value, "dtype", None) is not None:
        if getattr(value.dtype, "name", "") == "string":
            if hasattr(value, "to_list"):
                return tree.map_structure(lambda text: text.decode("utf-8"), value.to_list())
            value = value.numpy()
            if isinstance(value, bytes):
                return value.decode("utf-8")
            return [text.decode("utf-8") for text in value.tolist()]
    if hasattr(value, "to_list"):  # tf.RaggedTensor
        return value.to_list()
    if hasattr(value, "__array__") and not isinstance(value, np.ndarray):
        array = ops.convert_to_numpy(value)
        return array.astype("float32") if array.dtype.name == "bfloat16" else array
    return value


def _comparable(structure):
    return tree.map_structure(_to_comparable, structure, none_is_leaf=True)


def _word_vocabulary(path, sentences, user_defined=()):
    """A SentencePiece word model like keras-hub's `create_gemma_test_proto.py` writes."""
    import sentencepiece

    corpus = path + ".txt"
    with open(corpus, "w") as file:
        file.write("\n".join(sentences))
    sentencepiece.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=path[: -len(".spm")],
        model_type="WORD",
        vocab_size=4 + len({word for sentence in sentences for word in sentence.split()}),
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        bos_piece="<bos>",
        eos_piece="<eos>",
        unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )
    os.replace(path[: -len(".spm")] + ".model", path)
    if user_defined:
        # Inserted after `<unk>` by hand: the trainer would also count them as words.
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto()
        with open(path, "rb") as file:
            model.ParseFromString(file.read())
        pieces = list(model.pieces)
        del model.pieces[:]
        for piece in pieces[:4]:
            model.pieces.append(piece)
        for symbol in user_defined:
            model.pieces.add(piece=symbol, score=0.0, type=4)  # USER_DEFINED
        for piece in pieces[4:]:
            model.pieces.append(piece)
        with open(path, "wb") as file:
            file.write(model.SerializeToString())


def test_data_dir():
    """keras-hub's test vocabularies, built once per process in a temp directory."""
    if "dir" not in _TEST_DATA:
        directory = tempfile.mkdtemp(prefix="keras_hub_test_data_")
        sentences = ["the quick brown fox", "the earth is round"]
        _word_vocabulary(os.path.join(directory, "gemma_test_vocab.spm"), sentences)
        images = ["<start_of_image>", "<end_of_image>", "<start_of_turn>", "<end_of_turn>", "<img>"]
        _word_vocabulary(os.path.join(directory, "gemma3_test_vocab.spm"), sentences, images)
        _word_vocabulary(
            os.path.join(directory, "mock_gemma3_vocab.spm"), sentences, images + ["<mask>"]
        )
        _no_special_token_vocabulary(os.path.join(directory, "no_special_token_vocab.spm"))
        _TEST_DATA["dir"] = directory
    return _TEST_DATA["dir"]


def _no_special_token_vocabulary(path):
    """keras-hub's `create_no_special_token_proto.py`: no `<pad>`, `<bos>`, `<eos>` at all."""
    import sentencepiece

    corpus = path + ".txt"
    with open(corpus, "w") as file:
        file.write("abc")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=path[: -len(".spm")],
        model_type="WORD",
        vocab_size=5,
        pad_id=-1,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        user_defined_symbols=["[MASK]", "[SEP]"],
        num_threads=1,
        minloglevel=2,
    )
    os.replace(path[: -len(".spm")] + ".model", path)


class TestCase(parameterized.TestCase):
    """Assertions and `run_*_test` checks with keras-hub's names and meaning."""

    def assertAllClose(self, x1, x2, atol=1e-6, rtol=1e-6, msg=None):
        x1, x2 = _comparable(x1), _comparable(x2)
        if isinstance(x1, dict) or isinstance(x2, dict):
            self.assertEqual(sorted(x1), sorted(x2), msg)
            for key in x1:
                self.assertAllClose(x1[key], x2[key], atol, rtol, msg)
            return
        if isinstance(x1, tuple) or isinstance(x2, tuple):
            self.assertEqual(len(x1), len(x2), msg)
            for first, second in zip(x1, x2):
                self.assertAllClose(first, second, atol, rtol, msg)
            return
        np.testing.assert_allclose(
            np.asarray(x1, "float64"), np.asarray(x2, "float64"), atol=atol, rtol=rtol
        )

    def assertAllEqual(self, x1, x2, msg=None):
        x1, x2 = _comparable(x1), _comparable(x2)
        if isinstance(x1, str) or isinstance(x2, str):
            return super().assertEqual(x1, x2, msg)
        np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2), err_msg=msg or "")

    def assertEqual(self, x1, x2, msg=None):
        x1, x2 = _comparable(x1), _comparable(x2)
        if isinstance(x1, np.ndarray) or isinstance(x2, np.ndarray):
            return np.testing.assert_array_equal(x1, x2, err_msg=msg or "")
        if isinstance(x1, tuple) and isinstance(x2, (list, tuple)):
            x1, x2 = list(x1), list(x2)
        super().assertEqual(x1, x2, msg)

    def assertDTypeEqual(self, x, expected_dtype, msg=None):
        super().assertEqual(keras.backend.standardize_dtype(x.dtype), expected_dtype, msg)

    def get_temp_dir(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        return directory

    def get_test_data_dir(self):
        return test_data_dir()

    def run_serialization_test(self, instance):
        """Config and `serialize_keras_object` round trips give the same config and attributes."""
        cls = instance.__class__
        config_json = json.dumps(instance.get_config(), sort_keys=True)
        revived = cls.from_config(instance.get_config())
        self.assertEqual(config_json, json.dumps(revived.get_config(), sort_keys=True))
        self.assertEqual(set(dir(instance)), set(dir(revived)))
        serialized = json.dumps(keras.saving.serialize_keras_object(instance), sort_keys=True)
        revived = keras.saving.deserialize_keras_object(json.loads(serialized))
        self.assertEqual(config_json, json.dumps(revived.get_config(), sort_keys=True))

    def run_preprocessing_layer_test(
        self,
        cls,
        init_kwargs,
        input_data,
        expected_output=None,
        expected_detokenize_output=None,
        return_output=False,
    ):
        """Direct call, detokenize round trip, and `tf.data` (batched and not) agree."""
        import tensorflow as tf

        layer = cls(**init_kwargs)
        self.run_serialization_test(layer)
        output = layer(*input_data) if isinstance(input_data, tuple) else layer(input_data)
        if isinstance(layer, GemmaTokenizer):
            expected = expected_detokenize_output or input_data
            self.assertAllEqual(layer.detokenize(output), expected)
        dataset = tf.data.Dataset.from_tensor_slices(input_data)
        unbatched = dataset.map(layer).ragged_batch(1_000).get_single_element()
        self.assertAllClose(output, unbatched)
        batched = dataset.batch(1_000).map(layer).get_single_element()
        self.assertAllClose(output, batched)
        if expected_output:
            self.assertAllClose(output, expected_output)
        if return_output:
            return output

    def run_precision_test(self, cls, init_kwargs, input_data):
        if keras.config.backend() == "torch":
            import torch

            if not torch.cuda.is_available():
                return  # keras-hub: no mixed precision on PyTorch CPU.
        for name in ("mixed_float16", "mixed_bfloat16", "bfloat16"):
            policy = keras.dtype_policies.DTypePolicy(name)
            layer = cls(**{**init_kwargs, "dtype": policy})
            output = layer(input_data)
            spec = layer.compute_output_spec(input_data)
            for tensor in tree.flatten(output) + tree.flatten(spec):
                if "float" in keras.backend.standardize_dtype(tensor.dtype):
                    self.assertDTypeEqual(tensor, policy.compute_dtype)
            for weight in layer.weights:
                if "float" in keras.backend.standardize_dtype(weight.dtype):
                    self.assertDTypeEqual(weight, policy.variable_dtype)
            for sublayer in layer._flatten_layers():
                if isinstance(sublayer, (keras.layers.Softmax, keras.layers.InputLayer)):
                    continue
                self.assertEqual(policy.compute_dtype, sublayer.compute_dtype)
                self.assertEqual(policy.variable_dtype, sublayer.variable_dtype)

    def run_quantization_test(self, instance, cls, init_kwargs, input_data):
        if keras.config.backend() == "torch":
            return  # keras-hub skips PyTorch here.
        for mode in ("int8", "float8"):
            supported = [keras.layers.Dense, keras.layers.EinsumDense]
            if mode == "int8":
                supported += [keras.layers.Embedding, keras.layers.ReversibleEmbedding]
            policy_map = keras.dtype_policies.DTypePolicyMap("float32")
            for layer in instance._flatten_layers():
                if type(layer) in supported:
                    policy_map[layer.path] = keras.dtype_policies.get(f"{mode}_from_float32")
            model = cls(**{**init_kwargs, "dtype": policy_map})
            model(input_data)
            for layer in model._flatten_layers():
                if type(layer) in supported:
                    self.assertEqual(mode, layer.quantization_mode)
            config = model.get_config()
            revived = cls.from_config(config)
            self.assertEqual(config, revived.get_config())
            revived.set_weights(model.get_weights())

    def run_backbone_test(
        self,
        cls,
        init_kwargs,
        input_data,
        expected_output_shape,
        variable_length_data=None,
        run_mixed_precision_check=True,
        run_quantization_check=True,
    ):
        import tensorflow as tf

        backbone = cls(**init_kwargs)
        self.run_serialization_test(backbone)
        output = backbone(input_data)
        self.assertEqual(tuple(output.shape), tuple(expected_output_shape))
        backbone.token_embedding(ops.zeros((2, 3), dtype="int32"))
        if variable_length_data is None:
            variable_length_data = [
                tree.map_structure(lambda x, n=length: x[:, :n, ...], input_data)
                for length in (2, 3, 4)
            ]
        for batch in variable_length_data:
            backbone(batch)
        backbone.predict(input_data)
        numpy_data = tree.map_structure(ops.convert_to_numpy, input_data)
        backbone.predict(tf.data.Dataset.from_tensor_slices(numpy_data).batch(2))
        name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", cls.__name__)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        self.assertRegex(backbone.name, name)
        if run_mixed_precision_check:
            self.run_precision_test(cls, init_kwargs, input_data)
        if run_quantization_check:
            self.run_quantization_test(backbone, cls, init_kwargs, input_data)

    def run_task_test(
        self,
        cls,
        init_kwargs,
        train_data,
        expected_output_shape=None,
        batch_size=2,
        compile_kwargs=None,
    ):
        import tensorflow as tf

        task = cls(**init_kwargs)
        if compile_kwargs:
            task.compile(**compile_kwargs)
        self.run_serialization_test(task)
        preprocessor = task.preprocessor
        dataset = tf.data.Dataset.from_tensor_slices(train_data).batch(batch_size)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(train_data)
        preprocessed = preprocessor(*train_data)[0]
        tree.assert_same_structure(preprocessed, task._inputs_struct, check_types=False)
        output = task.predict(x)
        if expected_output_shape is not None:
            self.assertAllClose(tuple(output.shape), expected_output_shape)
        self.assertAllClose(output, task.predict(dataset))
        task.preprocessor = None
        output_split = task.predict(dataset.map(preprocessor))
        task.preprocessor = preprocessor
        self.assertAllClose(output, output_split)
        task.fit(x, y, sample_weight=sample_weight)
        task.fit(dataset)
        task.preprocessor = None
        task.fit(dataset.map(preprocessor))
        task.preprocessor = preprocessor
        task = cls(**init_kwargs, compile=False)
        with self.assertRaisesRegex(ValueError, "You must call `compile"):
            task.fit(dataset)

    def run_model_saving_test(self, cls, init_kwargs, input_data, atol=1e-6, rtol=1e-6):
        model = cls(**init_kwargs)
        output = model(input_data)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.models.load_model(path)
        self.assertIsInstance(restored, cls)
        self.assertAllClose(output, restored(input_data), atol=atol, rtol=rtol)
