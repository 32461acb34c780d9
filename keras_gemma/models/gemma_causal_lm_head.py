"""The language-model head shared by `GemmaCausalLM` and the decoding loop."""

from keras import ops

from keras_gemma.layers.attention import soft_cap


def logits_from_hidden_states(backbone, hidden_states, decoding=False):
    """Tied-embedding projection then the final soft-cap, in float32.

    With `decoding=True` (the compiled generation loop) the projection
    contracts the embedding table on its feature axis, table first
    (`einsum("vd,btd->btv")`), rather than multiplying by its transpose:
    XLA turns `x @ E.T` into a transpose *copy* of the whole table (670 MB for
    Gemma 3's 262k x 640 table) at every decode step. With the table second
    (`"btd,vd->btv"`), Keras's TensorFlow backend still inserts that
    transpose (64 vs 56 ms per step on Gemma 3 270M). The functional model
    (training, `__call__`) uses the embedding layer's own reverse call, and so
    do quantized embeddings, whose scales that call knows.

    The soft-cap applies in training as well as inference (HF and DeepMind's
    Gemma 2 do this; keras-hub once skipped it in training).
    """
    embedding = backbone.token_embedding
    if decoding and embedding.quantization_mode is None:
        table = ops.cast(embedding.embeddings, hidden_states.dtype)
        logits = ops.einsum("vd,btd->btv", table, hidden_states)
    else:
        logits = embedding(hidden_states, reverse=True)
    logits = ops.cast(logits, "float32")
    return soft_cap(logits, backbone.final_logit_soft_cap)
