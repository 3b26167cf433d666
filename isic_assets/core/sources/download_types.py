"""The vocabulary of the downloader: policy, jobs, per-file records, failures and the manifest.

Shared by :mod:`.download` (the entry point) and :mod:`.file_transfer` (one file's transfer).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import layout
from ..atomic import atomic_write_json
from .retry import (
    backoff_delay,
)

MANIFEST_NAME = layout.DOWNLOAD_MANIFEST
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
MANIFEST_FIELDS = ("url", "size", "sha256", "etag", "last_modified")
FileStatus = Literal["downloaded", "resumed", "not_modified"]
FILE_STATUSES: tuple[str, ...] = ("downloaded", "resumed", "not_modified")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_MB = 1_000_000



@dataclass(frozen=True)
class DownloadPolicy:
    """How hard and how fast to try; the defaults suit multi-GB zips on a public S3 bucket.

    ``max_attempts`` counts per URL. ``chunk_bytes`` is the write buffer for downloads and the read
    size for ``file://`` copies and for hashing an inherited partial; network reads stay at the size
    the socket delivers so that bytes received before a drop are never lost from a buffer.
    """

    concurrency: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 6
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    chunk_bytes: int = 1 << 20
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_attempts", "chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"DownloadPolicy.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DownloadPolicy.{name} must be positive, got {getattr(self, name)}")
        for name in ("backoff_initial", "backoff_max", "progress_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"DownloadPolicy.{name} must not be negative, got {getattr(self, name)}")

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): see :func:`.retry.backoff_delay`."""
        return backoff_delay(attempt, self.backoff_initial, self.backoff_max, retry_after)


@dataclass(frozen=True)
class DownloadJob:
    """One file to fetch: where it comes from (mirrors, in order) and where it must end up."""

    source: str
    role: str
    urls: tuple[str, ...]
    dest: Path
    sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            raise TypeError(f"{self.label}: urls must be a sequence of URLs, not the string {self.urls!r}")
        urls = tuple(self.urls)
        if not urls:
            raise ValueError(f"{self.label}: at least one URL is needed")
        dest = Path(self.dest)
        if not dest.is_absolute():
            raise ValueError(f"{self.label}: dest must be an absolute path, got {dest}")
        sha256 = self.sha256.strip().lower() if self.sha256 else None
        if sha256 is not None and not _SHA256_RE.match(sha256):
            raise ValueError(f"{self.label}: sha256 must be 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "urls", urls)
        object.__setattr__(self, "dest", dest)
        object.__setattr__(self, "sha256", sha256)

    @property
    def label(self) -> str:
        """``source/role``, the name used in logs and errors."""
        return f"{self.source}/{self.role}"


@dataclass
class FileRecord:
    """What happened to one file in this run; JSON-ready for Dagster metadata and the manifest."""

    source: str
    role: str
    url: str
    path: str  # posix, relative to the downloads root
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    status: FileStatus
    bytes_transferred: int  # body bytes received by this call, across all attempts
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileRecord:
        """Inverse of :meth:`to_dict`; names the missing keys or a bad status."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"FileRecord dict lacks {missing}; got keys {sorted(data)}")
        if data["status"] not in FILE_STATUSES:
            raise ValueError(f"FileRecord status must be one of {FILE_STATUSES}, got {data['status']!r}")
        return cls(**{name: data[name] for name in names})

    def manifest_entry(self) -> dict[str, Any]:
        """The part of the record the manifest keeps between runs."""
        return {name: getattr(self, name) for name in MANIFEST_FIELDS}


@dataclass(frozen=True)
class UrlFailure:
    """Why one URL of a job was given up."""

    url: str
    reason: str
    attempts: int

    def describe(self) -> str:
        plural = "" if self.attempts == 1 else "s"
        return f"{self.url}: {self.reason} ({self.attempts} attempt{plural})"


@dataclass(frozen=True)
class JobFailure:
    """A job that produced no file: each URL's failure, or a local error (disk full, bad dest)."""

    source: str
    role: str
    path: str
    url_failures: tuple[UrlFailure, ...] = ()
    error: str | None = None

    def describe(self) -> str:
        lines = [f"{self.source}/{self.role} -> {self.path}:"]
        if self.error:
            lines.append(f"    {self.error}")
        lines.extend(f"    {failure.describe()}" for failure in self.url_failures)
        return "\n".join(lines)


class DownloadError(Exception):
    """One or more jobs failed; raised after every job ran and the successes are in the manifest.

    ``failures`` holds one :class:`JobFailure` per failed job, ``completed`` the records of the
    jobs that succeeded.
    """

    def __init__(self, failures: Sequence[JobFailure], completed: Sequence[FileRecord] = ()) -> None:
        self.failures = tuple(failures)
        self.completed = list(completed)
        total = len(self.failures) + len(self.completed)
        header = f"{len(self.failures)} of {total} downloads failed:"
        super().__init__("\n".join([header, *(failure.describe() for failure in self.failures)]))


def read_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """The manifest of a downloads root (relative path -> url, size, sha256, etag, last_modified)."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to re-check every file") from exc
    if not isinstance(data, dict) or not all(isinstance(entry, dict) for entry in data.values()):
        raise ValueError(f"{path} must map relative paths to objects, found {type(data).__name__}")
    return data



class _Manifest:
    """The manifest shared by the worker threads; each update is written at once, atomically."""

    def __init__(self, root: Path) -> None:
        self.path = root / MANIFEST_NAME
        self._entries = read_manifest(root)
        self._lock = threading.Lock()

    def get(self, rel: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(rel)
            return dict(entry) if entry else None

    def put(self, rel: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[rel] = entry
            atomic_write_json(self.path, self._entries)
