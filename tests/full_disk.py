"""A really small file system for the full-disk tests: a 256 KiB tmpfs mounted under the test's folder.

Import the fixture into a test module: ``from full_disk import small_disk  # noqa: F401``. It mounts
(``mount -t tmpfs -o size=256k``), yields the mount point, and unmounts when the test ends, whatever
happened; where mounting is not allowed (not root, or a container without the right) the test is
skipped with the reason. :func:`fill` leaves a chosen number of bytes free on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SIZE_KIB = 256


@pytest.fixture
def small_disk(tmp_path: Path):
    where = tmp_path / "small_disk"
    where.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount here: the full-disk test needs a 256 KiB tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_KIB}k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {SIZE_KIB} KiB tmpfs (needs root and the right to mount): "
                    f"{(done.stderr or done.stdout).strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)  # still busy: detach it now, free it later


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file into ``folder`` so that about ``leave`` bytes stay free on its file system."""
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, free_bytes(folder) - leave))
    return filler
