"""Ships the repository's `presets/*.json` inside the wheel as `keras_gemma/_presets/`.

Everything else is in pyproject.toml. Editable installs read `presets/` from the
source tree directly (see `keras_gemma/formats/registry.py`).
"""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPresets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "keras_gemma", "_presets")
        os.makedirs(target, exist_ok=True)
        for path in sorted(glob.glob(os.path.join(ROOT, "presets", "*.json"))):
            shutil.copy(path, target)


setup(cmdclass={"build_py": BuildPyWithPresets})
