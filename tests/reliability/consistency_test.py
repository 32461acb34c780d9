"""Same weights, same logits on JAX, PyTorch and TensorFlow; presets cross backends; seeds repeat.

The two other backends run once per session, concurrently, in subprocesses
(`backend_worker.py`): each loads the preset saved here and saves one of its
own, and the comparisons happen in this process.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_gemma import samplers
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import random_backbone

BACKENDS = ("jax", "torch", "tensorflow")
WORKER = os.path.join(os.path.dirname(__file__), "backend_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAVED_SEED = 7  # backend_worker.SAVED_SEED
ATOL = RTOL = 1e-4  # float32 logits of order 1, different kernels per backend.


def _installed(backend):
    module = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}[backend]
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def other_backends(saved_preset, tmp_path_factory):
    """`{backend: result}` from one subprocess per other installed backend, run concurrently."""
    out = str(tmp_path_factory.mktemp("other_backends"))
    others = [b for b in BACKENDS if b != keras.config.backend() and _installed(b)]
    if len(others) < 2:
        pytest.fail(f"Cross-backend tests need the other two backends installed; found {others}.")
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    processes = {
        backend: subprocess.Popen(
            [sys.executable, WORKER, saved_preset, out],
            env=dict(env, KERAS_BACKEND=backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for backend in others
    }
    results = {}
    for backend, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{backend} worker failed:\n{output[-3000:]}"
        with open(os.path.join(out, backend, "result.json")) as f:
            results[backend] = json.load(f)
        results[backend]["preset"] = os.path.join(out, backend, "preset")
    return results


def test_same_weights_same_logits_on_every_backend(other_backends, tiny_lm):
    here = logits_of(tiny_lm)
    for backend, result in other_backends.items():
        assert result["backend"] == backend
        np.testing.assert_allclose(
            np.asarray(result["loaded_logits"]),
            here,
            atol=ATOL,
            rtol=RTOL,
            err_msg=f"{backend} vs {keras.config.backend()}",
        )


def test_preset_saved_under_another_backend_loads_here(other_backends):
    expected_weights = [
        keras.ops.convert_to_numpy(v) for v in random_backbone(seed=SAVED_SEED).weights
    ]
    for backend, result in other_backends.items():
        loaded = GemmaCausalLM.from_preset(result["preset"])
        for variable, expected in zip(loaded.backbone.weights, expected_weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), expected)
        np.testing.assert_allclose(
            logits_of(loaded),
            np.asarray(result["saved_logits"]),
            atol=ATOL,
            rtol=RTOL,
            err_msg=f"preset saved with {backend}, loaded with {keras.config.backend()}",
        )


def test_seeded_sampling_repeats_exactly(tiny_lm, saved_preset):
    sampler = samplers.TopPSampler(p=0.95, k=20, temperature=2.0)  # top-k, then top-p.
    prompts = ["The quick brown", "Gemma is"]
    kwargs = dict(max_new_tokens=12, stop_token_ids=None, sampler=sampler, strip_prompt=True)
    first = tiny_lm.generate(prompts, seed=1234, **kwargs)
    assert tiny_lm.generate(prompts, seed=1234, **kwargs) == first
    assert tiny_lm.generate(prompts, seed=99, **kwargs) != first
    reloaded = GemmaCausalLM.from_preset(saved_preset)  # Fresh weights, fresh compiled functions.
    assert reloaded.generate(prompts, seed=1234, **kwargs) == first
