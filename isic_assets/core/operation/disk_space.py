"""Free disk space: refuse to start a stage that cannot fit, and name a full disk when it happens.

Every stage that can know how much it will write (raw_zips from the sizes the servers announce, the
merge from the zips' central directories, the transform from the image count) calls
:func:`ensure_free_space` before writing anything, and refuses with :class:`NotEnoughSpaceError`:
the stage, the path, the bytes needed (plus a margin) and the bytes free. What no estimate covers
(another process filling the disk, a server that announces no size) ends in ``ENOSPC`` mid-write;
:func:`disk_full_errors` turns that into a :class:`DiskFullError` naming the stage, the path, the
space still needed when known and the space free now. Writes are atomic, so nothing half-written
is left visible, and every stage resumes from what it finished once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

MARGIN_ENV = "ISIC_MIN_FREE_MB"
DEFAULT_MARGIN_MB = 64  # room for tables, state and the temporaries of atomic writes
_FULL = (errno.ENOSPC, errno.EDQUOT)


def format_bytes(n: int) -> str:
    """``1.23 GB (1,234,567,890 bytes)``: decimal units, as disk tools and the archive report sizes."""
    value, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            break
        value /= 1000
    short = f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
    return f"{short} ({n:,} bytes)"


def margin_bytes() -> int:
    """The free space every stage keeps on top of its estimate: ``ISIC_MIN_FREE_MB`` (default 64)."""
    raw = os.environ.get(MARGIN_ENV, "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_MARGIN_MB
    except ValueError:
        raise ValueError(f"{MARGIN_ENV} must be a number of megabytes, got {raw!r}") from None
    return max(0, int(megabytes * 1024 * 1024))


def free_bytes(where: Path) -> int:
    """Free bytes (for this user) on the filesystem of ``where`` or of its nearest existing parent."""
    probe = Path(os.path.abspath(where))
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


class NotEnoughSpaceError(Exception):
    """Refusal to start: the free space at ``where`` is below what the stage will write + margin."""

    def __init__(self, where: Path, needed: int, margin: int, free: int, detail: str = "", *,
                 stage: str = "", advice: str = "") -> None:
        self.stage, self.where, self.needed, self.margin, self.free = stage, Path(where), needed, margin, free
        prefix = f"{stage}: " if stage else ""
        super().__init__(
            f"{prefix}not enough free disk space at {where}: {detail}"
            f"{'the download' if not stage else 'it'} still needs {format_bytes(needed)} plus a safety margin "
            f"of {format_bytes(margin)} (= {format_bytes(needed + margin)}), but only {format_bytes(free)} is "
            f"free. {advice or 'Free some space or point ISIC_DATA_DIR elsewhere.'}"
        )


class DiskFullError(OSError):
    """The disk filled up mid-write (``ENOSPC``/``EDQUOT``); ``errno`` is kept for callers that test it."""

    def __init__(self, stage: str, where: Path, free: int, needed: int | None, cause: OSError) -> None:
        self.stage, self.where, self.free_bytes, self.needed = stage, Path(where), free, needed
        need = f"; this stage still needed about {format_bytes(needed)}" if needed else ""
        message = (
            f"{stage}: the disk is full writing under {where} ({cause.filename or where}: "
            f"{cause.strerror or cause}); {format_bytes(free)} free now{need}. Nothing half-written was "
            "kept and what finished is recorded: free some space (or point ISIC_DATA_DIR elsewhere) "
            "and run again to continue."
        )
        super().__init__(cause.errno, message)

    def __str__(self) -> str:
        return str(self.args[1])


def ensure_free_space(stage: str, where: Path, needed: int, detail: str = "", margin: int | None = None,
                      advice: str = "") -> int:
    """Free bytes at ``where``; raise :class:`NotEnoughSpaceError` when below ``needed + margin``.

    Nothing to write (``needed`` <= 0) never refuses: a re-run with nothing new must not fail on a
    disk that is merely nearly full.
    """
    free = free_bytes(where)
    margin = margin_bytes() if margin is None else margin
    if needed > 0 and free < needed + margin:
        raise NotEnoughSpaceError(where, needed, margin, free, detail, stage=stage, advice=advice)
    return free


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` that means no space (or quota) is left."""
    return isinstance(exc, OSError) and exc.errno in _FULL


@contextlib.contextmanager
def disk_full_errors(stage: str, where: Path, needed: int | None = None) -> Iterator[None]:
    """Re-raise ``ENOSPC``/``EDQUOT`` inside the block as a :class:`DiskFullError` naming the stage."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        raise DiskFullError(stage, where, free_bytes(where), needed, exc) from exc
