"""Runs guides/lora_finetuning.py top to bottom on a tiny model."""

import os
import re
import runpy

GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "guides", "lora_finetuning.py")


def test_lora_finetuning_guide_runs(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_GEMMA_GUIDE_TINY", "1")
    runpy.run_path(GUIDE, run_name="__main__")
    output = capsys.readouterr().out
    assert "adapter:" in output
    assert "adapter_config.json" in output
    first, last = re.search(r"fine-tuning loss: ([\d.]+) -> ([\d.]+)", output).groups()
    assert float(last) < float(first)
