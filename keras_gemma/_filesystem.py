"""File-system safety shared by every save: umask permissions, staging names, stale cleanup.

Staging entries beside a target `NAME` are named `.NAME.MARK-PID-XXXXXXXX`
(MARK `saving` for a staged folder, `old` for a previous folder moved aside
during the swap, `tmp` for a staged file). The process id lets a later save
remove what a killed process left, and never what a running one is writing.
Written files and folders get the umask's permissions (0666 / 0777 less the
umask), as files made with `open` do; `tempfile.mkdtemp` would give 0700.
"""

import contextlib
import os
import shutil
import uuid

STAGING_MARK = "saving"
BACKUP_MARK = "old"
FILE_MARK = "tmp"


def current_umask():
    """The process umask, read without changing it where `/proc` allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # Elsewhere the only way to read it is to set it.
    os.umask(mask)
    return mask


def apply_umask(path):
    """Gives `path` (a file, or a folder and everything in it) the umask's permissions."""
    mask = current_umask()
    if os.path.isfile(path):
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, folders, names in os.walk(path):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def staging_name(path, mark):
    """`.NAME.MARK-PID-XXXXXXXX`: a unique name beside `path` naming this process."""
    return os.path.join(
        os.path.dirname(path),
        f".{os.path.basename(path)}.{mark}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
    )


def _process_is_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # Exists, owned by someone else.
    return False


def _stale_entries(path, mark):
    """Staging entries for `path` left by processes that no longer run."""
    parent, prefix = os.path.dirname(path), f".{os.path.basename(path)}.{mark}-"
    stale = []
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_is_gone(int(pid)):
            stale.append(os.path.join(parent, name))
    return stale


def remove_stale_staging(path):
    """Removes what killed saves of `path` left beside it (staging and backup copies).

    A backup (the previous directory, moved aside during the swap) is put
    back when the process died before the new directory took its place.
    """
    for entry in _stale_entries(path, STAGING_MARK) + _stale_entries(path, FILE_MARK):
        if os.path.isdir(entry):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # Another save removed it first.
                os.remove(entry)
    for backup in _stale_entries(path, BACKUP_MARK):
        if os.path.exists(path):
            shutil.rmtree(backup, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.rename(backup, path)


def foreign_entries(directory, owned_files):
    """Files (and empty folders) in `directory` that are not among `owned_files`."""
    owned = {os.path.normpath(name) for name in owned_files}
    foreign = []
    for root, folders, names in os.walk(directory):
        relative_root = os.path.relpath(root, directory)
        for name in names:
            relative = os.path.normpath(os.path.join(relative_root, name))
            if relative not in owned:
                foreign.append(relative)
        if not folders and not names and relative_root != ".":
            foreign.append(relative_root + os.sep)
    return sorted(foreign)
