"""Archive records to files (metadata.csv, extensions, sizes) and the free-disk-space check."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ...ids import ISIC_ID_RE, member_extension
from .client import _SAFE_EXTENSION, IMAGES_DIR, LEAD_COLUMNS, InsufficientDiskSpaceError

# ---------------------------------------------------------------------------------------------
# Records -> files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageRef:
    """The parts of a record needed to fetch its image (the URL is used at once, never stored)."""

    isic_id: str
    url: str
    size: int
    extension: str

    @classmethod
    def from_record(cls, record: Any) -> _ImageRef:
        if not isinstance(record, dict):
            raise TypeError(f"not an image record: {type(record).__name__}")
        isic_id = record.get("isic_id")
        if not isinstance(isic_id, str) or not ISIC_ID_RE.match(isic_id):
            raise ValueError(f"record has no valid isic_id ({isic_id!r})")
        full = (record.get("files") or {}).get("full") or {}
        url, size = full.get("url"), full.get("size")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{isic_id}: record has no files.full.url")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{isic_id}: record has no valid files.full.size ({size!r})")
        return cls(isic_id, url, size, image_extension(url))


def image_extension(url: str) -> str:
    """Lower-case extension of the URL's path (``.jpeg`` -> ``.jpg``), ``.jpg`` when there is none.

    The archive also serves non-JPEG files, so the extension must come from the URL (isic-cli PR #94);
    anything that is not a short alphanumeric suffix falls back to ``.jpg`` so it can never shape a path.
    """
    suffix = member_extension(PurePosixPath(urlsplit(url).path).name)
    return suffix if _SAFE_EXTENSION.match(suffix) else ".jpg"


def metadata_table(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of the isic-cli ``metadata.csv``, rows sorted by isic_id.

    Columns are ``isic_id, attribution, copyright_license`` + the sorted union of every
    ``metadata.acquisition`` and ``metadata.clinical`` key (docs/ISIC_SOURCES.md 2.5). Keys are absent when
    a value is missing (docs/ISIC_SOURCES.md 2.2), which leaves an empty cell. Values are written as
    isic-cli's csv writer writes them (``55``, ``3.5``, ``True``).
    """
    rows: dict[str, dict[str, str]] = {}
    keys: set[str] = set()
    for record in records:
        row = {name: _cell(record.get(name)) for name in LEAD_COLUMNS}
        metadata = record.get("metadata") or {}
        for section in ("acquisition", "clinical"):
            for key, value in (metadata.get(section) or {}).items():
                if key not in LEAD_COLUMNS:
                    row[key] = _cell(value)
                    keys.add(key)
        rows[row["isic_id"]] = row
    header = [*LEAD_COLUMNS, *sorted(keys)]
    return header, [rows[isic_id] for isic_id in sorted(rows)]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _csv_bytes(header: list[str], rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")




# ---------------------------------------------------------------------------------------------
# Disk space
# ---------------------------------------------------------------------------------------------


def present_image_bytes(dest_dir: Path) -> int:
    """Bytes of the images already under ``dest_dir/images/`` (what a re-run will not fetch again)."""
    folder = Path(dest_dir) / IMAGES_DIR
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and ISIC_ID_RE.match(p.stem))


def bytes_still_needed(count: int, total_bytes: int, limit: int, present_bytes: int) -> tuple[int, bool]:
    """``(bytes, estimated)`` still to download for the disk check.

    Without a limit (or one >= count) it is the announced total minus what is on disk. With a smaller
    limit the API cannot say which images it will be, so the mean image size times the limit is
    used, and ``estimated`` is True.
    """
    estimated = bool(limit) and 0 < limit < count
    planned = math.ceil(total_bytes * limit / count) if estimated else total_bytes
    return max(0, planned - present_bytes), estimated


def ensure_free_space(where: Path, needed: int, margin: int, detail: str = "") -> int:
    """Free bytes at ``where`` (or its nearest existing parent); raise if below ``needed + margin``."""
    probe = Path(os.path.abspath(where))
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + margin:
        raise InsufficientDiskSpaceError(Path(where), needed, margin, free, detail)
    return free
