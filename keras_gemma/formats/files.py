"""File helpers every reader and writer in `formats/` shares.

One JSON reader (`read_json`, `parse_json`) with one error wording, and
atomic writes: `atomic_file_write` for one file, `atomic_directory_write`
for a whole directory. A write that fails (a full disk, an exception) leaves
the previous file or directory as it was and removes what it staged.
"""

import json
import os
import shutil
import tempfile
import uuid


def parse_json(text, source):
    """The value of JSON `text`; `ValueError` naming `source` if it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise ValueError(f"`{source}` is not valid JSON: {error}") from None


def read_json(path, missing_message=None):
    """The JSON value in `path`: `FileNotFoundError` (`missing_message`) or `ValueError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            missing_message
            or f"Missing `{os.path.basename(path)}` in preset {os.path.dirname(path)!r}."
        )
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"`{path}` is not valid JSON: {error}") from None
    return parse_json(text, path)


def write_json(path, data):
    """Writes `data` as indented JSON (not atomic: for files inside a staged directory)."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)


def write_json_atomically(path, data):
    """Writes `data` as indented JSON to `path`, atomically."""
    write_file_atomically(path, json.dumps(data, indent=2))


def atomic_file_write(path, write):
    """Runs `write(temporary_path)`, then renames the result over `path`.

    The temporary file sits beside `path` (same file system, so the rename is
    atomic) and is removed if `write` or the rename fails.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    staging = _new_file_beside(path)
    try:
        write(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def _new_file_beside(path):
    """Creates an empty, uniquely named file next to `path` (permissions from the umask)."""
    while True:
        staging = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        )
        try:
            os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return staging
        except FileExistsError:
            continue


def write_file_atomically(path, data):
    """Writes `data` (bytes, or str as UTF-8) to `path` atomically."""
    payload = data if isinstance(data, bytes) else data.encode("utf-8")

    def write(staging):
        with open(staging, "wb") as file:
            file.write(payload)

    atomic_file_write(path, write)


def atomic_directory_write(directory, write_contents):
    """Runs `write_contents(staging_dir)` then swaps `staging_dir` into `directory`.

    The new directory is written next to the target and renamed into place
    only once complete; an existing one is moved aside first and restored if
    the swap fails. A failure while writing leaves the previous directory
    untouched.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"Cannot save a preset to {directory!r}: it is a file.")
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.saving-", dir=parent)
    try:
        write_contents(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if os.path.exists(directory):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(backup)
        os.rename(directory, backup)
    try:
        os.rename(staging, directory)
    except BaseException:
        if backup is not None:
            os.rename(backup, directory)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
