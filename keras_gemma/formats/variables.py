"""The canonical weights of a `GemmaBackbone` config: variable paths and shapes.

Every checkpoint reader converts its tensors to these names and layouts, so
the model side assigns them by path (`variable.path` in Keras 3, the same on
every backend) and checks that every variable is covered:

    token_embedding/embeddings                      (vocabulary_size, d)
    decoder_block_{i}/pre_attention_norm/scale      (d,)
    decoder_block_{i}/attention/query/kernel        (n, d, h)
    decoder_block_{i}/attention/key/kernel          (k, d, h)   value the same
    decoder_block_{i}/attention/attention_output/kernel   (n, h, d)
    decoder_block_{i}/attention/{query,key}_norm/scale    (h,)   Gemma 3
    decoder_block_{i}/{post_attention,pre_ffw,post_ffw}_norm/scale   (d,)
    decoder_block_{i}/feed_forward/ffw_gating/kernel      (d, f)  ffw_gating_2 the same
    decoder_block_{i}/feed_forward/ffw_linear/kernel      (f, d)
    final_normalization/scale                       (d,)

Gemma 4 (`layers/architecture.py`): per layer head dim / KV heads / width
(`block_arguments`); no key (value) kernels on KV-sharing layers (keys-as-
values layers); and `per_layer_embedding/...`, `decoder_block_{i}/layer_scalar`
(), `.../per_layer_input_gate|per_layer_projection/kernel`,
`.../mixture_of_experts/{router/kernel (d, e), router_scale, per_expert_scale,
expert_gating(_2)/kernel (e, d, f), expert_linear/kernel (e, f, d)}` and
`.../{pre_expert,post_dense_ffw,post_expert}_norm/scale`.
"""

from keras_gemma.layers.architecture import GEMMA4_DEFAULTS
from keras_gemma.layers.architecture import block_arguments


def variable_shapes(config):
    """`{variable path: shape}` of the backbone that `config` describes, in model order."""
    config = dict(GEMMA4_DEFAULTS, **config)
    hidden, query_heads = config["hidden_dim"], config["num_query_heads"]
    num_layers, per_layer = config["num_layers"], config["per_layer_input_dim"]
    shapes = {"token_embedding/embeddings": (config["vocabulary_size"], hidden)}
    if per_layer:
        shapes["per_layer_embedding/per_layer_token_embedding/embeddings"] = (
            config["vocabulary_size"],
            num_layers * per_layer,
        )
        shapes["per_layer_embedding/per_layer_model_projection/kernel"] = (
            hidden,
            num_layers * per_layer,
        )
        shapes["per_layer_embedding/per_layer_projection_norm/scale"] = (per_layer,)
    for index in range(num_layers):
        layer = block_arguments(config, index)
        head_dim, key_value_heads = layer["head_dim"], layer["num_key_value_heads"]
        intermediate = layer["intermediate_dim"]
        block = f"decoder_block_{index}/"
        attention = block + "attention/"
        has_key = not layer["reads_shared_key_value"]
        shapes[block + "pre_attention_norm/scale"] = (hidden,)
        shapes[attention + "query/kernel"] = (query_heads, hidden, head_dim)
        if has_key:
            shapes[attention + "key/kernel"] = (key_value_heads, hidden, head_dim)
        if has_key and not layer["keys_as_values"]:
            shapes[attention + "value/kernel"] = (key_value_heads, hidden, head_dim)
        if config["use_query_key_norm"]:
            shapes[attention + "query_norm/scale"] = (head_dim,)
            if has_key:
                shapes[attention + "key_norm/scale"] = (head_dim,)
        shapes[attention + "attention_output/kernel"] = (query_heads, head_dim, hidden)
        if config["use_post_attention_norm"]:
            shapes[block + "post_attention_norm/scale"] = (hidden,)
        shapes[block + "pre_ffw_norm/scale"] = (hidden,)
        shapes[block + "feed_forward/ffw_gating/kernel"] = (hidden, intermediate)
        shapes[block + "feed_forward/ffw_gating_2/kernel"] = (hidden, intermediate)
        shapes[block + "feed_forward/ffw_linear/kernel"] = (intermediate, hidden)
        if config["use_post_ffw_norm"]:
            shapes[block + "post_ffw_norm/scale"] = (hidden,)
        experts, expert_width = config["num_experts"], config["expert_intermediate_dim"]
        if experts:
            moe = block + "mixture_of_experts/"
            shapes[moe + "router_scale"] = (hidden,)
            shapes[moe + "per_expert_scale"] = (experts,)
            shapes[moe + "router/kernel"] = (hidden, experts)
            shapes[moe + "expert_gating/kernel"] = (experts, hidden, expert_width)
            shapes[moe + "expert_gating_2/kernel"] = (experts, hidden, expert_width)
            shapes[moe + "expert_linear/kernel"] = (experts, expert_width, hidden)
            for name in ("pre_expert_norm", "post_dense_ffw_norm", "post_expert_norm"):
                shapes[block + name + "/scale"] = (hidden,)
        if per_layer:
            shapes[block + "per_layer_input_gate/kernel"] = (hidden, per_layer)
            shapes[block + "per_layer_projection/kernel"] = (per_layer, hidden)
            shapes[block + "post_per_layer_input_norm/scale"] = (hidden,)
        if config["use_layer_scalar"]:
            shapes[block + "layer_scalar"] = ()
    shapes["final_normalization/scale"] = (hidden,)
    return shapes
