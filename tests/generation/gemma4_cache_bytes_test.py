"""Cache bytes of Gemma 4: KV-sharing layers keep no cache; full layers use their own head dim."""

import keras

from keras_gemma.formats.registry import preset_config
from keras_gemma.generation import kv_cache
from keras_gemma.generation.kv_cache import cache_bytes_for_config
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.testing.configs import tiny_config

MIB = 2**20


def test_e2b_at_32k_tokens_by_hand():
    config = preset_config("gemma4_2b")
    # Layers 0-14 keep caches (3 full: 4, 9, 14); 15-34 share those of 13 and 14.
    sliding = 12 * 2 * 512 * 1 * 256 * 2  # ring of 512 slots, 1 KV head, head dim 256, bf16
    full = 3 * 2 * 32768 * 1 * 512 * 2  # 32k slots, 1 KV head, head dim 512
    assert cache_bytes_for_config(config, 32768) == sliding + full == 198 * MIB
    unshared = dict(config, num_kv_shared_layers=0, use_double_wide_mlp=False)
    assert cache_bytes_for_config(unshared, 32768) == 462 * MIB


def test_equals_the_bytes_the_engine_allocates():
    config = tiny_config("gemma4")
    backbone = GemmaBackbone(**config)
    caches = kv_cache.empty_caches(backbone, 2, 10, "float32")
    assert len(caches) == 3  # layers 0-2 produce; 3-5 share
    allocated = sum(  # The trash entry (the last) is not a slot.
        keras.ops.convert_to_numpy(tensor)[:, :-1].nbytes for cache in caches for tensor in cache
    )
    assert allocated == cache_bytes_for_config(config, 10, batch_size=2, bytes_per_value=4)
