"""Text inputs of `GemmaTokenizer`: strings and batches of them, chat message parts."""

import numpy as np


def as_text_list(inputs):
    """Returns `(list of str, is_batch)` for a string or a batch of them."""
    if isinstance(inputs, np.ndarray):
        if inputs.ndim > 1:
            raise ValueError(
                "Expected a string or a 1-D batch of strings. Received an "
                f"array of shape {inputs.shape}"
            )
        is_batch = inputs.ndim == 1
        inputs = inputs.tolist() if is_batch else inputs.item()
    else:
        is_batch = isinstance(inputs, (list, tuple))
    texts = list(inputs) if is_batch else [inputs]
    for index, text in enumerate(texts):
        if isinstance(text, bytes):
            texts[index] = text.decode("utf-8")
        elif not isinstance(text, str):
            raise ValueError(
                "Expected a string or a batch of strings (list, NumPy array or "
                f"tf.Tensor). Received {type(text).__name__}: {text!r}"
            )
    return texts, is_batch


def message_text(message, strip):
    content = message.get("content")
    if isinstance(content, str):
        parts = [content]
    else:
        parts = []
        for part in content or ():
            if part.get("type") != "text":
                raise ValueError(
                    "Only text message parts are supported. Received a part "
                    f"of type {part.get('type')!r}."
                )
            parts.append(part["text"])
    return "".join(part.strip() if strip else part for part in parts)
