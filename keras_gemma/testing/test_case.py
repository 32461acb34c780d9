"""A small `TestCase` base for pytest test classes, usable on every backend.

Example:
```python
class TestRMSNormalization(TestCase):
    def test_layer(self):
        self.run_layer_test(
            RMSNormalization,
            init_kwargs={"epsilon": 1e-6},
            input_data=np.ones((2, 3, 4), "float32"),
            expected_output_shape=(2, 3, 4),
        )
```
"""

import os
import tempfile

import keras
import numpy as np


def to_numpy(value):
    """A backend tensor (or nested structure of them) as NumPy arrays."""
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(item) for item in value)
    if value is None:
        return None
    array = keras.ops.convert_to_numpy(value)
    if array.dtype.name == "bfloat16":
        array = array.astype("float32")
    return np.asarray(array)


def _call(obj, inputs, call_kwargs):
    if isinstance(inputs, dict) and not isinstance(obj, keras.Model):
        return obj(**inputs, **call_kwargs)
    return obj(inputs, **call_kwargs)


class TestCase:
    """Assertions and lifecycle checks shared by the test modules.

    Plain class (no `unittest.TestCase`), so pytest fixtures, parametrization
    and `tmp_path` work in subclasses.
    """

    def assert_all_close(self, actual, expected, atol=1e-6, rtol=1e-6, msg=None):
        """`np.testing.assert_allclose` after converting (nested) tensors."""
        actual, expected = to_numpy(actual), to_numpy(expected)
        if isinstance(expected, dict):
            assert sorted(actual) == sorted(expected), msg
            for key in expected:
                self.assert_all_close(actual[key], expected[key], atol, rtol, msg)
            return
        if isinstance(expected, (list, tuple)):
            assert len(actual) == len(expected), msg
            for first, second in zip(actual, expected):
                self.assert_all_close(first, second, atol, rtol, msg)
            return
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=msg or "")

    def assert_not_all_close(self, actual, expected, atol=1e-6, rtol=1e-6, msg=None):
        actual, expected = to_numpy(actual), to_numpy(expected)
        if np.shape(actual) != np.shape(expected):
            return
        assert not np.allclose(actual, expected, atol=atol, rtol=rtol), (
            msg or "outputs are unexpectedly equal"
        )

    def run_serialization_test(self, obj):
        """`get_config` → `from_config` gives an object with the same config,
        and `keras.saving.serialize_keras_object` round-trips too."""
        config = obj.get_config()
        revived = obj.__class__.from_config(config)
        assert revived.get_config() == config
        serialized = keras.saving.serialize_keras_object(obj)
        revived = keras.saving.deserialize_keras_object(serialized)
        assert type(revived) is type(obj)
        assert revived.get_config() == config
        return revived

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_data,
        call_kwargs=None,
        expected_output_shape=None,
        expected_num_trainable_weights=None,
    ):
        """Build, call, serialize and rebuild a layer.

        `input_data` is the first positional input, or a dict of keyword
        inputs. The revived layer (from `get_config`) gets the original
        weights and must give the same output.
        """
        call_kwargs = call_kwargs or {}
        layer = layer_cls(**init_kwargs)
        output = _call(layer, input_data, call_kwargs)
        assert layer.built
        if expected_output_shape is not None:
            assert tuple(output.shape) == tuple(expected_output_shape)
        if expected_num_trainable_weights is not None:
            assert len(layer.trainable_weights) == expected_num_trainable_weights
        for key, value in init_kwargs.items():
            if key not in ("dtype", "name"):
                assert layer.get_config()[key] == value, key

        revived = self.run_serialization_test(layer)
        _call(revived, input_data, call_kwargs)  # builds it
        revived.set_weights(layer.get_weights())
        self.assert_all_close(_call(revived, input_data, call_kwargs), output)
        return layer, output

    def run_backbone_test(self, backbone_cls, init_kwargs, input_data, expected_output_shape):
        """Construct, call, check the config round trip and output equality."""
        backbone = backbone_cls(**init_kwargs)
        output = backbone(input_data)
        assert tuple(output.shape) == tuple(expected_output_shape)
        config = backbone.get_config()
        for key, value in init_kwargs.items():
            if key != "dtype":
                assert config[key] == value, key
        revived = self.run_serialization_test(backbone)
        revived.set_weights(backbone.get_weights())
        self.assert_all_close(revived(input_data), output, atol=1e-6, rtol=1e-6)
        return backbone, output

    def run_model_saving_test(self, model, input_data, atol=1e-6, rtol=1e-6):
        """Saves to `.keras` in a temp dir, reloads, compares outputs."""
        expected = model(input_data)
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.keras")
            model.save(path)
            restored = keras.saving.load_model(path)
        assert type(restored) is type(model)
        assert restored.get_config() == model.get_config()
        self.assert_all_close(restored(input_data), expected, atol=atol, rtol=rtol)
        return restored
