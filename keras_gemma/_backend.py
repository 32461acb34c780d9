"""Picks an installed Keras backend when the user has not chosen a usable one.

Keras defaults to TensorFlow, which a JAX or PyTorch user need not install,
and on its first import Keras writes that default into `~/.keras/keras.json`
(`"backend": "tensorflow"`) whatever backend the process runs. So when
`KERAS_BACKEND` is unset and Keras is not imported yet:

- a backend named in `keras.json` is used if it is installed;
- with none named, TensorFlow (Keras' default) is used if it is installed;
- otherwise the first installed of JAX, PyTorch and TensorFlow is chosen,
  through `KERAS_BACKEND` for this process only (`keras.json` is not changed).

`KERAS_BACKEND` always wins. A `keras.json` naming a backend Keras does not
know is left for Keras to report.
"""

import importlib.util
import json
import os
import sys

# Where the package keeps converted checkpoints and compiled programs.
CACHE_ENV = "KERAS_GEMMA_CACHE"


def cache_root():
    """The package's cache directory: `$KERAS_GEMMA_CACHE`, else `~/.cache/keras_gemma`."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "keras_gemma")
    return os.environ.get(CACHE_ENV) or default


# Keras' backends; each is named after the module it imports.
KNOWN_BACKENDS = ("jax", "torch", "tensorflow", "numpy", "openvino")
PREFERENCE = ("jax", "torch", "tensorflow")


def _installed(backend):
    return importlib.util.find_spec(backend) is not None


def _configured_backend():
    """The backend `keras.json` names, or None."""
    config_dir = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(config_dir, "keras.json")) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend or None


def backend_to_set(configured, installed):
    """The backend to put in `KERAS_BACKEND`, or None to leave Keras' choice.

    Args:
        configured: the backend `keras.json` names, or None.
        installed: `backend name -> bool`.
    """
    if configured is not None and (configured not in KNOWN_BACKENDS or installed(configured)):
        return None
    if configured is None and installed("tensorflow"):
        return None
    return next((backend for backend in PREFERENCE if installed(backend)), None)


def choose_backend():
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    backend = backend_to_set(_configured_backend(), _installed)
    if backend is not None:
        os.environ["KERAS_BACKEND"] = backend
