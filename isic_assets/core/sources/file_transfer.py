"""One file's download: resume, conditional requests, HEAD checks, ``file://`` copies, checksums
and the atomic rename; the decisions are described in :mod:`.download`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from ..atomic import atomic_write_json
from ..operation.disk_space import ensure_free_space, format_bytes
from .download_types import (
    _CONTENT_RANGE_RE,
    _MB,
    PART_SUFFIX,
    SIDECAR_SUFFIX,
    DownloadJob,
    DownloadPolicy,
    FileRecord,
    FileStatus,
    JobFailure,
    UrlFailure,
    _Manifest,
)
from .http_mirror import make_etag
from .retry import (
    RetriesExhausted,
    Transient,
    call_with_retries,
    describe_exception,
    http_status,
    parse_retry_after,
)


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


STAGE = "raw_zips"


class SpaceBook:
    """Bytes promised to the downloads in progress, so concurrent files do not each count the same
    free space: a file starts writing only when the free space minus what the others still need
    holds its announced size (Content-Length) plus the margin."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._reserved: dict[int, int] = {}

    def reserve(self, key: int, label: str, needed: int) -> None:
        with self._lock:
            others = sum(v for k, v in self._reserved.items() if k != key)
            busy = f" and the other downloads in progress {format_bytes(others)}" if others else ""
            ensure_free_space(STAGE, self.root, needed + others,
                              detail=f"{label} announces {format_bytes(needed)} still to fetch{busy}; ")
            self._reserved[key] = needed

    def release(self, key: int) -> None:
        with self._lock:
            self._reserved.pop(key, None)


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
        self.space: SpaceBook | None = None

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
        self._reserve_space(total, offset)
        try:
            offset = self._receive(response.iter_raw(), mode, offset, hasher, total)
        finally:
            self._release_space()
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
        self._reserve_space(stat.st_size, 0)
        with handle:
            try:
                copied = self._receive(self._read_local(source, handle), "wb", 0, hasher, stat.st_size)
            finally:
                self._release_space()
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
    def _reserve_space(self, total: int | None, offset: int) -> None:
        """Refuse before writing a byte when the announced size cannot fit (unknown size: no check)."""
        if self.space is not None and total is not None:
            self.space.reserve(id(self), f"{self.job.label} ({self.rel})", max(0, total - offset))

    def _release_space(self) -> None:
        if self.space is not None:
            self.space.release(id(self))

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
