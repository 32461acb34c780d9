"""What `GemmaCausalLM` accepts the way keras-hub's task models do.

- `text_inputs`: raw strings, `{"prompts", "responses"}` dicts of strings,
  and `tf.data` datasets of either (also as `(x,)` tuples, which is how
  `tf.data.Dataset.from_tensor_slices((texts,))` yields them), recognized
  without importing TensorFlow.
- `lora_target_names`: keras-hub's `target_layer_names` (its layer names
  `query_dense`, `value_dense`, ... or ours).
- `score_tokens`: keras-hub's `score(token_ids=, padding_mask=,
  scoring_mode=, target_ids=)`.
"""

import sys

import keras
from keras import ops

from keras_gemma.generation import prompts

PAIR_KEYS = ("prompts", "responses")
# keras-hub's attention layer names -> ours.
_KERAS_HUB_LAYER_NAMES = {
    "query_dense": "query",
    "key_dense": "key",
    "value_dense": "value",
    "output_dense": "attention_output",
}
SCORING_MODES = ("logits", "loss")


def is_text_pairs(x):
    """Whether `x` is `{"prompts": texts, "responses": texts}` (Python or NumPy)."""
    return (
        isinstance(x, dict)
        and sorted(x) == sorted(PAIR_KEYS)
        and all(prompts.is_text(value) for value in x.values())
    )


def is_text_dataset(x):
    """Whether `x` is a `tf.data.Dataset` whose elements are strings only.

    Elements may be a string, a `{"prompts", "responses"}` dict of strings,
    or a one-element tuple of either. TensorFlow is not imported: if it was
    not imported already, `x` cannot be a dataset.
    """
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None or not isinstance(x, tensorflow.data.Dataset):
        return False
    specs = keras.tree.flatten(x.element_spec)
    return bool(specs) and all(getattr(spec, "dtype", None) == tensorflow.string for spec in specs)


def map_text_dataset(dataset, preprocessor):
    """`dataset` mapped through `preprocessor`; `(x,)` elements are unpacked first."""
    return dataset.map(lambda *element: preprocessor(element[0]))


def lora_target_names(target_names, target_layer_names):
    """Our `target_names` from `enable_lora`'s `target_names` / keras-hub's `target_layer_names`."""
    if target_layer_names is None:
        return target_names
    if isinstance(target_layer_names, str):
        target_layer_names = [target_layer_names]
    return tuple(_KERAS_HUB_LAYER_NAMES.get(name, name) for name in target_layer_names)


def score_tokens(causal_lm, token_ids, padding_mask, scoring_mode, target_ids, layer_intercept_fn):
    """keras-hub's `score`: logits `[b, t, vocab]`, or per-token loss `[b, t]`."""
    if layer_intercept_fn is not None:
        raise ValueError(
            "`layer_intercept_fn` is not supported: keras_gemma's backbone is a functional "
            "model, so read any layer's output with `keras.Model(backbone.input, "
            "backbone.get_layer(name).output)` instead."
        )
    if scoring_mode not in SCORING_MODES:
        raise ValueError(
            f"`scoring_mode` must be one of {SCORING_MODES}. Received: {scoring_mode!r}"
        )
    if padding_mask is None:
        padding_mask = ops.ones_like(token_ids)
    logits = causal_lm({"token_ids": token_ids, "padding_mask": padding_mask})  # (b, t, vocab)
    if scoring_mode == "logits":
        return logits
    if target_ids is None:
        raise ValueError('`scoring_mode="loss"` needs `target_ids` `[batch, seq]`.')
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    return loss(target_ids, logits)  # (b, t)
