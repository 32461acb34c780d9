"""A full disk in the middle of a save never costs the previous files.

Each test writes a good file first, then makes the writer fail part-way
(`OSError(28, 'No space left on device')` from the HDF5 / safetensors writer
or from `open`), and checks that the previous files are byte-identical,
still load, and give bitwise-equal logits. No staging file is left behind.
"""

import builtins
import errno
import os

import h5py
import numpy as np
import pytest

from keras_gemma.models import lora
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import random_backbone

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


def snapshot(directory):
    """`{relative path: bytes}` of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def fail_after(count, original):
    """Wraps `original` so that call number `count + 1` raises a full-disk error."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > count:
            raise FULL_DISK
        return original(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


@pytest.fixture(scope="module")
def other_lm(tiny_lm):
    """Different weights, same preprocessor: what a failed save tries to write."""
    return GemmaCausalLM(random_backbone(seed=5), tiny_lm.preprocessor)


def assert_previous_preset_intact(directory, before, tiny_lm):
    assert snapshot(directory) == before
    leftovers = [name for name in os.listdir(os.path.dirname(directory)) if name.startswith(".")]
    assert leftovers == []
    reloaded = GemmaCausalLM.from_preset(directory)
    np.testing.assert_array_equal(logits_of(reloaded), logits_of(tiny_lm))
    assert reloaded.preprocessor.tokenizer.proto == tiny_lm.preprocessor.tokenizer.proto


def test_full_disk_midway_through_the_weights(preset_copy, other_lm, tiny_lm, monkeypatch):
    before = snapshot(preset_copy)
    writer = fail_after(20, h5py.Group.create_dataset)  # 54 variables: fails inside the file.
    monkeypatch.setattr(h5py.Group, "create_dataset", writer)
    with pytest.raises(OSError, match="No space left on device"):
        other_lm.save_to_preset(preset_copy)
    assert writer.calls["n"] == 21
    monkeypatch.undo()
    assert_previous_preset_intact(preset_copy, before, tiny_lm)


@pytest.mark.parametrize(
    "failing_file", ["vocabulary.spm", "preprocessor.json", "task.json", "metadata.json"]
)
def test_full_disk_while_writing_another_file(
    failing_file, preset_copy, other_lm, tiny_lm, monkeypatch
):
    before = snapshot(preset_copy)
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if (
            isinstance(file, (str, os.PathLike))
            and failing_file in os.path.basename(os.fspath(file))
            and "w" in mode
        ):
            handle = real_open(file, mode, *args, **kwargs)
            handle.write(b"{" if "b" in mode else "{")  # A few bytes, then the disk is full.
            handle.close()
            raise FULL_DISK
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    with pytest.raises(OSError, match="No space left on device"):
        other_lm.save_to_preset(preset_copy)
    monkeypatch.undo()
    assert_previous_preset_intact(preset_copy, before, tiny_lm)


def test_failure_at_the_final_swap_restores_the_previous_preset(
    preset_copy, other_lm, tiny_lm, monkeypatch
):
    before = snapshot(preset_copy)
    real_rename = os.rename

    def rename(source, target):
        if ".saving-" in os.fspath(source):
            raise FULL_DISK
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left on device"):
        other_lm.save_to_preset(preset_copy)
    monkeypatch.undo()
    assert_previous_preset_intact(preset_copy, before, tiny_lm)


def test_failed_first_save_leaves_nothing(tmp_path, other_lm, monkeypatch):
    monkeypatch.setattr(h5py.Group, "create_dataset", fail_after(3, h5py.Group.create_dataset))
    with pytest.raises(OSError, match="No space left on device"):
        other_lm.save_to_preset(str(tmp_path / "new_preset"))
    assert os.listdir(tmp_path) == []


def test_full_disk_during_transformers_export(tmp_path, tiny_lm, other_lm, monkeypatch):
    import safetensors.numpy

    directory = str(tmp_path / "hf")
    tiny_lm.export_to_transformers(directory)
    before = snapshot(directory)
    real_save = safetensors.numpy.save_file

    def half_written(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        raise FULL_DISK

    monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    with pytest.raises(OSError, match="No space left on device"):
        other_lm.export_to_transformers(directory)
    monkeypatch.undo()
    assert snapshot(directory) == before
    assert os.listdir(tmp_path) == ["hf"]
    np.testing.assert_allclose(
        logits_of(GemmaCausalLM.from_preset(directory)), logits_of(tiny_lm), atol=1e-5
    )


# === LoRA adapters ===


def lora_model(seed=3):
    lm = GemmaCausalLM(random_backbone(seed=seed))
    lm.enable_lora(2, target_names="attention")
    return lm


def randomize_adapters(backbone, seed):
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if "lora_kernel" in variable.path:
            variable.assign(rng.normal(0.0, 0.2, tuple(variable.shape)).astype("float32"))


@pytest.fixture(scope="module")
def saved_adapter_lm():
    lm = lora_model()
    randomize_adapters(lm.backbone, seed=10)
    return lm, logits_of(lm)


def half_written_safetensors(real_save):
    def save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        raise FULL_DISK

    return save


@pytest.mark.parametrize("suffix", [".lora.h5", ".safetensors"])
def test_full_disk_midway_through_save_lora_weights(
    suffix, saved_adapter_lm, tmp_path, monkeypatch
):
    import safetensors.numpy

    lm, expected_logits = saved_adapter_lm
    path = str(tmp_path / f"adapter{suffix}")
    lm.save_lora_weights(path)
    with open(path, "rb") as f:
        before = f.read()

    randomize_adapters(lm.backbone, seed=11)  # Newer adapters, whose save fails.
    try:
        if suffix == ".lora.h5":
            monkeypatch.setattr(
                h5py.Group, "create_dataset", fail_after(5, h5py.Group.create_dataset)
            )
        else:
            monkeypatch.setattr(
                safetensors.numpy,
                "save_file",
                half_written_safetensors(safetensors.numpy.save_file),
            )
        with pytest.raises(OSError, match="No space left on device"):
            lm.backbone.save_lora_weights(path)
        monkeypatch.undo()
    finally:
        randomize_adapters(lm.backbone, seed=10)

    with open(path, "rb") as f:
        assert f.read() == before
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    fresh = GemmaCausalLM(random_backbone(seed=3))
    fresh.load_lora_weights(path)  # Enables LoRA from the file's metadata.
    np.testing.assert_array_equal(logits_of(fresh), expected_logits)


def test_rejected_adapter_changes_nothing(saved_adapter_lm, tmp_path):
    lm, _ = saved_adapter_lm
    path = str(tmp_path / "adapter.lora.h5")
    lm.save_lora_weights(path)
    other = GemmaBackbone(**{**random_backbone(seed=3).get_config(), "head_dim": 4, "name": None})
    names_before = [variable.path for variable in other.weights]
    with pytest.raises(ValueError, match="shape"):
        other.load_lora_weights(path)
    assert lora.lora_state(other) is None
    assert [variable.path for variable in other.weights] == names_before
