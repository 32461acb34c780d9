"""The declared dependencies are enough to load and run a model.

The test environment holds many packages that users' environments do not
(TensorFlow, transformers, protobuf through them). A child process here may
import only the standard library and the distributions that
`keras-gemma[<this backend>]` requires, recursively; everything else fails to
import, as in a fresh virtual environment.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

import keras

from keras_gemma.testing.gguf_files import write_tiny_gguf

BACKEND_EXTRAS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


def _requirement_names(distribution, extras):
    names = []
    for requirement in importlib.metadata.distribution(distribution).requires or []:
        spec, _, marker = requirement.partition(";")
        wanted = re.findall(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        if "extra" in marker and not set(wanted) & set(extras):
            continue
        name = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[([^\]]*)\])?", spec)
        sub_extras = [e.strip() for e in (name.group(3) or "").split(",") if e.strip()]
        names.append((name.group(1), sub_extras))
    return names


def _declared_modules(extras):
    """Top-level module names of keras-gemma[extras]'s dependency closure."""
    seen, pending = set(), [("keras-gemma", list(extras))]
    while pending:
        name, sub_extras = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, tuple(sub_extras)) in seen:
            continue
        seen.add((key, tuple(sub_extras)))
        try:
            pending.extend(_requirement_names(name, sub_extras))
        except importlib.metadata.PackageNotFoundError:
            continue  # Not installed here (e.g. a platform-only dependency).
    distributions = {key for key, _ in seen}
    modules = set()
    for module, owners in importlib.metadata.packages_distributions().items():
        if any(re.sub(r"[-_.]+", "-", owner).lower() in distributions for owner in owners):
            modules.add(module)
    return modules


CHILD = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys

    allowed = set(json.loads(sys.argv[1])) | set(sys.stdlib_module_names)
    allowed |= {"keras_gemma", "__main__"}

    class Declared(importlib.abc.MetaPathFinder):
        # Wraps a finder: undeclared top-level modules are not found at all.

        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top not in allowed and not top.startswith("_"):
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find else None

        def invalidate_caches(self):
            if hasattr(self.inner, "invalidate_caches"):
                self.inner.invalidate_caches()

    sys.meta_path[:] = [Declared(finder) for finder in sys.meta_path]
    import keras_gemma

    lm = keras_gemma.GemmaCausalLM.from_preset(sys.argv[2])
    print("OUTPUT=" + json.dumps(lm.generate("ab", max_new_tokens=3, stop_token_ids=None)))
    import keras
    print("BACKEND=" + json.dumps(keras.config.backend()))
    """
)


def test_gguf_load_and_generate_need_only_declared_dependencies(tmp_path):
    """As on a fresh machine: only the declared dependencies, no `KERAS_BACKEND`, twice.

    The first run starts without `~/.keras/keras.json`; Keras writes one
    naming TensorFlow, its default. The second run must still pick this
    extra's backend (TensorFlow is not installed with the jax or torch extra).
    """
    backend = keras.config.backend()
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path, "gemma2", extra={"attention.sliding_window": 16})
    allowed = _declared_modules([BACKEND_EXTRAS[backend]])
    environment = dict(os.environ, HOME=str(tmp_path))
    for name in ("KERAS_BACKEND", "KERAS_HOME"):
        environment.pop(name, None)
    for run in range(2):
        result = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(sorted(allowed)), path],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"run {run + 1}: " + result.stderr[-3000:]
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        assert json.loads(values["OUTPUT"]).startswith("ab")
        assert json.loads(values["BACKEND"]) == backend, f"run {run + 1}"
        if run == 0:
            with open(tmp_path / ".keras" / "keras.json") as f:
                assert (
                    json.load(f)["backend"] == "tensorflow"
                )  # Keras' own default, written by Keras.


def test_install_lines_work_as_written():
    """keras-gemma is not on PyPI: every `pip install` line installs from a checkout
    (`pip install ".[extras]"`) or names a package that is on PyPI."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [os.path.join(root, "README.md")]
    for folder in ("guides", "keras_gemma"):
        for directory, _, names in os.walk(os.path.join(root, folder)):
            paths += [os.path.join(directory, n) for n in names if n.endswith((".py", ".md"))]
    offending = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if re.search(r"pip install\s+[\"']?keras-gemma", line):
                    offending.append(f"{os.path.relpath(path, root)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)
