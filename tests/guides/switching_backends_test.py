"""Runs guides/switching_backends.py top to bottom on a tiny model.

The guide reloads its preset on one other installed backend in a subprocess
and checks that greedy generation gives the same text.
"""

import os
import runpy

GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "guides", "switching_backends.py")


def test_switching_backends_guide_runs(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_GEMMA_GUIDE_TINY", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    runpy.run_path(GUIDE, run_name="__main__")
    output = capsys.readouterr().out
    assert "Keras backend:" in output
    assert "config.json" in output
