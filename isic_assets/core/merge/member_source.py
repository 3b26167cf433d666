"""Where an images source's members come from: a zip archive, or a folder of downloaded images.

Challenge sets and Archive exports arrive as zips; the ISIC API source arrives as a folder of
images plus metadata.csv. The merge reads both through this one interface so deduplication,
quarantine and the incremental state work the same for every source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from .zip_stream import MemberRead, ZipEntry, ZipLimits, iter_member_bytes, member_kind, read_member, scan_zip


class MemberSource(Protocol):
    """Lists members and reads their bytes one at a time."""

    @property
    def label(self) -> str: ...

    def entries(self) -> list[ZipEntry]: ...

    def iter_bytes(self, entries: Iterable[ZipEntry]) -> Iterator[MemberRead]: ...

    def read(self, name: str) -> bytes: ...


class ZipMembers:
    """Members of one zip, streamed with the zip-bomb limits."""

    def __init__(self, path: Path, limits: ZipLimits) -> None:
        self.path = Path(path)
        self.limits = limits

    @property
    def label(self) -> str:
        return self.path.name

    def entries(self) -> list[ZipEntry]:
        return scan_zip(self.path, self.limits)

    def iter_bytes(self, entries: Iterable[ZipEntry]) -> Iterator[MemberRead]:
        return iter_member_bytes(self.path, list(entries), self.limits)

    def read(self, name: str) -> bytes:
        return read_member(self.path, name, self.limits)


class FolderMembers:
    """Files under a folder, as members named by their path relative to it.

    The incremental state keys members by (name, crc, size); a folder has no CRC, so the file's
    modification time in nanoseconds stands in for it: a rewritten file is checked again.
    """

    def __init__(self, root: Path, limits: ZipLimits) -> None:
        self.root = Path(root)
        self.limits = limits

    @property
    def label(self) -> str:
        return f"{self.root.name}/"

    def entries(self) -> list[ZipEntry]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder of downloaded images")
        found = []
        for offset, path in enumerate(sorted(p for p in self.root.rglob("*") if p.is_file())):
            name = path.relative_to(self.root).as_posix()
            if name.startswith(".tmp-") or "/.tmp-" in name:
                continue  # a download still in flight or killed
            stat = path.stat()
            found.append(ZipEntry(name=name, file_size=stat.st_size, compress_size=stat.st_size,
                                  crc=stat.st_mtime_ns, is_dir=False, kind=member_kind(name),
                                  header_offset=offset))
        return found

    def iter_bytes(self, entries: Iterable[ZipEntry]) -> Iterator[MemberRead]:
        for entry in entries:
            if entry.file_size > self.limits.max_member_bytes:
                yield MemberRead(entry=entry, data=None,
                                 error=f"{entry.name}: {entry.file_size} bytes exceeds max_member_bytes "
                                       f"{self.limits.max_member_bytes}")
                continue
            try:
                yield MemberRead(entry=entry, data=(self.root / entry.name).read_bytes(), error=None)
            except OSError as exc:
                yield MemberRead(entry=entry, data=None, error=f"{entry.name}: {exc}")

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()
