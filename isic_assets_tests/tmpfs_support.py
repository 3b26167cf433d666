"""Real filesystems for fault tests, mounted for one test (needs root): a small tmpfs that fills up,
an exFAT volume that has no hard links, and a read-only bind mount.

Tests that need them skip with the reason when the mount is refused (not root, no CAP_SYS_ADMIN in
a container, the exFAT tools missing: `make fault-tools` installs them). The ballast fills the disk
*after* a stage's free-space check passed, from the stage's own log callback, so the write that
follows meets a real ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _need_root(what: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(f"{what} needs root and mount(8); the fault tests run as root in CI")


def _mount_or_skip(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {what} here ({done.stderr.strip() or done.returncode}): "
                    "the container lacks CAP_SYS_ADMIN or the filesystem's driver")


@contextlib.contextmanager
def mounted_exfat(folder: Path, size_mb: int) -> Iterator[Path]:
    """Mount a fresh ``size_mb`` exFAT volume (an image file on a loop device) on ``folder``.

    exFAT has no hard links (``link`` fails with EPERM), like a USB disk or an SD card a user may put
    the data root on. The kernel's exfat driver is used where it exists, else exfat-fuse
    (Debian's exfat-fuse and exfatprogs packages; `make fault-tools` installs them).
    """
    _need_root("mounting an exFAT volume")
    missing = [tool for tool in ("mkfs.exfat", "losetup") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: `make fault-tools` installs exfatprogs and exfat-fuse "
                    "(or: apt-get install exfatprogs exfat-fuse)")
    folder.mkdir(parents=True, exist_ok=True)
    image = folder.with_name(folder.name + ".exfat.img")
    with image.open("wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)  # sparse: takes only what the test writes
    subprocess.run(["mkfs.exfat", str(image)], capture_output=True, check=True)
    attached = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False)
    if attached.returncode != 0:
        image.unlink()
        pytest.skip(f"no loop device for the exFAT image ({attached.stderr.strip()})")
    device = attached.stdout.strip()
    try:
        kernel = subprocess.run(["mount", "-t", "exfat", device, str(folder)], capture_output=True, check=False)
        if kernel.returncode != 0:
            if shutil.which("mount.exfat-fuse") is None:
                pytest.skip("this kernel has no exfat driver and exfat-fuse is missing: `make fault-tools` "
                            "installs it (or: apt-get install exfat-fuse)")
            _mount_or_skip(["mount.exfat-fuse", device, str(folder)], "exFAT through FUSE")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def read_only_bind(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for everyone, root included, by a read-only bind mount onto itself.

    A 0555 folder stops other users but not root, who writes anywhere permissions say no: only a
    read-only mount refuses root (EROFS), as a read-only network share or a locked disk does.
    """
    _need_root("a read-only bind mount")
    folder.mkdir(parents=True, exist_ok=True)
    _mount_or_skip(["mount", "--bind", str(folder), str(folder)], "a bind mount")
    try:
        _mount_or_skip(["mount", "-o", "remount,bind,ro", str(folder)], "a read-only bind mount")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


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
