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
"""


def variable_shapes(config):
    """`{variable path: shape}` of the backbone that `config` describes, in model order."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    intermediate = config["intermediate_dim"]
    query_heads, key_value_heads = config["num_query_heads"], config["num_key_value_heads"]
    shapes = {"token_embedding/embeddings": (config["vocabulary_size"], hidden)}
    for index in range(config["num_layers"]):
        block = f"decoder_block_{index}/"
        attention = block + "attention/"
        shapes[block + "pre_attention_norm/scale"] = (hidden,)
        shapes[attention + "query/kernel"] = (query_heads, hidden, head_dim)
        shapes[attention + "key/kernel"] = (key_value_heads, hidden, head_dim)
        shapes[attention + "value/kernel"] = (key_value_heads, hidden, head_dim)
        if config["use_query_key_norm"]:
            shapes[attention + "query_norm/scale"] = (head_dim,)
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
    shapes["final_normalization/scale"] = (hidden,)
    return shapes
