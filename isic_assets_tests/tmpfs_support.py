"""A small real filesystem that fills up: a tmpfs mounted for one test (needs root), and ballast.

Tests that need it skip with the reason when the mount is refused (not root, no CAP_SYS_ADMIN in a
container). The ballast fills the disk *after* a stage's free-space check passed, from the stage's
own log callback, so the write that follows meets a real ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` tmpfs on ``folder`` for the block; skip the test where mounting fails."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the disk-full tests run as root in CI")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "the container lacks CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


class Ballast:
    """A file that takes all but ``leave`` bytes of a filesystem, once, when ``fill`` is first called."""

    def __init__(self, folder: Path, leave: int) -> None:
        self.path = folder / "ballast.bin"
        self.leave = leave
        self.filled = False

    def fill(self) -> None:
        if self.filled:
            return
        self.filled = True
        free = shutil.disk_usage(self.path.parent).free
        with self.path.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, max(1, free - self.leave))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
