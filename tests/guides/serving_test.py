"""Runs guides/serving.py top to bottom on a tiny model: `keras-gemma serve` in a subprocess."""

import os
import runpy

import pytest

GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "guides", "serving.py")


def test_serving_guide_runs(monkeypatch, capsys):
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("KERAS_GEMMA_GUIDE_TINY", "1")
    runpy.run_path(GUIDE, run_name="__main__")
    output = capsys.readouterr().out
    assert "Serving " in output and "/v1" in output
    assert "chat: " in output and "completion_tokens=" in output
    assert "streamed: " in output
    assert "error: context_length_exceeded - The prompt (" in output
