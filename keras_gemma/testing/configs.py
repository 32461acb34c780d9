"""Tiny configurations of each Gemma family, for tests and users' own tests."""

TINY_VOCABULARY_SIZE = 320


def tiny_config(family="gemma3", vocabulary_size=TINY_VOCABULARY_SIZE, **overrides):
    """A `GemmaBackbone` config a few kilobytes big with the family's features.

    Args:
        family: "gemma" (1), "gemma2", "gemma3", or a Gemma 4 shape:
            "gemma4" (E2B-like: PLE, KV sharing, double-wide MLP),
            "gemma4_moe" (26B-A4B-like: mixture of experts, keys = values on
            full layers with fewer KV heads) or "gemma4_dense" (31B-like).
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
    elif family in GEMMA4_FAMILIES:
        config = dict(common, **_gemma4_config(family))
    else:
        raise ValueError(
            f"`family` must be one of {FAMILIES + GEMMA4_FAMILIES}. Received: {family!r}"
        )
    config.update(overrides)
    return config


FAMILIES = ("gemma", "gemma2", "gemma3")
GEMMA4_FAMILIES = ("gemma4", "gemma4_moe", "gemma4_dense")
SLIDING, FULL = "sliding_attention", "full_attention"


def _gemma4_config(family):
    config = dict(
        num_query_heads=4,
        num_key_value_heads=2,
        sliding_window_size=4,
        query_pre_attn_scalar=1.0,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=30.0,
        use_post_attention_norm=True,
        use_post_ffw_norm=True,
        use_query_key_norm=True,
        rope_wavelength=1_000_000.0,
        local_rope_wavelength=10000.0,
        rope_scaling_factor=1.0,
        global_head_dim=16,
        global_partial_rotary_factor=0.25,
        normalization_scale="scale",
        use_value_norm=True,
        use_layer_scalar=True,
    )
    if family == "gemma4":
        return dict(
            config,
            num_layers=6,
            num_key_value_heads=1,
            layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL],
            num_global_key_value_heads=1,
            per_layer_input_dim=8,
            num_kv_shared_layers=3,
            use_double_wide_mlp=True,
        )
    layer_types = (
        [SLIDING, SLIDING, SLIDING, FULL] if family == "gemma4_moe" else [SLIDING, FULL] * 2
    )
    config.update(
        num_layers=4,
        layer_types=layer_types,
        num_global_key_value_heads=1,
        global_keys_as_values=True,
    )
    if family == "gemma4_moe":
        config.update(num_experts=4, num_experts_per_token=2, expert_intermediate_dim=12)
    return config
