"""The tied-embedding language-model head, shared by `GemmaCausalLM` and generation."""

from keras import ops

from keras_gemma.layers.attention import soft_cap
from keras_gemma.layers.layer_calls import REVERSE_KERNELS


def logits_from_hidden_states(backbone, hidden_states, decoding=False):
    """Tied-embedding projection then the final soft-cap, in float32.

    `backbone` is any object with `token_embedding` (a `ReversibleEmbedding`)
    and `final_logit_soft_cap`, e.g. a `GemmaBackbone`.

    With `decoding=True` (the compiled generation loop) the projection is
    `table @ x.T`, the table first and read in its stored layout, then the
    small `[v, b*t]` result is transposed. Measured on Gemma 3's 262k x 640
    table (2-core CPU), the other spellings each hit a slow path somewhere:
    `x @ E.T` makes XLA copy the transposed table (670 MB) at every step;
    `einsum("btd,vd->btv")` does the same on Keras's TensorFlow backend (64 vs
    56 ms per step); `einsum("vd,btd->btv")` is right for XLA but PyTorch
    runs it in bfloat16 through a strided batched-matmul path at 580 ms per
    call instead of 39 ms (17 s for 32 tokens), and 85 instead of 64 ms in
    float32 at batch 8. The functional model (training, `__call__`) uses the
    embedding layer's own reverse call, and so do quantized embeddings,
    whose scales that call knows, unless generation registered a decode
    kernel for them (`layer_calls.REVERSE_KERNELS`).

    The soft-cap applies in training as well as inference (HF and DeepMind's
    Gemma 2 do this; keras-hub once skipped it in training).
    """
    embedding = backbone.token_embedding
    if decoding and embedding.quantization_mode is None:
        table = ops.cast(embedding.embeddings, hidden_states.dtype)
        batch, length, hidden = ops.shape(hidden_states)
        rows = ops.reshape(hidden_states, (batch * length, hidden))
        logits = ops.matmul(table, ops.transpose(rows))  # (v, b*t)
        logits = ops.reshape(ops.transpose(logits), (batch, length, -1))  # (b, t, v)
    else:
        kernel = REVERSE_KERNELS.get(embedding) if decoding else None
        logits = None if kernel is None else kernel(hidden_states)
        if logits is None:
            logits = embedding(hidden_states, reverse=True)
    logits = ops.cast(logits, "float32")
    return soft_cap(logits, backbone.final_logit_soft_cap)
