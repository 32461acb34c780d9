"""Test-session settings and the fixtures shared by every test file.

`pytest -n 2` runs two worker processes on CI's two cores. Each backend would
otherwise start a thread pool as wide as the machine in every worker, and on
an oversubscribed CPU their spinning threads wait out each other's scheduler
slices: measured here, a PyTorch decode step of Gemma 3 270M took 2.3 s with
two busy processes and 2 threads each, 0.12 s with 1 thread. One intra-op
thread per worker keeps both cores busy without contention. Set before any
backend is imported (subprocesses inherit it).
"""

import os
import shutil
from typing import NamedTuple

import pytest

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(variable, "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_xla_flags = os.environ.get("XLA_FLAGS", "")
if "xla_cpu_multi_thread_eigen" not in _xla_flags:
    os.environ["XLA_FLAGS"] = (_xla_flags + " --xla_cpu_multi_thread_eigen=false").strip()

# === Shared fixtures ===
#
# Built once per session and shared read-only by every test file; a test that
# changes files on disk takes `preset_copy`. The builders live in
# `keras_gemma.testing`, imported inside the fixtures so that no backend is
# imported before the settings above.

SEQUENCE_LENGTH = 32
"""`tiny_lm`'s preprocessor sequence length."""


@pytest.fixture(scope="session")
def vocabulary_path(tmp_path_factory):
    """The tiny Gemma-like SentencePiece vocabulary (400 pieces), trained once."""
    from keras_gemma.testing.vocab import build_tiny_vocabulary

    return build_tiny_vocabulary(tmp_path_factory.mktemp("vocabulary"))


@pytest.fixture(scope="session")
def tokenizer(vocabulary_path):
    from keras_gemma.models.gemma_tokenizer import GemmaTokenizer

    return GemmaTokenizer(proto=vocabulary_path)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """A Gemma 3-shaped tiny causal LM (sliding layers, q/k norms) with a preprocessor.

    Weights from `random_backbone(seed=0)`: the same on every backend.
    """
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
    from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
    from keras_gemma.testing.models import random_backbone

    preprocessor = GemmaCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
    return GemmaCausalLM(random_backbone(seed=0), preprocessor)


@pytest.fixture(scope="session")
def saved_preset(tiny_lm, tmp_path_factory):
    """`tiny_lm` saved as a Keras preset directory (read-only: see `preset_copy`)."""
    directory = str(tmp_path_factory.mktemp("preset") / "tiny")
    tiny_lm.save_to_preset(directory)
    return directory


@pytest.fixture
def preset_copy(saved_preset, tmp_path):
    """A writable copy of `saved_preset`, for tests that change or damage files."""
    directory = str(tmp_path / "copy")
    shutil.copytree(saved_preset, directory)
    return directory


class TransformersCheckpoint(NamedTuple):
    model: object  # The transformers model (float32, eager attention).
    directory: str  # Its `save_pretrained` directory.
    config: dict  # The saved `config.json`.


@pytest.fixture(scope="session")
def transformers_checkpoint(tmp_path_factory):
    """`get(family, seed=0, embedding_scale=1.0, vocabulary_size=None)`: a tiny random
    transformers checkpoint of `tiny_config(family)`, saved once per arguments (read-only).

    Skips the test where torch or transformers is not installed.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from keras_gemma.testing.configs import tiny_config
    from keras_gemma.testing.transformers_checkpoints import make_transformers_model
    from keras_gemma.testing.transformers_checkpoints import save_transformers_checkpoint

    built = {}

    def get(family, seed=0, embedding_scale=1.0, vocabulary_size=None):
        key = (family, seed, embedding_scale, vocabulary_size)
        if key not in built:
            sizes = {} if vocabulary_size is None else {"vocabulary_size": vocabulary_size}
            config = tiny_config(family, **sizes)
            model = make_transformers_model(config, seed=seed, embedding_scale=embedding_scale)
            directory = str(tmp_path_factory.mktemp(f"transformers_{family}"))
            built[key] = TransformersCheckpoint(
                model, directory, save_transformers_checkpoint(model, directory)
            )
        return built[key]

    return get
