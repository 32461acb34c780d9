"""Runs guides/getting_started.py top to bottom on a tiny model."""

import os
import runpy

GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "guides", "getting_started.py")


def test_getting_started_guide_runs(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_GEMMA_GUIDE_TINY", "1")
    runpy.run_path(GUIDE, run_name="__main__")
    output = capsys.readouterr().out
    assert "adapter:" in output
    assert "largest logit difference after reloading: 0.0" in output
