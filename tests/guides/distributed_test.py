"""Runs guides/distributed.py on JAX with 8 simulated CPU devices.

The device count is fixed when JAX is imported, hence the subprocess.
"""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "guides", "distributed.py")


@pytest.mark.skipif(keras.config.backend() != "jax", reason="model parallelism runs on JAX")
def test_distributed_guide_runs_on_eight_simulated_devices():
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    completed = subprocess.run(
        [sys.executable, GUIDE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    output = completed.stdout
    assert "devices: 8" in output
    assert "same greedy tokens: True" in output
    assert "query kernel (4, 64, 8) -> P('model', 'batch', None)" in output
    assert "one device holds (1, 32, 8)" in output
    assert "int8 weights:" in output
