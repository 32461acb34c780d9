"""A save on a full disk fails cleanly and the next one works (issue 19, case 2).

On a real full tmpfs, Keras' HDF5 writer used to leave its file open, print
~20 "Exception ignored" h5py tracebacks and crash the process with a
segfault in HDF5, taking the unsaved model with it. The weights file's size
is now estimated first and a disk without room is an `OSError(ENOSPC)`
before HDF5 writes anything. The real-disk test mounts a 2 MiB tmpfs (root
only) and runs in a subprocess, so that a crash fails the test instead of
the session; the simulated one patches `os.statvfs`.
"""

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_gemma
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import random_backbone

SCENARIO = textwrap.dedent(
    """
    import errno, os, sys
    import numpy as np
    from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
    from keras_gemma.testing.models import logits_of, random_backbone

    disk = sys.argv[1]
    preset = os.path.join(disk, "preset")
    GemmaCausalLM(random_backbone(seed=0)).save_to_preset(preset)
    before = {name: open(os.path.join(preset, name), "rb").read() for name in os.listdir(preset)}
    tuned = GemmaCausalLM(random_backbone(seed=1))  # The unsaved fine-tuned model.
    filler = os.path.join(disk, "filler")
    with open(filler, "wb") as file:
        stat = os.statvfs(disk)
        file.write(b"\\0" * (stat.f_bavail * stat.f_frsize - 200 * 1024))
    try:
        tuned.save_to_preset(preset)
        raise SystemExit("the save on a full disk did not fail")
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
        print("refused:", error)
    assert sorted(os.listdir(disk)) == ["filler", "preset"], os.listdir(disk)
    after = {name: open(os.path.join(preset, name), "rb").read() for name in os.listdir(preset)}
    assert after == before
    os.remove(filler)
    tuned.save_to_preset(preset)  # Space freed: the same process saves again.
    reloaded = GemmaCausalLM.from_preset(preset)
    np.testing.assert_array_equal(logits_of(reloaded), logits_of(tuned))
    print("saved after freeing space")
    """
)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MiB tmpfs mounted at `tmp_path / "disk"` (needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the simulated full disk test still runs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield str(disk)
    subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_fails_cleanly_and_the_next_save_works(small_tmpfs):
    package_root = os.path.dirname(os.path.dirname(keras_gemma.__file__))
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, small_tmpfs],
        env=dict(os.environ, PYTHONPATH=package_root),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: [Errno 28] No space left on device" in result.stdout
    assert "saved after freeing space" in result.stdout
    assert "Exception ignored" not in result.stderr and "h5py" not in result.stderr


def test_a_simulated_full_disk_refuses_before_writing(tmp_path, monkeypatch):
    preset = str(tmp_path / "preset")
    tuned = GemmaCausalLM(random_backbone(seed=1))
    real_statvfs = os.statvfs

    def full(path):
        stat = real_statvfs(path)
        return os.statvfs_result((stat.f_bsize, stat.f_frsize, stat.f_blocks, 0, 0) + stat[5:])

    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(
        OSError, match="needs about 0.8 MiB and the disk has 0.0 MiB free"
    ) as raised:
        tuned.save_to_preset(preset)
    assert raised.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    tuned.save_to_preset(preset)
    np.testing.assert_array_equal(logits_of(GemmaCausalLM.from_preset(preset)), logits_of(tuned))
