"""Picks an installed Keras backend when the user has not chosen one.

Keras defaults to TensorFlow, which a JAX or PyTorch user need not install.
When `KERAS_BACKEND` is unset, Keras is not imported yet, `~/.keras/keras.json`
does not name a backend and TensorFlow is missing, we choose the first of
JAX and PyTorch that is installed. An explicit choice always wins.
"""

import importlib.util
import json
import os
import sys


def choose_backend():
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    config_dir = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(config_dir, "keras.json")) as f:
            if json.load(f).get("backend"):
                return
    except (OSError, ValueError):
        pass
    if importlib.util.find_spec("tensorflow") is not None:
        return
    for backend, module in (("jax", "jax"), ("torch", "torch")):
        if importlib.util.find_spec(module) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return
