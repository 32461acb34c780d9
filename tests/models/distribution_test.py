"""Model parallelism: `GemmaBackbone.get_layout_map` with `keras.distribution`.

The layout rules are checked on every backend; the distributed run needs JAX
with 8 simulated CPU devices, fixed when JAX is imported, so it runs in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.layout_map import kernel_axes
from keras_gemma.testing.configs import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUERY = r"decoder_block_\d+/attention/query/kernel"
KEY_VALUE = r"decoder_block_\d+/attention/(key|value)/kernel"


def test_kernel_axes_split_heads_and_widths():
    config = tiny_config("gemma2", num_key_value_heads=4)  # 4 kv heads, 4 model devices
    axes = kernel_axes(config, model_size=4, data_size=2)
    assert axes["token_embedding/embeddings"] == ("model", "batch")
    assert axes[QUERY] == ("model", "batch", None)
    assert axes[KEY_VALUE] == ("model", "batch", None)
    assert axes[r"decoder_block_\d+/attention/attention_output/kernel"] == ("model", None, "batch")
    assert axes[r"decoder_block_\d+/feed_forward/ffw_gating(_2)?/kernel"] == ("batch", "model")
    assert axes[r"decoder_block_\d+/feed_forward/ffw_linear/kernel"] == ("model", "batch")


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_multi_query_key_value_split_hidden_axis_not_heads(family):
    # One key/value head: the head axis (size 1) is never split.
    axes = kernel_axes(tiny_config(family), model_size=4, data_size=2)
    assert axes[KEY_VALUE] == (None, "model", "batch")


def test_sizes_the_mesh_does_not_divide_stay_whole():
    config = tiny_config("gemma", vocabulary_size=321, intermediate_dim=50)
    axes = kernel_axes(config, model_size=4, data_size=2)
    assert axes["token_embedding/embeddings"] == (None, "batch")
    assert axes[r"decoder_block_\d+/feed_forward/ffw_linear/kernel"] == (None, "batch")


def test_layout_map_on_class_without_config_is_keras_hubs_and_axes_are_checked():
    devices = [f"cpu:{i}" for i in range(8)]  # Only the mesh's shape matters here.
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    # Sizes unknown: keras-hub's layout, key/value split on their head axis.
    size_free = GemmaBackbone.get_layout_map(mesh)
    assert tuple(size_free["decoder_block_3/attention/key/kernel"].axes) == ("model", "batch", None)
    with pytest.raises(ValueError, match="not an axis"):
        GemmaBackbone.get_layout_map(mesh, model_parallel_dim_name="tensor")
    with pytest.raises(ValueError, match="not an axis"):
        GemmaBackbone.get_layout_map(mesh, model_parallel_dim_name="tensor", config=tiny_config())
    layout_map = GemmaBackbone.get_layout_map(mesh, config=tiny_config("gemma3"))
    layout = layout_map["decoder_block_3/attention/key/kernel"]
    assert tuple(layout.axes) == (None, "model", "batch")
    assert layout_map["decoder_block_0/pre_attention_norm/scale"] is None


# Runs under 8 simulated devices; prints one JSON line per family.
DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    from keras_gemma.models.gemma_backbone import GemmaBackbone
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
    from keras_gemma.testing.configs import tiny_config

    assert len(keras.distribution.list_devices()) == 8
    inputs = {
        "token_ids": np.array([[2, 5, 6, 7, 8, 9], [0, 0, 2, 7, 8, 9]], "int32"),
        "padding_mask": np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], "int32"),
    }
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ["batch", "model"], keras.distribution.list_devices()
    )
    for family in ("gemma", "gemma2", "gemma3"):
        config = tiny_config(family)
        keras.utils.set_random_seed(0)
        single = GemmaCausalLM(GemmaBackbone(**config))
        logits = np.asarray(single(inputs))
        generated = single.generate(inputs, max_new_tokens=5, stop_token_ids=None)

        distribution = keras.distribution.ModelParallel(
            layout_map=GemmaBackbone.get_layout_map(mesh, config=config),
            batch_dim_name="batch",
        )
        with distribution.scope():
            parallel = GemmaCausalLM(GemmaBackbone(**config))
            parallel.set_weights(single.get_weights())
            parallel_logits = np.asarray(parallel(inputs))
            parallel_generated = parallel.generate(
                inputs, max_new_tokens=5, stop_token_ids=None
            )
            if family == "gemma3":
                parallel.compile(optimizer=keras.optimizers.SGD(0.1))
                history = parallel.fit(
                    inputs, inputs["token_ids"], sample_weight=inputs["padding_mask"],
                    batch_size=2, epochs=1, verbose=0,
                )
                assert np.isfinite(history.history["loss"][0])

        variables = {v.path: v for v in parallel.backbone.weights}
        shards = {}
        for path in (
            "token_embedding/embeddings",
            "decoder_block_0/attention/query/kernel",
            "decoder_block_0/attention/key/kernel",
            "decoder_block_0/attention/attention_output/kernel",
            "decoder_block_0/feed_forward/ffw_linear/kernel",
            "decoder_block_0/pre_attention_norm/scale",
        ):
            value = variables[path].value
            shards[path] = {
                "spec": [a if a is None else str(a) for a in value.sharding.spec],
                "devices": len(value.sharding.device_set),
                "global": list(value.shape),
                "local": list(value.addressable_shards[0].data.shape),
            }
        print("RESULT " + json.dumps({
            "family": family,
            "max_logit_difference": float(np.abs(parallel_logits - logits).max()),
            "same_tokens": bool(
                (parallel_generated["token_ids"] == generated["token_ids"]).all()
            ),
            "shards": shards,
        }))
    """
)


def run_on_simulated_devices(script, timeout=600):
    """Runs `script` with JAX on 8 simulated CPU devices; returns its stdout."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


@pytest.mark.skipif(
    keras.config.backend() != "jax", reason="keras.distribution model parallelism is JAX-only"
)
def test_two_by_four_mesh_splits_weights_and_matches_single_device():
    output = run_on_simulated_devices(DISTRIBUTED_SCRIPT)
    results = [
        json.loads(line[len("RESULT ") :])
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]
    assert [r["family"] for r in results] == ["gemma", "gemma2", "gemma3"]
    for result in results:
        assert result["max_logit_difference"] < 1e-4, result
        assert result["same_tokens"], result
        shards = result["shards"]
        embedding = shards["token_embedding/embeddings"]
        assert embedding["devices"] == 8
        # (V, d) split 4 ways on V and 2 ways on d: each device holds 1/8.
        assert embedding["local"] == [embedding["global"][0] // 4, embedding["global"][1] // 2]
        query = shards["decoder_block_0/attention/query/kernel"]
        assert query["spec"] == ["model", "batch", None]
        assert query["local"][0] == query["global"][0] // 4
        key = shards["decoder_block_0/attention/key/kernel"]
        if result["family"] in ("gemma", "gemma3"):  # one key/value head (MQA)
            assert key["spec"] == [None, "model", "batch"]
            assert key["local"] == [1, key["global"][1] // 4, key["global"][2] // 2]
        ffw = shards["decoder_block_0/feed_forward/ffw_linear/kernel"]
        assert ffw["local"] == [ffw["global"][0] // 4, ffw["global"][1] // 2]
        norm = shards["decoder_block_0/pre_attention_norm/scale"]
        assert norm["local"] == norm["global"]  # replicated
