import keras
import numpy as np

from keras_gemma.testing.models import assign_scaled_random_weights
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import ragged_inputs
from keras_gemma.testing.models import random_backbone


def weights_of(model):
    return [keras.ops.convert_to_numpy(variable) for variable in model.weights]


def test_random_backbone_is_a_function_of_its_seed():
    first, again, other = random_backbone(0), random_backbone(0), random_backbone(1)
    for a, b in zip(weights_of(first), weights_of(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights_of(first)[0], weights_of(other)[0])
    assert first.get_config()["vocabulary_size"] == 400
    assert np.std(np.concatenate([w.ravel() for w in weights_of(first)])) > 0.29
    np.testing.assert_array_equal(logits_of(first), logits_of(again))


def test_scaled_random_weights():
    backbone = assign_scaled_random_weights(random_backbone(0, "gemma2"), seed=3)
    values = dict(zip([variable.path for variable in backbone.weights], weights_of(backbone)))
    scales = np.concatenate([value for path, value in values.items() if path.endswith("scale")])
    assert 0.45 < np.std(scales) < 0.55
    embeddings = [value for path, value in values.items() if "embedding" in path]
    assert len(embeddings) == 1 and 0.95 < np.std(embeddings[0]) < 1.05


def test_ragged_inputs():
    inputs = ragged_inputs(vocabulary_size=50, length=6, padding=2, seed=0)
    np.testing.assert_array_equal(inputs["padding_mask"], [[1] * 6, [1] * 4 + [0] * 2])
    assert np.all(inputs["token_ids"][1, 4:] == 0)
    assert np.all((inputs["token_ids"][:, :4] >= 3) & (inputs["token_ids"][:, :4] < 50))
