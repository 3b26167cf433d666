"""Member-by-member reading of ISIC image zips, with zip-bomb limits and no temporary folder.

The 2020 training zip is 23 GB, so members are read one at a time straight into memory and handed
to the caller (docs/PERFORMANCE.md 6: ``zf.read()`` to memory is as fast as extracting, and it gives
per-member error handling). Nothing here writes a file.

Declared sizes are never trusted:

* ``scan_zip`` reads the central directory only and refuses the archive (``ZipRefused``) before a
  single member is read when a declared size, the total, the member count or a compression ratio is
  beyond ``ZipLimits``, or when members overlap (the trick non-recursive zip bombs use).
* ``iter_member_bytes`` reads the local header itself, inflates with a hard output cap of the
  declared size + 1 byte and checks the CRC-32. Python's ``zipfile`` silently cuts a member that
  inflates to more than it declares, so the STORED and DEFLATED paths (every ISIC zip) are read here
  instead; other methods go through ``zipfile`` with the same cap.

Failures are split by what the caller can do about them:

* one broken member (CRC mismatch, bad local header, size lie, encryption) is a ``MemberRead`` with
  ``error`` set, and iteration continues with the next member;
* a broken archive (not a zip, truncated, central directory unreadable, or the file ends inside a
  member's data) raises ``ZipUnreadable``; the fix is to delete the file and download it again.
  Decision: a file that ends inside member data raises at once instead of reporting every remaining
  member, because the central directory sits at the end of a zip and every later member would fail
  the same way.
"""

from __future__ import annotations

import itertools
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from ..ids import isic_id_from_member

MiB = 1 << 20
GiB = 1 << 30

# Small members compress arbitrarily well (a blank CSV of 4 KB can reach 500:1) and cannot hurt, so
# the ratio limit only applies above this uncompressed size.
RATIO_FLOOR_BYTES = 1 * MiB

# Input is fed to zlib in chunks of this size so memory stays bounded by the member size limit.
_CHUNK_BYTES = 1 * MiB

EntryKind = Literal["image", "csv", "other", "dir"]

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # APPNOTE 4.3.7, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")  # APPNOTE 4.3.16, 22 bytes
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # APPNOTE 4.3.15, 20 bytes
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # APPNOTE 4.3.14, 56 bytes
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_FLAG_ENCRYPTED = 0x1
_FLAG_DATA_DESCRIPTOR = 0x8
_FLAG_UTF8 = 0x800
_ZIP64_MARKER = 0xFFFFFFFF
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ZipLimits:
    """Zip-bomb limits; every one is checked against the central directory before any read.

    The defaults sit far above anything ISIC publishes (largest image member ~30 MB, largest zip
    23 GB / 33k members, JPEG members barely compress) and far below what would exhaust the machine.
    """

    max_member_bytes: int = 512 * MiB
    max_total_bytes: int = 256 * GiB
    max_ratio: float = 100.0
    max_members: int = 2_000_000

    def __post_init__(self) -> None:
        for field_name in ("max_member_bytes", "max_total_bytes", "max_ratio", "max_members"):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"ZipLimits.{field_name} must be > 0, got {getattr(self, field_name)!r}")


DEFAULT_LIMITS = ZipLimits()


class ZipRefused(ValueError):
    """The archive declares more than ``ZipLimits`` allows (a zip bomb, or a limit set too low)."""


class ZipUnreadable(ValueError):
    """The file is not a readable zip (not a zip, truncated, broken central directory)."""


class ZipMemberError(ValueError):
    """``read_member`` could not return the member: missing, duplicated, or it failed its checks."""


@dataclass(frozen=True)
class ZipEntry:
    """One central-directory record: what the archive *declares* about a member.

    ``header_offset`` identifies the member even when two records share a name.
    """

    name: str
    file_size: int
    compress_size: int
    crc: int
    is_dir: bool
    kind: EntryKind
    header_offset: int

    @property
    def isic_id(self) -> str | None:
        """The ISIC id this member holds (image members only)."""
        return isic_id_from_member(self.name) if self.kind == "image" else None

    @property
    def ratio(self) -> float:
        """Declared uncompressed / compressed size (inf when a non-empty member compresses to 0)."""
        if self.compress_size == 0:
            return float("inf") if self.file_size else 1.0
        return self.file_size / self.compress_size


@dataclass(frozen=True)
class MemberRead:
    """The outcome of reading one member: exactly one of ``data`` and ``error`` is set."""

    entry: ZipEntry
    data: bytes | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.error is None):
            raise ValueError("MemberRead needs exactly one of data and error")

    @property
    def ok(self) -> bool:
        return self.error is None


class _MemberProblem(Exception):
    """Internal: this member is unreadable, the others may be fine."""


class _ArchiveTruncated(Exception):
    """Internal: the file ends inside member data."""


def member_kind(name: str) -> EntryKind:
    """Classify a member name: ISIC image, CSV, directory, or anything else.

    Superpixel PNGs, segmentation masks, licences and text files are "other" because
    ``isic_id_from_member`` accepts only ``ISIC_NNNNNNN[_downsampled].<image ext>``. macOS resource
    forks (``__MACOSX/``, ``._name``) are "other" whatever their extension: they are not the file.
    """
    normalized = name.replace("\\", "/")
    if normalized.endswith("/"):
        return "dir"
    parts = PurePosixPath(normalized).parts
    if "__MACOSX" in parts or (parts and parts[-1].startswith("._")):
        return "other"
    if isic_id_from_member(normalized) is not None:
        return "image"
    if normalized.lower().endswith(".csv"):
        return "csv"
    return "other"


def is_suspicious_member_name(name: str) -> bool:
    """True for names that would escape an extraction folder: ``..``, absolute, drive letter, NUL.

    Output names are built from the ISIC id, never from member paths, so such a member is still
    safe to read; this lets the caller report the archive as tampered with or badly made.
    """
    if "\x00" in name or name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        return True
    return ".." in name.replace("\\", "/").split("/")


def scan_zip(path: Path, limits: ZipLimits = DEFAULT_LIMITS) -> list[ZipEntry]:
    """List every member from the central directory and enforce ``limits`` before any member read.

    Raises ``ZipRefused`` (limits, overlapping members), ``ZipUnreadable`` (not a zip, truncated,
    broken directory) and ``FileNotFoundError``.
    """
    path = Path(path)
    declared_count = _declared_member_count(path)
    if declared_count is not None:
        _check_member_count(path, declared_count, limits)
    infos, directory_start = _read_central_directory(path)
    _check_member_count(path, len(infos), limits)
    entries = [_entry_from_info(info) for info in infos]
    for entry in entries:
        refusal = _limit_refusal(path, entry, limits)
        if refusal:
            raise ZipRefused(refusal)
    _check_total(path, entries, limits)
    _check_layout(path, infos, directory_start)
    return entries


def iter_member_bytes(
    path: Path, entries: Iterable[ZipEntry], limits: ZipLimits = DEFAULT_LIMITS
) -> Iterator[MemberRead]:
    """Yield one ``MemberRead`` per entry, in the given order, reading one member at a time.

    Memory is bounded by one member (at most ``limits.max_member_bytes``) plus a 1 MiB input chunk.
    Per-member failures are yielded as ``MemberRead.error``; a file that ends inside member data
    raises ``ZipUnreadable`` (see the module docstring). Entries beyond ``limits`` raise
    ``ZipRefused``, as in ``scan_zip``. Directory entries yield empty data.
    """
    path = Path(path)
    with _open_archive(path) as archive, path.open("rb") as handle:
        by_offset = {info.header_offset: info for info in archive.infolist()}
        archive_size = handle.seek(0, 2)
        for entry in entries:
            refusal = _limit_refusal(path, entry, limits)
            if refusal:
                raise ZipRefused(refusal)
            if entry.is_dir:
                yield MemberRead(entry, data=b"")
                continue
            try:
                info = _listed_info(path, entry, by_offset)
                data = _read_member_data(path, archive, handle, archive_size, info)
            except _MemberProblem as problem:
                yield MemberRead(entry, error=str(problem))
                continue
            except _ArchiveTruncated as truncated:
                raise ZipUnreadable(
                    f"{truncated}; the archive is truncated. Delete it so the next run downloads it again."
                ) from None
            yield MemberRead(entry, data=data)


def read_member(path: Path, name: str, limits: ZipLimits = DEFAULT_LIMITS) -> bytes:
    """Return the bytes of the member called exactly ``name`` (for small CSV members).

    Runs the full ``scan_zip`` checks first. Raises ``ZipMemberError`` when the name is missing,
    appears twice, or the member fails its checks.
    """
    path = Path(path)
    entries = scan_zip(path, limits)
    matches = [entry for entry in entries if entry.name == name]
    if not matches:
        base = PurePosixPath(name.replace("\\", "/")).name
        similar = [e.name for e in entries if PurePosixPath(e.name.replace("\\", "/")).name == base]
        hint = f"; members with the same file name: {similar[:5]}" if similar else ""
        raise ZipMemberError(f"{path}: no member named {name!r} among {len(entries)} members{hint}")
    if len(matches) > 1:
        offsets = [entry.header_offset for entry in matches]
        raise ZipMemberError(
            f"{path}: member name {name!r} appears {len(matches)} times (local headers at {offsets}); "
            "cannot tell which one is meant"
        )
    (result,) = iter_member_bytes(path, matches, limits)
    if result.data is None:
        raise ZipMemberError(str(result.error))
    return result.data


# --- central directory -------------------------------------------------------------------------


def _declared_member_count(path: Path) -> int | None:
    """Member count from the end-of-central-directory record, before zipfile builds every entry.

    Checking this first keeps a crafted directory of hundreds of millions of records from being
    materialized as Python objects. Best effort: None when the record cannot be found, in which case
    ``_read_central_directory`` reports the archive and the count is checked after it.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        tail_length = min(size, _EOCD.size + 0xFFFF)
        handle.seek(size - tail_length)
        tail = handle.read(tail_length)
        position = tail.rfind(_EOCD_SIGNATURE)
        if position < 0 or position + _EOCD.size > len(tail):
            return None
        total = _EOCD.unpack_from(tail, position)[4]
        if total != 0xFFFF:
            return total
        locator_offset = size - tail_length + position - _ZIP64_LOCATOR.size
        if locator_offset < 0:
            return None
        handle.seek(locator_offset)
        locator = handle.read(_ZIP64_LOCATOR.size)
        if len(locator) < _ZIP64_LOCATOR.size or not locator.startswith(_ZIP64_LOCATOR_SIGNATURE):
            return None
        handle.seek(_ZIP64_LOCATOR.unpack(locator)[2])
        record = handle.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or not record.startswith(_ZIP64_EOCD_SIGNATURE):
            return None
        return _ZIP64_EOCD.unpack(record)[7]


def _open_archive(path: Path) -> zipfile.ZipFile:
    """Open ``path`` with zipfile (which parses the central directory), or raise ``ZipUnreadable``."""
    if not path.is_file():
        raise FileNotFoundError(f"zip archive not found: {path}")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, struct.error, ValueError) as err:
        raise ZipUnreadable(
            f"{path}: not a readable zip archive ({type(err).__name__}: {err}). It is probably "
            "truncated (an interrupted download) or not a zip at all (an HTML error page saved "
            "under the zip name looks like this). Delete it so the next run downloads it again."
        ) from err


def _read_central_directory(path: Path) -> tuple[list[zipfile.ZipInfo], int | None]:
    """All central-directory records and the offset where the directory starts."""
    with _open_archive(path) as archive:
        return archive.infolist(), getattr(archive, "start_dir", None)


def _entry_from_info(info: zipfile.ZipInfo) -> ZipEntry:
    return ZipEntry(
        name=info.filename,
        file_size=info.file_size,
        compress_size=info.compress_size,
        crc=info.CRC,
        is_dir=info.is_dir(),
        kind=member_kind(info.filename),
        header_offset=info.header_offset,
    )


def _check_member_count(path: Path, count: int, limits: ZipLimits) -> None:
    if count > limits.max_members:
        raise ZipRefused(
            f"{path}: the central directory declares {count:,} members, above "
            f"ZipLimits.max_members={limits.max_members:,}; refused before reading any member. If "
            f"the archive is trusted, raise the limit, e.g. ZipLimits(max_members={count})."
        )


def _limit_refusal(path: Path, entry: ZipEntry, limits: ZipLimits) -> str | None:
    """Why this single member breaks ``limits``, or None."""
    declared = (
        f"member {entry.name!r} declares {entry.file_size:,} bytes uncompressed from "
        f"{entry.compress_size:,} compressed (ratio {entry.ratio:.1f}:1)"
    )
    if entry.file_size > limits.max_member_bytes:
        return (
            f"{path}: {declared}, above ZipLimits.max_member_bytes={limits.max_member_bytes:,}; refused "
            f"before reading it. If the archive is trusted, raise the limit, e.g. "
            f"ZipLimits(max_member_bytes={entry.file_size})."
        )
    if entry.file_size > RATIO_FLOOR_BYTES and entry.ratio > limits.max_ratio:
        return (
            f"{path}: {declared}, above ZipLimits.max_ratio={limits.max_ratio:g} (applied to members "
            f"over {RATIO_FLOOR_BYTES:,} bytes); this is how zip bombs look, and ISIC images barely "
            f"compress. Refused before reading it. If the archive is trusted, raise the limit, e.g. "
            f"ZipLimits(max_ratio={entry.ratio * 1.01:.0f})."
        )
    return None


def _check_total(path: Path, entries: list[ZipEntry], limits: ZipLimits) -> None:
    total = sum(entry.file_size for entry in entries)
    if total > limits.max_total_bytes:
        raise ZipRefused(
            f"{path}: {len(entries):,} members declare {total:,} bytes uncompressed in total, above "
            f"ZipLimits.max_total_bytes={limits.max_total_bytes:,}; refused before reading any member. "
            f"If the archive is trusted, raise the limit, e.g. ZipLimits(max_total_bytes={total})."
        )


def _check_layout(path: Path, infos: list[zipfile.ZipInfo], directory_start: int | None) -> None:
    """Refuse members whose data overlap, and directories that point past their own start.

    Overlapping entries that share one compressed kernel are the non-recursive zip bomb (Fifield,
    WOOT 2019); Python 3.11.7's zipfile does not detect them. The local header is at least 30 bytes
    plus one byte per name character, so the bound used here never flags a well-formed archive.
    """
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for current, following in itertools.pairwise(ordered):
        data_end = current.header_offset + 30 + len(current.orig_filename) + current.compress_size
        if data_end > following.header_offset:
            raise ZipRefused(
                f"{path}: members {current.filename!r} (local header at {current.header_offset:,}, "
                f"{current.compress_size:,} bytes compressed) and {following.filename!r} (local "
                f"header at {following.header_offset:,}) overlap. Overlapping members are how "
                "non-recursive zip bombs multiply their output; no limit allows this. If the source "
                "is trusted the file is still malformed: delete it and download it again."
            )
    if ordered and directory_start is not None:
        last = ordered[-1]
        data_end = last.header_offset + 30 + len(last.orig_filename) + last.compress_size
        if data_end > directory_start:
            raise ZipUnreadable(
                f"{path}: member {last.filename!r} (local header at {last.header_offset:,}, "
                f"{last.compress_size:,} bytes compressed) runs into the central directory at "
                f"{directory_start:,}; the directory is broken. Delete the file so the next run "
                "downloads it again."
            )


# --- member data -------------------------------------------------------------------------------


def _listed_info(path: Path, entry: ZipEntry, by_offset: dict[int, zipfile.ZipInfo]) -> zipfile.ZipInfo:
    """The archive's current record for ``entry``: the file may have changed since ``scan_zip``."""
    info = by_offset.get(entry.header_offset)
    if info is None or (info.filename, info.file_size, info.compress_size, info.CRC) != (
        entry.name,
        entry.file_size,
        entry.compress_size,
        entry.crc,
    ):
        raise _MemberProblem(
            f"{path}: member {entry.name!r}: the central directory no longer lists it at offset "
            f"{entry.header_offset:,} with the same name, sizes and CRC; the archive changed since "
            "scan_zip. Scan it again."
        )
    return info


def _read_member_data(
    path: Path, archive: zipfile.ZipFile, handle: BinaryIO, archive_size: int, info: zipfile.ZipInfo
) -> bytes:
    """Bytes of one member, checked against its local header, declared size and CRC-32."""
    where = f"{path}: member {info.filename!r}"
    data_start = _read_local_header(where, handle, info)
    if data_start + info.compress_size > archive_size:
        raise _ArchiveTruncated(
            f"{where}: its {info.compress_size:,} compressed bytes start at offset {data_start:,} but "
            f"the file ends at {archive_size:,}"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        data = _read_stored(where, handle, info)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        data = _inflate(where, handle, info)
    else:
        data = _read_with_zipfile(where, archive, info)
    if len(data) != info.file_size:
        raise _MemberProblem(
            f"{where}: decompressed to {len(data):,} bytes, the central directory declares "
            f"{info.file_size:,}; the member is corrupt"
        )
    actual_crc = zlib.crc32(data)
    if actual_crc != info.CRC:
        raise _MemberProblem(
            f"{where}: CRC-32 mismatch (declared {info.CRC:08x}, data {actual_crc:08x}); "
            "the member is corrupt"
        )
    return data


def _read_local_header(where: str, handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Check the local header against the central directory; return where the member data starts."""
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size:
        raise _ArchiveTruncated(f"{where}: the file ends inside its local header at {info.header_offset:,}")
    signature, _version, flags, method, _time, _date, crc, csize, usize, name_len, extra_len = (
        _LOCAL_HEADER.unpack(raw)
    )
    if signature != _LOCAL_SIGNATURE:
        raise _MemberProblem(
            f"{where}: no local file header at offset {info.header_offset:,} (found {signature!r}); "
            "the central directory points at the wrong place"
        )
    local_name = handle.read(name_len).decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
    if local_name != info.orig_filename:
        raise _MemberProblem(f"{where}: the local header names it {local_name!r}; the member is corrupt")
    if method != info.compress_type:
        raise _MemberProblem(
            f"{where}: local header says compression method {method}, central directory says "
            f"{info.compress_type}"
        )
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise _MemberProblem(f"{where}: the member is encrypted; ISIC archives never are")
    sizes_in_header = not flags & _FLAG_DATA_DESCRIPTOR and _ZIP64_MARKER not in (csize, usize)
    if sizes_in_header and (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
        raise _MemberProblem(
            f"{where}: the local header declares {usize:,} bytes from {csize:,} compressed (CRC {crc:08x}), "
            f"the central directory {info.file_size:,} from {info.compress_size:,} (CRC {info.CRC:08x}); "
            "one of them lies"
        )
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _read_stored(where: str, handle: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    if info.compress_size != info.file_size:
        raise _MemberProblem(
            f"{where}: stored (uncompressed) but declares {info.compress_size:,} bytes compressed and "
            f"{info.file_size:,} uncompressed"
        )
    return handle.read(info.file_size)


def _inflate(where: str, handle: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    """Raw-deflate the member's compressed bytes, producing at most declared size + 1 bytes.

    The extra byte is how a member that inflates to more than it declares is caught: zipfile would
    return the declared prefix and say nothing.
    """
    # Deflate never expands data by more than 5 bytes per 16 KiB block; a bigger declared compressed
    # size is a lie that could make us stream gigabytes for a few output bytes.
    if info.compress_size > info.file_size + info.file_size // 100 + 1024:
        raise _MemberProblem(
            f"{where}: declares {info.compress_size:,} bytes compressed for {info.file_size:,} "
            "uncompressed, more than deflate can produce; the member is corrupt"
        )
    limit = info.file_size + 1
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []  # joined once at the end: one copy, none for a single part
    produced = 0
    remaining = info.compress_size
    try:
        while remaining > 0 and not inflater.eof:
            chunk = handle.read(min(_CHUNK_BYTES, remaining))
            if not chunk:
                raise _ArchiveTruncated(f"{where}: the file ends inside its compressed data")
            remaining -= len(chunk)
            while chunk and not inflater.eof:
                part = inflater.decompress(chunk, limit - produced)
                parts.append(part)
                produced += len(part)
                if produced >= limit:
                    raise _MemberProblem(
                        f"{where}: inflates to more than the {info.file_size:,} bytes it declares; "
                        "reading stopped there (a lying size is a zip-bomb trick)"
                    )
                chunk = inflater.unconsumed_tail
    except zlib.error as err:
        raise _MemberProblem(f"{where}: deflate data is corrupt ({err})") from None
    if not inflater.eof:
        raise _MemberProblem(
            f"{where}: the deflate stream does not end within its {info.compress_size:,} declared "
            "compressed bytes; the member is truncated or corrupt"
        )
    if remaining or inflater.unused_data:
        raise _MemberProblem(
            f"{where}: the deflate stream ends {remaining + len(inflater.unused_data):,} bytes before "
            f"its declared compressed size of {info.compress_size:,}; the member is corrupt"
        )
    return b"".join(parts)


def _read_with_zipfile(where: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Methods other than STORED/DEFLATED (bzip2, lzma): zipfile's reader, capped at the declared size.

    zipfile stops at the declared size itself, so a longer stream cannot be detected on this path;
    memory is still bounded. No ISIC archive uses these methods.
    """
    try:
        with archive.open(info) as member:
            return member.read(info.file_size + 1)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError, RuntimeError) as err:
        raise _MemberProblem(
            f"{where}: unreadable with compression method {info.compress_type} ({type(err).__name__}: {err})"
        ) from None
