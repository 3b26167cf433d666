"""Where an images source's members come from: a zip, an HDF5 file, or a folder of downloaded images.

Challenge sets and Archive exports arrive as zips; ISIC 2024's Kaggle release arrives as one HDF5
file with one dataset per ``isic_id`` (docs/ISIC_SOURCES.md 1.6); the ISIC API source arrives as a
folder of images plus metadata.csv. The merge reads all of them through this one interface so
deduplication, quarantine and the incremental state work the same for every source.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..ids import ISIC_ID_RE
from .zip_stream import (
    MemberRead,
    ZipEntry,
    ZipLimits,
    ZipRefused,
    iter_member_bytes,
    member_kind,
    read_member,
    scan_zip,
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_END_OF_DIRECTORY = b"PK\x05\x06"
_ZIP_TAIL = 22 + 0xFFFF  # the end-of-central-directory record plus the longest zip comment


class MemberSource(Protocol):
    """Lists members and reads their bytes one at a time."""

    @property
    def label(self) -> str: ...

    def entries(self) -> list[ZipEntry]: ...

    def iter_entries(self) -> Iterator[ZipEntry]: ...

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

    def iter_entries(self) -> Iterator[ZipEntry]:
        return iter(self.entries())

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

    def iter_entries(self) -> Iterator[ZipEntry]:
        return iter(self.entries())

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


# ----------------------------------------------------------------------------------------------
# Telling containers apart, and HDF5


class UnreadableImages(ValueError):
    """An images file that is neither a zip nor an HDF5 file we can open; the message names it."""


def container_kind(path: Path) -> str:
    """``"hdf5"`` or ``"zip"`` by content, never by name: a renamed download must still be read right.

    HDF5 puts its signature at offset 0, or at 512, 1024, 2048... when a user block precedes it;
    a zip is known by its end-of-central-directory record near the end (which a self-extracting
    or prefixed zip also has). Anything else raises :class:`UnreadableImages` naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                handle.seek(offset)
                if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return "hdf5"
                offset = 512 if offset == 0 else offset * 2
            handle.seek(max(0, size - _ZIP_TAIL))
            if _ZIP_END_OF_DIRECTORY in handle.read():
                return "zip"
    except OSError as exc:
        raise UnreadableImages(f"{path}: cannot read the images file ({exc.strerror or exc})") from exc
    raise UnreadableImages(
        f"{path.name}: neither a zip (no end-of-central-directory record) nor an HDF5 file (no HDF5 "
        "signature at offset 0, 512, 1024, ...); the download is truncated or not an images file"
    )


def open_image_file(path: Path, limits: ZipLimits) -> MemberSource:
    """The member source for one downloaded images file, chosen by its content."""
    return Hdf5Members(path, limits) if container_kind(path) == "hdf5" else ZipMembers(path, limits)


@dataclass(frozen=True)
class RefusedMember:
    """A container member that is not an image the merge can take; goes to quarantine.csv."""

    name: str
    reason: str
    detail: str


class Hdf5Members:
    """Datasets of an HDF5 file, one per ``isic_id``, each holding one encoded image's bytes.

    The ISIC 2024 Kaggle file stores each JPEG as a scalar byte string (``|S``); opaque scalars
    (``|V``) and 1-D uint8 arrays are read the same way, since the publishers' exact dtype is not
    documented (docs/ISIC_SOURCES.md 1.6). Members are named ``<isic_id>.jpg`` so every id helper
    treats them like zip members; the checker decides the real format from the bytes.

    Nothing is read unbounded: each dataset's declared size and allocated storage are checked
    against the zip limits before its bytes are touched. Keys that are not ISIC ids, groups, and
    datasets of another type are listed by :meth:`refused` instead of being skipped silently.
    The incremental state keys members by (name, crc, size); HDF5 keeps no checksum, so a CRC of
    the file's modification time and the dataset's storage address stands in: a replaced file is
    checked again.

    Speed (docs/PERFORMANCE.md, "ISIC 2024 at archive scale"): h5py's high-level objects cost about
    a millisecond per dataset to list and as much to read on a loaded machine, more than checking
    the image. The usual dataset (a scalar fixed-length ``|S`` string stored contiguously) is listed
    with the low-level calls, and its ``header_offset`` is the file address of its bytes, which are
    then read with one ``pread`` while the file is still the one listed (same inode, size and
    modification time). Anything else (groups, other types, chunked or compact storage, a file
    changed since it was listed) takes the high-level path, with its checks and reasons, as before;
    its ``header_offset`` is then a negative position, so every entry's offset stays unique.
    """

    def __init__(self, path: Path, limits: ZipLimits) -> None:
        self.path = Path(path)
        self.limits = limits
        self._refused: list[RefusedMember] = []
        self._listed_as: tuple[int, int, int] | None = None  # (inode, size, mtime) when iter_entries listed it

    @property
    def label(self) -> str:
        return self.path.name

    def _open(self) -> Any:
        import h5py  # only sources shipped as HDF5 need it

        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise UnreadableImages(
                f"{self.path.name}: not a readable HDF5 file ({exc}); the download is truncated or "
                "damaged: delete it so the next download fetches it again"
            ) from exc

    def entries(self) -> list[ZipEntry]:
        return list(self.iter_entries())

    def iter_entries(self) -> Iterator[ZipEntry]:
        """The datasets one at a time, so a caller can store the listing without holding it (401,059
        entries for ISIC 2024); the total size limit is checked when the last one has been listed."""
        import h5py

        listed = self.path.stat()
        mtime = listed.st_mtime_ns
        refused: list[RefusedMember] = []
        total = 0
        position = 0
        self._listed_as = None
        with self._open() as handle:
            if len(handle) > self.limits.max_members:
                raise ZipRefused(f"{self.path.name}: {len(handle)} datasets exceed max_members "
                                 f"{self.limits.max_members}")
            names = _dataset_names(handle)
        # HDF5 keeps the header of every dataset opened in the file's metadata cache until the file is
        # closed, deserialized (about 5 KB each, up to the cache's limit: +300 MB at 401,059 datasets,
        # +90 at 100,000); a fresh handle every _OPEN_AT_ONCE datasets keeps that flat (136 MiB
        # against 342 in all, and no slower: the names are looked up in a cache that stays small).
        for lo in range(0, len(names), _OPEN_AT_ONCE):
            with self._open() as handle:
                for raw in names[lo : lo + _OPEN_AT_ONCE]:
                    key = raw.decode("utf-8", "surrogateescape")
                    if not ISIC_ID_RE.match(key):
                        refused.append(RefusedMember(key, "not_an_isic_id",
                                                     f"HDF5 key {key!r} is not ISIC_ + 7 digits"))
                        continue
                    plain = _plain_string_dataset(handle, key)
                    if plain is not None:
                        declared, stored, address = plain
                        total += declared
                        # An ISIC id (matched above) + ".jpg" is an image member by definition (member_kind).
                        yield ZipEntry(name=f"{key}.jpg", file_size=declared, compress_size=stored,
                                       crc=zlib.crc32(f"{mtime}:{address}:{stored}".encode()),
                                       is_dir=False, kind="image", header_offset=address)
                        position += 1
                        continue
                    try:
                        item = handle.get(key)
                    except (OSError, KeyError, RuntimeError) as exc:
                        refused.append(RefusedMember(key, "read_error", f"HDF5 object {key!r}: {exc}"))
                        continue
                    if not isinstance(item, h5py.Dataset):
                        refused.append(RefusedMember(key, "not_a_dataset",
                                                     f"HDF5 object {key!r} is a {type(item).__name__}, not a dataset"))
                        continue
                    problem = _byte_layout_problem(item)
                    if problem:
                        refused.append(RefusedMember(key, "not_image_bytes", f"HDF5 dataset {key!r}: {problem}"))
                        continue
                    declared = int(item.dtype.itemsize) * int(item.size or 0)
                    stored = int(item.id.get_storage_size())
                    total += declared
                    offset = item.id.get_offset() or 0
                    # Named <key>.jpg: every key listed is an ISIC id, so the name gives the key back.
                    name = f"{key}.jpg"
                    yield ZipEntry(name=name, file_size=declared, compress_size=stored,
                                   crc=zlib.crc32(f"{mtime}:{offset}:{stored}".encode()),
                                   is_dir=False, kind=member_kind(name), header_offset=-(position + 1))
                    position += 1
        if total > self.limits.max_total_bytes:
            raise ZipRefused(f"{self.path.name}: datasets declare {total} bytes in all, over max_total_bytes "
                             f"{self.limits.max_total_bytes}")
        self._refused = refused
        self._listed_as = (listed.st_ino, listed.st_size, listed.st_mtime_ns)

    def refused(self) -> list[RefusedMember]:
        """Objects :meth:`entries` left out, with the reason (valid after ``entries``)."""
        return list(self._refused)

    def listing_key(self) -> str:
        """What a listing of this file depends on: the file as it is now (device, inode, size,
        modification and change times) and the limits it was checked against. Listing is the slow
        part of a re-run (about 0.3 ms a dataset), so the merge keeps a listing under this key."""
        now = self.path.stat()
        return (f"{now.st_dev}:{now.st_ino}:{now.st_size}:{now.st_mtime_ns}:{now.st_ctime_ns}:"
                f"{self.limits.max_members}:{self.limits.max_total_bytes}")

    def listed_before(self, key: str, refused: list[RefusedMember]) -> bool:
        """Take a listing kept from an earlier run of this very file (``listing_key`` still ``key``)
        instead of :meth:`iter_entries`; False, and nothing taken, when the file has changed."""
        if key != self.listing_key():
            return False
        now = self.path.stat()
        self._refused = list(refused)
        self._listed_as = (now.st_ino, now.st_size, now.st_mtime_ns)
        return True

    def _limit_error(self, entry: ZipEntry) -> str | None:
        if entry.file_size > self.limits.max_member_bytes:
            return (f"{entry.name}: {entry.file_size} bytes exceeds max_member_bytes "
                    f"{self.limits.max_member_bytes}")
        if entry.compress_size and entry.file_size / entry.compress_size > self.limits.max_ratio:
            return f"{entry.name}: expands {entry.file_size / entry.compress_size:.0f}x, over max_ratio"
        return None

    def _dataset_bytes(self, handle: Any, name: str) -> bytes:
        dataset = handle[name.removesuffix(".jpg")]
        problem = _byte_layout_problem(dataset)
        if problem:
            raise ValueError(problem)
        # Checked again on the open dataset: the file may have changed since entries() listed it.
        declared = int(dataset.dtype.itemsize) * int(dataset.size or 0)
        if declared > self.limits.max_member_bytes:
            raise ValueError(f"{declared} bytes exceeds max_member_bytes {self.limits.max_member_bytes}")
        value = dataset[()]
        return value.tobytes() if hasattr(value, "shape") and value.shape != () else bytes(value)

    def iter_bytes(self, entries: Iterable[ZipEntry]) -> Iterator[MemberRead]:
        with self._open() as handle, open(self.path, "rb", buffering=0) as raw:
            now = os.fstat(raw.fileno())
            same_file = self._listed_as == (now.st_ino, now.st_size, now.st_mtime_ns)
            for entry in entries:
                error = self._limit_error(entry)
                if error is not None:
                    yield MemberRead(entry=entry, data=None, error=error)
                    continue
                try:
                    if same_file and entry.header_offset >= 0:
                        # A contiguous scalar |S string, as listed: its bytes, NUL padding dropped as
                        # h5py's read does.
                        data = os.pread(raw.fileno(), entry.file_size, entry.header_offset).rstrip(b"\0")
                    else:
                        data = self._dataset_bytes(handle, entry.name)
                except (OSError, KeyError, ValueError, RuntimeError) as exc:
                    yield MemberRead(entry=entry, data=None, error=f"{entry.name}: {exc}")
                    continue
                yield MemberRead(entry=entry, data=data, error=None)

    def read(self, name: str) -> bytes:
        with self._open() as handle:
            try:
                return self._dataset_bytes(handle, name)
            except (OSError, KeyError, RuntimeError) as exc:
                raise UnreadableImages(f"{self.path.name}: dataset for {name}: {exc}") from exc


_OPEN_AT_ONCE = 25_000  # datasets opened through one file handle (see Hdf5Members.iter_entries)


def _dataset_names(handle: Any) -> np.ndarray:
    """The file's top-level names in iteration order, as UTF-8 bytes (4.8 MB at 401,059 ISIC ids; a
    list of Python strings would be about 30), gathered a block at a time."""
    blocks, block = [], []
    for key in handle:
        block.append(key.encode("utf-8", "surrogateescape"))
        if len(block) == 65_536:
            blocks.append(np.array(block))
            block = []
    if block or not blocks:
        blocks.append(np.array(block, dtype="S1") if not block else np.array(block))
    return np.concatenate(blocks)


@lru_cache(maxsize=1)
def _h5py_low_level() -> tuple[Any, Any, Any]:
    """h5py's h5d, h5s and h5t modules, imported once (an import statement per dataset costs)."""
    from h5py import h5d, h5s, h5t

    return h5d, h5s, h5t


def _plain_string_dataset(handle: Any, key: str) -> tuple[int, int, int] | None:
    """(declared size, stored size, file address) of a contiguous scalar fixed-length string dataset,
    read with h5py's low-level calls; None for anything else (the high-level path decides)."""
    h5d, h5s, h5t = _h5py_low_level()
    try:
        dataset = h5d.open(handle.id, key.encode())
    except (KeyError, OSError, ValueError, RuntimeError, TypeError):
        return None
    datatype = dataset.get_type()
    if datatype.get_class() != h5t.STRING or datatype.is_variable_str() \
            or dataset.get_space().get_simple_extent_type() != h5s.SCALAR:
        return None
    address = dataset.get_offset()  # None unless stored contiguously (never filtered then)
    declared, stored = int(datatype.get_size()), int(dataset.get_storage_size())
    if address is None or stored != declared:
        return None
    return declared, stored, int(address)


def _byte_layout_problem(dataset: Any) -> str | None:
    """Why a dataset cannot hold one encoded image's bytes, or None when it can."""
    dtype = dataset.dtype
    if dataset.shape == () and dtype.kind in ("S", "V") and dtype.fields is None:
        return None
    if len(dataset.shape) == 1 and dtype.kind in ("u", "i") and dtype.itemsize == 1:
        return None
    return (f"dtype {dtype} with shape {dataset.shape}; expected encoded image bytes "
            "(a scalar |S or |V, or a 1-D uint8 array)")
