"""A save never deletes what it did not write (issue 19, cases 1, 3 and 4).

1. `save_to_preset`, `export_to_transformers` and `export_lora_to_peft` into a
   folder holding other files refuse with a `FileExistsError` naming the
   folder, the files and `overwrite=True`, and leave every file as it was; a
   previous save is replaced; `overwrite=True` replaces the folder.
3. A save killed part-way leaves `.NAME.saving-PID-*`; the next save of that
   name removes it (only when that process is gone), and puts back a
   previous directory a kill left moved aside.
4. Saved folders and files get the umask's permissions, not mkstemp's 0600.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_gemma
from keras_gemma.formats import files
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.models import logits_of


def snapshot(directory):
    """`{relative path: bytes}` of every file under `directory`."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, directory)] = file.read()
    return found


def user_folder(path):
    """A folder with a user's own files in it."""
    os.makedirs(os.path.join(path, "src"))
    with open(os.path.join(path, "thesis.txt"), "w") as file:
        file.write("four years of work")
    with open(os.path.join(path, "src", "main.py"), "w") as file:
        file.write("print('hello')\n")
    return str(path)


@pytest.fixture
def lora_lm(tiny_lm):
    lm = GemmaCausalLM(tiny_lm.backbone.__class__.from_config(tiny_lm.backbone.get_config()))
    lm.backbone.set_weights(tiny_lm.backbone.get_weights())
    lm.backbone.enable_lora(rank=2)
    return lm


SAVES = {
    "save_to_preset": lambda lm, directory, **kw: lm.save_to_preset(directory, **kw),
    "export_to_transformers": lambda lm, directory, **kw: lm.export_to_transformers(
        directory, **kw
    ),
    "export_lora_to_peft": lambda lm, directory, **kw: lm.export_lora_to_peft(directory, **kw),
}


def model_for(save, tiny_lm, lora_lm):
    return lora_lm if save == "export_lora_to_peft" else tiny_lm


@pytest.mark.parametrize("save", sorted(SAVES))
def test_a_folder_holding_other_files_is_refused_and_kept(save, tiny_lm, lora_lm, tmp_path):
    folder = user_folder(tmp_path / "work")
    before = snapshot(folder)
    with pytest.raises(FileExistsError) as raised:
        SAVES[save](model_for(save, tiny_lm, lora_lm), folder)
    message = str(raised.value)
    assert repr(os.path.abspath(folder)) in message
    assert "thesis.txt" in message and os.path.join("src", "main.py") in message
    assert "overwrite=True" in message
    assert snapshot(folder) == before
    assert sorted(os.listdir(tmp_path)) == ["work"]  # Nothing staged is left.


@pytest.mark.parametrize("save", sorted(SAVES))
def test_a_previous_save_is_replaced_and_overwrite_replaces_any_folder(
    save, tiny_lm, lora_lm, tmp_path
):
    lm = model_for(save, tiny_lm, lora_lm)
    folder = str(tmp_path / "out")
    SAVES[save](lm, folder)
    first = snapshot(folder)
    SAVES[save](lm, folder)  # A previous save of the same kind: replaced without a word.
    assert set(snapshot(folder)) == set(first)
    user_folder(tmp_path / "mine")
    SAVES[save](lm, str(tmp_path / "mine"), overwrite=True)
    assert set(snapshot(tmp_path / "mine")) == set(first)


def test_saving_to_the_working_directory_keeps_its_files(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("notes.txt", "w") as file:
        file.write("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        tiny_lm.save_to_preset(".")
    with open("notes.txt") as file:
        assert file.read() == "keep me"


def test_an_empty_folder_is_written(tiny_lm, tmp_path):
    tiny_lm.save_to_preset(str(tmp_path))
    np.testing.assert_array_equal(
        logits_of(GemmaCausalLM.from_preset(str(tmp_path))), logits_of(tiny_lm)
    )


# === Case 3: what killed saves leave ===

KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import h5py
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM

    lm = GemmaCausalLM.from_preset(sys.argv[1])
    original = h5py.Group.create_dataset
    calls = []

    def create_dataset(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # Killed part-way through the weights.
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    h5py.Group.create_dataset = create_dataset
    lm.save_to_preset(sys.argv[2])
    """
)


def test_a_killed_save_leaves_staging_that_the_next_save_removes(saved_preset, tiny_lm, tmp_path):
    target = str(tmp_path / "preset")
    tiny_lm.save_to_preset(target)
    before = snapshot(target)
    result = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, saved_preset, target],
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(keras_gemma.__file__))),
        capture_output=True,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    left = [name for name in os.listdir(tmp_path) if name != "preset"]
    assert len(left) == 1 and left[0].startswith(".preset.saving-"), left
    assert snapshot(target) == before  # The previous preset was never touched.
    tiny_lm.save_to_preset(target)
    assert os.listdir(tmp_path) == ["preset"]


def finished_process_id():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_staging_of_finished_processes_is_removed(tiny_lm, tmp_path):
    dead, alive = finished_process_id(), subprocess.Popen(["sleep", "30"])
    try:
        os.makedirs(tmp_path / f".out.saving-{dead}-0badc0de" / "assets")
        os.makedirs(tmp_path / f".out.saving-{alive.pid}-0badc0de")
        (tmp_path / f".out.tmp-{dead}-0badc0de").write_bytes(b"half")
        (tmp_path / ".other.saving-1-0badc0de").mkdir()  # Another save's name.
        tiny_lm.save_to_preset(str(tmp_path / "out"))
        assert sorted(os.listdir(tmp_path)) == sorted(
            [".other.saving-1-0badc0de", f".out.saving-{alive.pid}-0badc0de", "out"]
        )
    finally:
        alive.kill()
        alive.wait()


def test_a_previous_preset_a_kill_left_moved_aside_is_put_back(tiny_lm, tmp_path):
    # Killed between moving the old preset aside and renaming the new one in.
    backup = str(tmp_path / f".out.old-{finished_process_id()}-0badc0de")
    tiny_lm.save_to_preset(backup)
    files.remove_stale_staging(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["out"]
    np.testing.assert_array_equal(
        logits_of(GemmaCausalLM.from_preset(str(tmp_path / "out"))), logits_of(tiny_lm)
    )


# === Case 4: permissions ===


def modes(directory):
    """`{relative path: permission bits}` of `directory` and everything in it."""
    found = {".": stat.S_IMODE(os.stat(directory).st_mode)}
    for root, folders, names in os.walk(directory):
        for name in folders + names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


@pytest.fixture(params=[0o022, 0o007])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("save", sorted(SAVES))
def test_saved_folders_and_files_honour_the_umask(save, umask, tiny_lm, lora_lm, tmp_path):
    folder = str(tmp_path / "out")
    SAVES[save](model_for(save, tiny_lm, lora_lm), folder)
    found = modes(folder)
    assert len(found) >= 3
    for name, mode in found.items():
        is_folder = os.path.isdir(os.path.join(folder, name))
        assert mode == (0o777 if is_folder else 0o666) & ~umask, (name, oct(mode))


@pytest.mark.parametrize("suffix", [".lora.h5", ".safetensors"])
def test_adapter_files_honour_the_umask(suffix, umask, lora_lm, tmp_path):
    path = str(tmp_path / f"adapter{suffix}")
    lora_lm.save_lora_weights(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == [f"adapter{suffix}"]
