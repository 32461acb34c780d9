"""Attention masks, built from slot indices so one function serves every layer.

A "slot" is a token's index along the (padded) sequence. Causality and the
sliding window are measured in slots; with left or right padding the slot
distance between two real tokens equals their position distance.
"""

from keras import ops


def positions_from_padding_mask(padding_mask):
    """RoPE positions `[b, t]`: each real token's index among the real tokens.

    Handles left padding (generation) and right padding (training) alike;
    padded slots get position 0 and are masked out anyway.
    """
    mask = ops.cast(padding_mask, "int32")
    return ops.maximum(ops.cumsum(mask, axis=-1) - 1, 0)


def attention_mask(query_slots, key_slots, key_is_valid, sliding_window_size=None):
    """Boolean mask `[b, t, s]`: may query slot t attend key slot s.

    Args:
        query_slots: int `[t]` or `[b, t]`.
        key_slots: int `[s]` or `[b, s]`.
        key_is_valid: bool `[b, s]`, false for padding and empty cache slots.
        sliding_window_size: int or None. A query sees the `window` most recent
            slots, itself included (HF: `q - k < sliding_window`).
    """
    query_slots = ops.convert_to_tensor(query_slots, "int32")
    key_slots = ops.convert_to_tensor(key_slots, "int32")
    if len(query_slots.shape) == 1:
        query_slots = query_slots[None, :]
    if len(key_slots.shape) == 1:
        key_slots = key_slots[None, :]
    distance = query_slots[:, :, None] - key_slots[:, None, :]  # (b|1, t, s)
    mask = distance >= 0
    if sliding_window_size is not None:
        mask = ops.logical_and(mask, distance < sliding_window_size)
    return ops.logical_and(mask, ops.cast(key_is_valid, "bool")[:, None, :])
