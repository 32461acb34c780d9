"""The package version (one place; `keras_gemma.__version__` re-exports it)."""

__version__ = "0.1.0"
