"""The language-model head shared by `GemmaCausalLM` and the decoding loop."""

from keras import ops

from keras_gemma.layers.attention import soft_cap


def logits_from_hidden_states(backbone, hidden_states):
    """Tied-embedding projection then the final soft-cap, in float32.

    The soft-cap applies in training as well as inference (HF and DeepMind's
    Gemma 2 do this; keras-hub once skipped it in training).
    """
    logits = backbone.token_embedding(hidden_states, reverse=True)
    logits = ops.cast(logits, "float32")
    return soft_cap(logits, backbone.final_logit_soft_cap)
