"""Cheap change fingerprints of remote (or local) source files, for the refresh sensor.

A sensor must decide within seconds whether any of a few GB-sized files changed, so it never reads
a body: it asks each URL for its validators (``ETag``, ``Last-Modified``, ``Content-Length``) with a
``HEAD`` request. Some servers refuse ``HEAD`` (405/501, and S3 pre-signed GET URLs answer 403): the
fallback is a ``GET`` for one byte (``Range: bytes=0-0``) whose headers carry the same validators and
whose ``Content-Range`` gives the total size. Both are conditional when a previous fingerprint is
known (``If-None-Match`` / ``If-Modified-Since``), so an unchanged file costs a 304 with no body.

``file://`` URLs (dropzone sources, local mirrors) are fingerprinted by ``stat``, with the same
size + mtime entity tag the loopback mirror and the downloader compute, so a local file and the same
file served over HTTP agree.

Every request has short, bounded timeouts and an optional overall deadline: a sensor evaluation must
finish well inside Dagster's sensor timeout (60 s by default) even when a server hangs.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from .http_mirror import make_etag

# Connect and read timeouts of one probe request, in seconds: a validator answer is a few hundred
# bytes, so a server that needs longer than this is treated as unreachable for this check.
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 5.0
# Shortest timeout worth attempting when a deadline is nearly used up.
_MIN_REQUEST_TIMEOUT_S = 0.2


class SourceUnreachable(Exception):
    """No URL of a file answered with usable validators; ``reason`` says what went wrong."""

    def __init__(self, url: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Fingerprint:
    """What a server says about one version of a file, without its bytes.

    Two fingerprints of the same URL denote the same version when all three validators are equal.
    A server that sends none of them can only be compared by size, which misses a same-size rewrite;
    that is the same trade-off the downloader makes (``core/sources/download.py``).
    """

    url: str
    etag: str | None
    last_modified: str | None
    content_length: int | None

    def same_version(self, other: Fingerprint | None) -> bool:
        """True when ``other`` describes the same version of the same URL."""
        return other is not None and self == other

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        size = data.get("content_length")
        return cls(url=str(data["url"]), etag=data.get("etag"), last_modified=data.get("last_modified"),
                   content_length=int(size) if size is not None else None)


def probe(url: str, client: httpx.Client | None = None, previous: Fingerprint | None = None,
          deadline: float | None = None) -> Fingerprint:
    """Fingerprint of the file at ``url`` now; raises :class:`SourceUnreachable`.

    ``previous`` (a fingerprint of the same URL) makes the request conditional: a 304 returns it
    unchanged. ``deadline`` is a ``time.monotonic()`` instant after which no request is started and
    that caps every request's timeouts.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return _probe_file(url)
    if scheme not in ("http", "https"):
        raise SourceUnreachable(url, f"unsupported URL scheme {scheme!r}")
    if client is None:
        with make_client() as own:
            return _probe_http(url, own, previous, deadline)
    return _probe_http(url, client, previous, deadline)


def probe_first(urls: Sequence[str], client: httpx.Client | None = None,
                previous: Fingerprint | None = None, deadline: float | None = None) -> Fingerprint:
    """Fingerprint from the first of a file's mirror URLs that answers, tried in catalog order.

    The previous fingerprint is only offered to the URL it came from: validators mean nothing across
    mirrors. Raises :class:`SourceUnreachable` naming every URL's error when none answers.
    """
    if not urls:
        raise SourceUnreachable("(no URL)", "the file has no URL")
    errors = []
    for url in urls:
        try:
            return probe(url, client, previous if previous and previous.url == url else None, deadline)
        except SourceUnreachable as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise SourceUnreachable(urls[0], "every mirror failed", message="; ".join(str(e) for e in errors))


def make_client(connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> httpx.Client:
    """An httpx client for probes: short timeouts, redirects followed, no retries.

    No retries on purpose: a sensor polls again at its next tick, and retrying here could take an
    evaluation past Dagster's sensor timeout.
    """
    timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s,
                            pool=connect_timeout_s)
    return httpx.Client(timeout=timeout, follow_redirects=True,
                         headers={"Accept-Encoding": "identity", "User-Agent": "isic-assets-sensor/1"})


def _probe_file(url: str) -> Fingerprint:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceUnreachable(url, f"file URL with a remote host {parts.netloc!r} is not supported")
    path = Path(url2pathname(unquote(parts.path)))
    try:
        stat = path.stat()
    except OSError as exc:
        raise SourceUnreachable(url, f"cannot stat {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise SourceUnreachable(url, f"{path} is not a regular file")
    return Fingerprint(url=url, etag=make_etag(stat.st_size, stat.st_mtime_ns),
                       last_modified=email.utils.formatdate(stat.st_mtime, usegmt=True),
                       content_length=stat.st_size)


def _probe_http(url: str, client: httpx.Client, previous: Fingerprint | None,
                deadline: float | None) -> Fingerprint:
    conditional = _conditional_headers(previous)
    response = _request(client, "HEAD", url, conditional, deadline)
    if response.status_code in (403, 405, 501):  # HEAD refused: ask for one byte instead
        response = _request(client, "GET", url, {**conditional, "Range": "bytes=0-0"}, deadline)
    return _fingerprint_from(url, response, previous)


def _conditional_headers(previous: Fingerprint | None) -> dict[str, str]:
    if previous is None:
        return {}
    if previous.etag:
        return {"If-None-Match": previous.etag}
    if previous.last_modified:
        return {"If-Modified-Since": previous.last_modified}
    return {}


def _request(client: httpx.Client, method: str, url: str, headers: dict[str, str],
             deadline: float | None) -> httpx.Response:
    """One request whose body is never read (a range GET's single byte is discarded unread)."""
    timeout = _timeout_within(client, deadline, url)
    try:
        with client.stream(method, url, headers=headers, timeout=timeout) as response:
            return response
    except httpx.HTTPError as exc:
        raise SourceUnreachable(url, f"{method} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from None


def _timeout_within(client: httpx.Client, deadline: float | None, url: str) -> httpx.Timeout:
    base = client.timeout
    if deadline is None:
        return base
    left = deadline - time.monotonic()
    if left < _MIN_REQUEST_TIMEOUT_S:
        raise SourceUnreachable(url, "not probed: the check ran out of its time budget")
    return httpx.Timeout(connect=min(base.connect or left, left), read=min(base.read or left, left),
                         write=min(base.write or left, left), pool=min(base.pool or left, left))


def _fingerprint_from(url: str, response: httpx.Response, previous: Fingerprint | None) -> Fingerprint:
    status = response.status_code
    if status == 304:
        if previous is None:  # a 304 to an unconditional request is a broken server
            raise SourceUnreachable(url, "HTTP 304 without a conditional request")
        return previous
    headers = response.headers
    if status in (206, 416):  # 416: an empty file cannot satisfy bytes=0-0; both carry the total
        size = _range_total(headers.get("Content-Range"))
    elif status == 200:
        size = _int_or_none(headers.get("Content-Length"))
    else:
        raise SourceUnreachable(url, f"HTTP {status} {response.reason_phrase}".rstrip())
    return Fingerprint(url=url, etag=headers.get("ETag"), last_modified=headers.get("Last-Modified"),
                       content_length=size)


def _range_total(value: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/TOTAL`` (or ``bytes */TOTAL``); None if unknown."""
    if not value or "/" not in value:
        return None
    return _int_or_none(value.rsplit("/", 1)[1])


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None
