"""The shared file helpers: atomic writes leave nothing behind, one JSON reader."""

import os

import pytest

from keras_gemma.formats import files
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer


def test_failed_file_write_keeps_the_old_file_and_leaves_no_staging_file(tmp_path):
    path = tmp_path / "data.json"
    files.write_json_atomically(path, {"version": 1})

    def write_half_then_fail(staging):
        with open(staging, "w") as file:
            file.write("{")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_file_write(path, write_half_then_fail)
    assert files.read_json(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["data.json"]


def test_atomic_file_write_honours_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        files.write_file_atomically(tmp_path / "file.bin", b"bytes")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "file.bin").st_mode & 0o777 == 0o640
    assert (tmp_path / "file.bin").read_bytes() == b"bytes"


def test_failed_tokenizer_save_leaves_no_temporary_file(tokenizer, tmp_path, monkeypatch):
    target = tmp_path / "preset"
    tokenizer.save_to_preset(target)
    before = sorted(os.listdir(target))

    def fail(source, target):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "replace", fail)  # The last step of each file's write.
    with pytest.raises(OSError, match="No space left"):
        tokenizer.save_to_preset(target)
    monkeypatch.undo()
    assert sorted(os.listdir(target)) == before
    assert os.listdir(target / "assets" / "tokenizer") == ["vocabulary.spm"]
    assert GemmaTokenizer.from_preset(str(target)).proto == tokenizer.proto


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Missing `absent.json` in preset"):
        files.read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json` is not valid JSON"):
        files.read_json(tmp_path / "bad.json")


def test_failed_directory_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "preset"
    files.atomic_directory_write(
        target,
        lambda staging: files.write_json(os.path.join(staging, "a.json"), {"old": True}),
        ["a.json"],
    )

    def fail(staging):
        files.write_json(os.path.join(staging, "a.json"), {"old": False})
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_directory_write(target, fail, ["a.json"])
    assert files.read_json(target / "a.json") == {"old": True}
    assert os.listdir(tmp_path) == ["preset"]
