"""Tiny configurations of each Gemma family, for tests and users' own tests."""

TINY_VOCABULARY_SIZE = 320


def tiny_config(family="gemma3", vocabulary_size=TINY_VOCABULARY_SIZE, **overrides):
    """A `GemmaBackbone` config a few kilobytes big with the family's features.

    Args:
        family: "gemma" (1), "gemma2" or "gemma3".
        vocabulary_size: int.
        **overrides: any config field.
    """
    common = {
        "vocabulary_size": vocabulary_size,
        "hidden_dim": 32,
        "intermediate_dim": 48,
        "head_dim": 8,
        "layer_norm_epsilon": 1e-6,
        "dropout": 0.0,
    }
    if family == "gemma":
        config = dict(
            common,
            num_layers=2,
            num_query_heads=4,
            num_key_value_heads=1,
            layer_types=["full_attention"] * 2,
            sliding_window_size=None,
            query_pre_attn_scalar=8,
            attention_logit_soft_cap=None,
            final_logit_soft_cap=None,
            use_post_attention_norm=False,
            use_post_ffw_norm=False,
            use_query_key_norm=False,
            rope_wavelength=10000.0,
            local_rope_wavelength=10000.0,
            rope_scaling_factor=1.0,
        )
    elif family == "gemma2":
        config = dict(
            common,
            num_layers=4,
            num_query_heads=4,
            num_key_value_heads=2,
            layer_types=["sliding_attention", "full_attention"] * 2,
            sliding_window_size=4,
            query_pre_attn_scalar=12,
            attention_logit_soft_cap=5.0,
            final_logit_soft_cap=3.0,
            use_post_attention_norm=True,
            use_post_ffw_norm=True,
            use_query_key_norm=False,
            rope_wavelength=10000.0,
            local_rope_wavelength=10000.0,
            rope_scaling_factor=1.0,
        )
    elif family == "gemma3":
        config = dict(
            common,
            num_layers=4,
            num_query_heads=4,
            num_key_value_heads=1,
            layer_types=[
                "sliding_attention",
                "full_attention",
                "sliding_attention",
                "sliding_attention",
            ],
            sliding_window_size=4,
            query_pre_attn_scalar=6,
            attention_logit_soft_cap=None,
            final_logit_soft_cap=None,
            use_post_attention_norm=True,
            use_post_ffw_norm=True,
            use_query_key_norm=True,
            rope_wavelength=1_000_000.0,
            local_rope_wavelength=10000.0,
            rope_scaling_factor=8.0,
        )
    else:
        raise ValueError(f"`family` must be 'gemma', 'gemma2' or 'gemma3'. Received: {family!r}")
    config.update(overrides)
    return config


FAMILIES = ("gemma", "gemma2", "gemma3")
