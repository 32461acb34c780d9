"""File helpers every reader and writer in `formats/` shares.

One JSON reader (`read_json`, `parse_json`) with one error wording, and
atomic writes: `atomic_file_write` for one file, `atomic_directory_write`
for a whole directory. A write that fails (a full disk, an exception) leaves
the previous file or directory as it was and removes what it staged.

A directory save never deletes what it did not write: an existing directory
holding other files is refused unless the caller passes `overwrite=True`.
Staging names carry the writer's process id, so a later save removes what a
killed process left (`keras_gemma._filesystem`); written files and folders
get the umask's permissions.
"""

import json
import os
import shutil

from keras_gemma._filesystem import BACKUP_MARK
from keras_gemma._filesystem import FILE_MARK
from keras_gemma._filesystem import STAGING_MARK
from keras_gemma._filesystem import apply_umask
from keras_gemma._filesystem import foreign_entries
from keras_gemma._filesystem import remove_stale_staging
from keras_gemma._filesystem import staging_name


def parse_json(text, source):
    """The value of JSON `text`; `ValueError` naming `source` if it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise ValueError(f"`{source}` is not valid JSON: {error}") from None


def read_json(path, missing_message=None):
    """The JSON object (a dict) in `path`.

    Raises `FileNotFoundError` (`missing_message`) when the file is absent,
    and `ValueError` naming the file when it is not JSON, or is JSON but not
    an object (a list, a number).
    """
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
    value = parse_json(text, path)
    if not isinstance(value, dict):
        raise ValueError(
            f"`{path}` holds a JSON {type(value).__name__}, but a JSON object "
            '(`{"key": value, ...}`) is expected. The file is damaged or is not this file.'
        )
    return value


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
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write the file {path!r}: it is a folder.")
    remove_stale_staging(path)
    staging = staging_name(path, FILE_MARK)
    try:
        write(staging)
        apply_umask(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def write_file_atomically(path, data):
    """Writes `data` (bytes, or str as UTF-8) to `path` atomically."""
    payload = data if isinstance(data, bytes) else data.encode("utf-8")

    def write(staging):
        with open(staging, "wb") as file:
            file.write(payload)

    atomic_file_write(path, write)


def atomic_directory_write(directory, write_contents, owned_files, overwrite=False):
    """Runs `write_contents(staging_dir)` then swaps `staging_dir` into `directory`.

    The new directory is written next to the target and renamed into place
    only once complete; an existing one is moved aside first and restored if
    the swap fails. A failure while writing leaves the previous directory
    untouched.

    Args:
        directory: the folder to write.
        write_contents: `write_contents(staging_dir)` writes the files.
        owned_files: relative paths of every file a save of this kind writes.
            An existing `directory` holding only these (a previous save) is
            replaced; one holding anything else is refused with a
            `FileExistsError` naming the files, unless `overwrite`.
        overwrite: bool. Replace `directory` and everything in it.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"Cannot save to {directory!r}: it is a file.")
    remove_stale_staging(directory)
    if os.path.isdir(directory) and not overwrite:
        foreign = foreign_entries(directory, owned_files)
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if foreign[5:] else ""
            )
            raise FileExistsError(
                f"Cannot save to {directory!r}: the folder holds files this save did not write "
                f"({shown}), which replacing it would delete. Save to a new or empty folder, or "
                "pass `overwrite=True` to replace the folder and everything in it."
            )
    staging = staging_name(directory, STAGING_MARK)
    os.mkdir(staging)
    try:
        write_contents(staging)
        apply_umask(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if os.path.exists(directory):
        backup = staging_name(directory, BACKUP_MARK)
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
