"""Download the raw archive files with httpx: retries, resume, conditional requests, checksums.

ISIC zips are up to ~10 GB and are fetched over flaky links, so every file goes through one
documented decision per run (the idea of pooch's "download, update or fetch from cache"):

* **not modified**: the manifest (``<root>/manifest.json``) says which URL served the local copy,
  with its size, sha256 and validators. If the file is still there with that size (and the catalog
  sha256, when given, is the recorded one), that URL is asked first, with ``If-None-Match`` /
  ``If-Modified-Since``; a 304 means nothing is transferred. Another URL of the job (a mirror, or
  the demo mirror on a new port) is offered the strong ETag only. A server that gave no validators
  is asked with ``HEAD`` instead and the file counts as unchanged when ``Content-Length`` equals the
  recorded size. That can miss a same-size rewrite, but it is the only cheap signal such a server
  offers; a catalog sha256 still guards the content of new downloads. The local file is *not*
  re-hashed (that would read every GB zip on every run).
* **resumed**: an interrupted download leaves ``<dest>.part`` plus a small sidecar
  ``<dest>.part.json`` (URL, ETag, Last-Modified, total size). The next attempt, in this run or a
  later one, asks for ``Range: bytes=<have>-`` with ``If-Range`` set to the strong ETag (else the
  Last-Modified date). A 206 continues the file; a 200 (the server ignores ranges, or the remote
  changed) restarts it from zero with that same response. A partial is only resumed from the URL
  that started it: validators mean nothing across mirrors.
* **downloaded**: everything else streams the whole body into ``<dest>.part``.

The sha256 is computed while streaming; only a partial inherited from an earlier run is hashed once
before resuming. ``<dest>`` is replaced atomically (rename) only after the received size equals
``Content-Length`` (or the ``Content-Range`` total) and an expected sha256 matches, so a reader never
sees a truncated or corrupt file. A sha256 mismatch deletes the partial and re-downloads once from
scratch before that URL is given up. After a final failure, a resumable partial and its sidecar are
deliberately kept so the next run continues where this one stopped; a partial that cannot be resumed
(the server gave no validators) is deleted.

Retries (per URL, up to ``max_attempts``) cover connection errors, timeouts, incomplete bodies, 429
and 5xx, with exponential backoff and full jitter ("Exponential Backoff And Jitter", AWS
Architecture Blog, 2015), or the server's ``Retry-After`` (seconds or HTTP-date) capped at
``backoff_max``. Any other 4xx fails that URL at once, and the next mirror URL is tried.

``file://`` URLs are copied with the same size/sha256 checks and atomic rename; they are "not
modified" when the manifest's ETag (size + mtime, as the mirror server computes it) still matches.

One ``download_all`` call per downloads root at a time: it owns the manifest and the partials.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from .. import layout
from ..atomic import atomic_write_json, remove_stale_temporaries
from .http_mirror import make_etag
from .retry import (
    RetriesExhausted,
    Transient,
    backoff_delay,
    call_with_retries,
    describe_exception,
    http_status,
    parse_retry_after,
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
_logger = logging.getLogger(__name__)


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


def download_all(
    jobs: Sequence[DownloadJob],
    root: Path,
    policy: DownloadPolicy | None = None,
    log: Callable[[str], None] = _logger.info,
) -> list[FileRecord]:
    """Fetch every job into ``root`` and return their records in job order.

    Jobs run ``policy.concurrency`` at a time on one shared ``httpx.Client``. The manifest is
    rewritten (atomically, sorted) after each success, so a killed run keeps what it finished.
    Every job runs; failures are raised together as one :class:`DownloadError` at the end.
    ``log`` is called from worker threads.
    """
    policy = policy or DownloadPolicy()
    root = Path(os.path.abspath(root))
    rel_paths = _relative_paths(jobs, root)
    root.mkdir(parents=True, exist_ok=True)
    for folder in {root, *(job.dest.parent for job in jobs)}:
        remove_stale_temporaries(folder)  # .tmp-* sidecar/manifest writes of a killed run
    manifest = _Manifest(root)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout, read=policy.read_timeout,
        write=policy.read_timeout, pool=policy.read_timeout,
    )
    limits = httpx.Limits(max_connections=policy.concurrency, max_keepalive_connections=policy.concurrency)
    with (
        httpx.Client(timeout=timeout, limits=limits, follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="download") as pool,
    ):
        futures = [
            pool.submit(_run_job, _JobRun(job, rel, client, policy, log, manifest))
            for job, rel in zip(jobs, rel_paths, strict=True)
        ]
        outcomes = [future.result() for future in futures]
    records = [outcome for outcome in outcomes if isinstance(outcome, FileRecord)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, JobFailure)]
    if failures:
        raise DownloadError(failures, records)
    return records


def _relative_paths(jobs: Sequence[DownloadJob], root: Path) -> list[str]:
    """Posix paths of each dest under root; rejects dests outside root, duplicates, the manifest."""
    seen: dict[str, str] = {}
    rel_paths = []
    for job in jobs:
        dest = Path(os.path.abspath(job.dest))
        try:
            rel = dest.relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"{job.label}: dest {dest} is not inside the downloads root {root}") from None
        if rel in (".", MANIFEST_NAME):
            raise ValueError(f"{job.label}: dest {dest} would overwrite the downloads root or its manifest")
        if rel in seen:
            raise ValueError(f"{job.label} and {seen[rel]} both download to {rel}")
        seen[rel] = job.label
        rel_paths.append(rel)
    return rel_paths


def _run_job(run: _JobRun) -> FileRecord | JobFailure:
    """Run one job, turning every failure into a JobFailure so the other jobs keep going."""
    try:
        return run.run()
    except _JobFailed as exc:
        return exc.failure
    except OSError as exc:
        return run.failure(error=f"local I/O error: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported with its type; the other jobs must finish
        return run.failure(error=f"unexpected {type(exc).__name__}: {exc}")


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


class _Retryable(Transient):
    """Try the same URL again; ``restart`` also discards the partial first (and skips the wait)."""


class _Rejected(Exception):
    """This URL will not give the file (404, 403, bad scheme ...); move on to the next mirror."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ChecksumMismatch(Exception):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class _UrlGivenUp(Exception):
    def __init__(self, failure: UrlFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class _JobFailed(Exception):
    def __init__(self, failure: JobFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


@dataclass
class _Resume:
    """A partial that can be continued: how much we have, its hash so far, the If-Range value."""

    offset: int
    hasher: Any
    if_range: str
    sidecar: dict[str, Any]


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _is_strong_etag(etag: str | None) -> bool:
    return bool(etag) and not etag.startswith("W/")


def _file_url_path(url: str) -> Path:
    """Local path of a ``file://`` URL; only local hosts (empty or ``localhost``) are accepted."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _Rejected(f"file URL with a remote host {parts.netloc!r} is not supported")
    return Path(url2pathname(unquote(parts.path)))


class _JobRun:
    """Everything about fetching one job: its URLs in turn, with retries, resume and checks."""

    def __init__(self, job: DownloadJob, rel: str, client: httpx.Client, policy: DownloadPolicy,
                 log: Callable[[str], None], manifest: _Manifest) -> None:
        self.job = job
        self.rel = rel
        self.client = client
        self.policy = policy
        self.log = log
        self.manifest = manifest
        self.prior = manifest.get(rel)
        self.part = job.dest.with_name(job.dest.name + PART_SUFFIX)
        self.sidecar = job.dest.with_name(job.dest.name + SIDECAR_SUFFIX)
        self.bytes_transferred = 0
        self.started = time.monotonic()
        # (size, hasher) for the bytes now in .part, kept across attempts so a resume within this
        # run never re-reads the partial.
        self._hashed: tuple[int, Any] | None = None

    # ---------------------------------------------------------------- job and URL level
    def run(self) -> FileRecord:
        self.job.dest.parent.mkdir(parents=True, exist_ok=True)
        failures: list[UrlFailure] = []
        for url in self._url_order():
            try:
                record = self._from_url(url)
            except _UrlGivenUp as exc:
                failures.append(exc.failure)
                self.log(f"{self.job.label}: giving up {exc.failure.describe()}")
                continue
            self.manifest.put(self.rel, record.manifest_entry())
            return record
        self._drop_unresumable_partial()
        raise _JobFailed(self.failure(url_failures=tuple(failures)))

    def failure(self, url_failures: tuple[UrlFailure, ...] = (), error: str | None = None) -> JobFailure:
        return JobFailure(self.job.source, self.job.role, self.rel, url_failures, error)

    def _url_order(self) -> list[str]:
        """Mirrors in order, except that the URL that served the local copy is asked first.

        Its validators only mean something to that server, so asking it first is what lets an
        unchanged file come back as 304 instead of being fetched again from another mirror.
        """
        urls = list(self.job.urls)
        prior_url = self.prior.get("url") if self.prior else None
        if prior_url in urls and self._local_copy_record() is not None:
            urls.remove(prior_url)
            urls.insert(0, prior_url)
        return urls

    def _from_url(self, url: str) -> FileRecord:
        """Attempt one URL until success, a permanent failure or ``max_attempts`` (retry.py's loop)."""
        attempts = 0
        checksum_retried = False

        def attempt() -> FileRecord:
            nonlocal attempts, checksum_retried
            attempts += 1
            try:
                return self._attempt(url)
            except _Retryable as exc:
                if exc.restart:
                    self._discard_partial()
                raise
            except _ChecksumMismatch as exc:
                # A bad checksum may be a corrupt transfer: one fresh download, at once, then give up.
                self._discard_partial()
                if checksum_retried:
                    raise _Rejected(f"{exc} (also after a fresh re-download)") from None
                checksum_retried = True
                self.log(f"{self.job.label}: {exc} from {url}; downloading once more from scratch")
                return attempt()

        def on_retry(failure: Transient, attempt_number: int, wait: float) -> None:
            self.log(f"{self.job.label}: {failure.reason} from {url} (attempt {attempts}/"
                     f"{self.policy.max_attempts}); retrying in {wait:.2f} s")

        try:
            return call_with_retries(attempt, max_attempts=self.policy.max_attempts,
                                     delay=self.policy.backoff_delay, on_retry=on_retry)
        except _Rejected as exc:
            raise _UrlGivenUp(UrlFailure(url, exc.reason, attempts)) from None
        except RetriesExhausted as exc:
            raise _UrlGivenUp(UrlFailure(url, exc.last.reason, attempts)) from None

    def _attempt(self, url: str) -> FileRecord:
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch_http(url)
        if scheme == "file":
            return self._copy_local(url)
        raise _Rejected(f"unsupported URL scheme {scheme!r} (http, https and file are)")

    # ---------------------------------------------------------------- HTTP
    def _fetch_http(self, url: str) -> FileRecord:
        """One HTTP attempt: resume, conditional GET, HEAD check or plain GET, as the state allows."""
        headers = {"Accept-Encoding": "identity"}  # Content-Length must count the bytes we store
        try:
            resume = self._resume_point(url)
            prior = None if resume else self._local_copy_record()
            if resume:
                headers["Range"] = f"bytes={resume.offset}-"
                headers["If-Range"] = resume.if_range
            elif prior:
                headers.update(self._conditional_headers(url, prior))
                unvalidated = not (prior.get("etag") or prior.get("last_modified"))
                if unvalidated and prior.get("url") == url and self._head_says_unchanged(url, prior):
                    return self._not_modified(url, prior)
            conditional = prior if "If-None-Match" in headers or "If-Modified-Since" in headers else None
            with self.client.stream("GET", url, headers=headers) as response:
                return self._take_response(url, response, resume, conditional)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retryable(describe_exception(exc)) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _Rejected(describe_exception(exc)) from None

    @staticmethod
    def _conditional_headers(url: str, prior: dict[str, Any]) -> dict[str, str]:
        """Validators of the local copy that ``url`` can judge.

        Validators are scoped to the URL that issued them, but a strong ETag is as good as a content
        fingerprint in practice (S3: an MD5; this project's mirror: size + mtime_ns), so it is also
        offered to other URLs: the demo mirror gets a new port on every run, and a moved file should
        not cost a download. A date is only offered to the URL that issued it, as two servers'
        clocks and copy times say nothing about each other's content.
        """
        same_url = prior.get("url") == url
        headers = {}
        etag = prior.get("etag")
        if etag and (same_url or _is_strong_etag(etag)):
            headers["If-None-Match"] = etag
        if same_url and prior.get("last_modified"):
            headers["If-Modified-Since"] = prior["last_modified"]
        return headers

    def _check_status(self, response: httpx.Response) -> None:
        """Raise for statuses that carry no file: retry 429/5xx, reject the other errors."""
        status = response.status_code
        if status == 429 or 500 <= status <= 599:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise _Retryable(http_status(response), retry_after=wait)
        if status >= 300:
            raise _Rejected(http_status(response))

    def _head_says_unchanged(self, url: str, prior: dict[str, Any]) -> bool:
        """For a server without validators: unchanged when HEAD reports the recorded size."""
        response = self.client.head(url, headers={"Accept-Encoding": "identity"})
        if response.status_code in (405, 501):  # HEAD not supported: let the GET decide
            return False
        self._check_status(response)
        return _content_length(response) == prior.get("size")

    def _take_response(self, url: str, response: httpx.Response, resume: _Resume | None,
                       prior: dict[str, Any] | None) -> FileRecord:
        status = response.status_code
        if status == 304 and prior is not None:
            return self._not_modified(url, prior)
        if status == 416 and resume is not None:
            raise _Retryable(f"{http_status(response)} for bytes={resume.offset}- (the partial is no "
                             "prefix of the remote file); starting again from zero", restart=True)
        self._check_status(response)
        if status not in (200, 206) or (status == 206 and resume is None):
            raise _Rejected(f"unexpected {http_status(response)} to a {'range ' if resume else ''}GET")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _Rejected(f"server sent Content-Encoding {encoding!r} despite Accept-Encoding: identity")
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        if status == 206:
            assert resume is not None
            total = self._checked_range_total(response, resume)
            etag = etag or resume.sidecar.get("etag")
            last_modified = last_modified or resume.sidecar.get("last_modified")
            offset, hasher, mode = resume.offset, resume.hasher, "ab"
        else:
            if resume is not None:
                self.log(f"{self.job.label}: {url} sent the whole file instead of a range (range ignored "
                         "or file changed); starting again from zero")
            total = _content_length(response)
            self._start_sidecar(url, etag, last_modified, total)
            offset, hasher, mode = 0, hashlib.sha256(), "wb"
        offset = self._receive(response.iter_raw(), mode, offset, hasher, total)
        if total is not None and offset < total:
            raise _Retryable(f"incomplete body: {offset} of {total} bytes")
        if total is not None and offset > total:
            raise _Retryable(f"body longer than announced: {offset} of {total} bytes", restart=True)
        outcome: FileStatus = "resumed" if status == 206 else "downloaded"
        return self._finish(url, outcome, offset, hasher, etag, last_modified)

    def _checked_range_total(self, response: httpx.Response, resume: _Resume) -> int | None:
        """Total size from a 206's Content-Range, after checking it continues our partial."""
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE_RE.match(header.strip())
        if match is None or int(match.group(1)) != resume.offset:
            raise _Retryable(f"206 with Content-Range {header!r} does not continue at byte {resume.offset}",
                             restart=True)
        total = int(match.group(3)) if match.group(3) != "*" else None
        known = resume.sidecar.get("total")
        if total is not None and known is not None and total != known:
            raise _Retryable(f"remote size changed from {known} to {total} bytes", restart=True)
        return total if total is not None else known

    def _resume_point(self, url: str) -> _Resume | None:
        """The partial to continue from ``url``, or None (and any unusable partial removed)."""
        sidecar = self._read_sidecar()
        if not self.part.exists() or sidecar is None or sidecar.get("url") != url:
            self._discard_partial()
            return None
        etag, last_modified = sidecar.get("etag"), sidecar.get("last_modified")
        validator = etag if _is_strong_etag(etag) else last_modified
        size = self.part.stat().st_size
        total = sidecar.get("total")
        # A partial as long as the file may be complete but unverified; re-fetching is simplest.
        if not validator or size == 0 or (total is not None and size >= total):
            self._discard_partial()
            return None
        hasher = self._hashed[1] if self._hashed is not None and self._hashed[0] == size else self._hash_partial()
        return _Resume(size, hasher, validator, sidecar)

    def _hash_partial(self) -> Any:
        """Hash a partial inherited from an earlier run, once, before continuing it."""
        hasher = hashlib.sha256()
        with self.part.open("rb") as handle:
            while chunk := handle.read(self.policy.chunk_bytes):
                hasher.update(chunk)
        return hasher

    def _not_modified(self, url: str, prior: dict[str, Any]) -> FileRecord:
        record = FileRecord(
            source=self.job.source, role=self.job.role, url=url, path=self.rel,
            size=int(prior["size"]), sha256=str(prior["sha256"]), etag=prior.get("etag"),
            last_modified=prior.get("last_modified"), status="not_modified",
            bytes_transferred=self.bytes_transferred, seconds=self._elapsed(),
        )
        self.log(f"{self.job.label}: {self.rel} not modified at {url}")
        return record

    def _local_copy_record(self) -> dict[str, Any] | None:
        """The manifest record if it still describes the file at dest (by size), else None."""
        prior = self.prior
        if not prior or not prior.get("sha256"):
            return None
        if self.job.sha256 and prior.get("sha256") != self.job.sha256:
            return None  # the catalog expects other content than we have
        try:
            if not self.job.dest.is_file() or self.job.dest.stat().st_size != prior.get("size"):
                return None
        except OSError:
            return None
        return prior

    # ---------------------------------------------------------------- file://
    def _copy_local(self, url: str) -> FileRecord:
        """Copy a ``file://`` source with the same checks as a download (no resume: it is local)."""
        source = _file_url_path(url)
        try:
            stat = source.stat()
        except OSError as exc:
            raise _Rejected(f"cannot read {source}: {exc.strerror or exc}") from None
        if not source.is_file():
            raise _Rejected(f"{source} is not a regular file")
        etag = make_etag(stat.st_size, stat.st_mtime_ns)
        last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        prior = self._local_copy_record()
        if prior is not None and prior.get("etag") == etag:
            return self._not_modified(url, prior)
        self._discard_partial()
        hasher = hashlib.sha256()
        try:
            handle = source.open("rb")
        except OSError as exc:
            raise _Rejected(f"cannot open {source}: {exc.strerror or exc}") from None
        with handle:
            copied = self._receive(self._read_local(source, handle), "wb", 0, hasher, stat.st_size)
        if copied != stat.st_size:
            raise _Retryable(f"{source} changed size during the copy ({stat.st_size} -> {copied} bytes)",
                             restart=True)
        return self._finish(url, "downloaded", copied, hasher, etag, last_modified)

    def _read_local(self, source: Path, handle: Any) -> Iterator[bytes]:
        """Chunks of a local source; a read error is the source's fault (retry), not the disk's."""
        while True:
            try:
                chunk = handle.read(self.policy.chunk_bytes)
            except OSError as exc:
                raise _Retryable(f"reading {source} failed: {exc}", restart=True) from None
            if not chunk:
                return
            yield chunk

    # ---------------------------------------------------------------- writing
    def _receive(self, chunks: Any, mode: str, offset: int, hasher: Any, total: int | None) -> int:
        """Append ``chunks`` to the partial while hashing and logging progress; return its size."""
        started = last_log = time.monotonic()
        received = 0
        with self.part.open(mode, buffering=self.policy.chunk_bytes) as out:
            try:
                for chunk in chunks:
                    out.write(chunk)
                    hasher.update(chunk)
                    offset += len(chunk)
                    received += len(chunk)
                    self.bytes_transferred += len(chunk)
                    now = time.monotonic()
                    if now - last_log >= self.policy.progress_interval_s:
                        last_log = now
                        self._log_progress(offset, total, received, now - started)
                out.flush()
                os.fsync(out.fileno())
            finally:
                self._hashed = (offset, hasher)
        return offset

    def _log_progress(self, have: int, total: int | None, received: int, seconds: float) -> None:
        rate = received / _MB / seconds if seconds > 0 else 0.0
        if total:
            amount = f"{100.0 * have / total:.1f}% ({have / _MB:.1f} of {total / _MB:.1f} MB)"
        else:
            amount = f"{have / _MB:.1f} MB"
        self.log(f"{self.job.label}: {self.rel} {amount} at {rate:.2f} MB/s")

    def _finish(self, url: str, status: FileStatus, size: int, hasher: Any, etag: str | None,
                last_modified: str | None) -> FileRecord:
        """Check the sha256, then move the partial into place and drop its sidecar."""
        digest = hasher.hexdigest()
        if self.job.sha256 and digest != self.job.sha256:
            raise _ChecksumMismatch(self.job.sha256, digest)
        os.replace(self.part, self.job.dest)
        self.sidecar.unlink(missing_ok=True)
        self._hashed = None
        seconds = self._elapsed()
        rate = self.bytes_transferred / _MB / seconds if seconds > 0 else 0.0
        self.log(f"{self.job.label}: {self.rel} {status} from {url} ({size / _MB:.1f} MB, "
                 f"{self.bytes_transferred / _MB:.1f} MB transferred in {seconds:.1f} s, {rate:.2f} MB/s)")
        return FileRecord(
            source=self.job.source, role=self.job.role, url=url, path=self.rel, size=size,
            sha256=digest, etag=etag, last_modified=last_modified, status=status,
            bytes_transferred=self.bytes_transferred, seconds=seconds,
        )

    def _elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    # ---------------------------------------------------------------- partial + sidecar
    def _start_sidecar(self, url: str, etag: str | None, last_modified: str | None,
                       total: int | None) -> None:
        """Record what the partial about to be written is a prefix of; no validator, no sidecar."""
        if _is_strong_etag(etag) or last_modified:
            atomic_write_json(self.sidecar, {
                "url": url, "etag": etag, "last_modified": last_modified, "total": total,
            })
        else:
            self.sidecar.unlink(missing_ok=True)

    def _read_sidecar(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _discard_partial(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)
        self._hashed = None

    def _drop_unresumable_partial(self) -> None:
        """After a final failure keep a partial only if a later run can resume it."""
        if self.part.exists() and self._read_sidecar() is None:
            self._discard_partial()
