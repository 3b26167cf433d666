"""A threaded loopback HTTP/1.1 server for one folder: the demo mirror and the downloader's tests.

``python -m http.server`` would serve files, but it has no byte ranges, no ETag and no
conditional requests, which are exactly what the downloader relies on (resume with ``Range`` +
``If-Range``, skip unchanged files with ``If-None-Match``). This module adds them, streams files in
chunks so multi-GB zips never sit in memory, and stays silent per request.

Behaviour, following RFC 9110:

* ``GET`` and ``HEAD``; ``HEAD`` sends the same headers as ``GET`` and no body.
* one byte range per request (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) -> 206 + ``Content-Range``;
  a range starting past the end -> 416 with ``Content-Range: bytes */size``; several ranges or a
  malformed header are ignored (a full 200), which RFC 9110 14.2 allows.
* a strong ``ETag`` built from size and ``st_mtime_ns`` plus ``Last-Modified``; ``If-None-Match``
  (or, when absent, ``If-Modified-Since``) -> 304; ``If-Range`` turns a stale range into a full 200.
* only regular files inside ``root``: ``..``, empty segments and back-slashes -> 400, a symlink
  that leads outside ``root`` -> 403, anything else missing (directories too) -> 404.

Fault injection: :class:`MirrorRequestHandler` exposes small hooks (``before_serving``,
``honours_range``, ``send_head``, ``send_body``, ``write_chunk``) that a subclass overrides; pass the
subclass as ``handler_class`` (see ``isic_assets_tests/fault_server.py``).
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import unquote, urlsplit

STREAM_CHUNK_BYTES = 256 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Errors a client causes by going away mid-response; they are normal, not worth a traceback.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class UnsatisfiableRange(Exception):
    """The requested range starts beyond the end of the file (answered with 416)."""


def make_etag(size: int, mtime_ns: int) -> str:
    """Strong entity tag of a file version: changes whenever its size or modification time does.

    Hashing content would be exact but would read a GB zip on every request; size + nanosecond
    mtime is what nginx does (with seconds) and is enough for a mirror rewritten by replacement.
    """
    return f'"{size:x}-{mtime_ns:x}"'


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive ``(first, last)`` bytes asked for, or None to serve the whole file.

    None covers no header, several ranges and malformed values (RFC 9110 lets a server ignore
    them). Raises :class:`UnsatisfiableRange` when the range lies entirely past the end.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.replace(" ", ""))
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix range: the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise UnsatisfiableRange(header)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise UnsatisfiableRange(header)
    return first, min(int(last_text), size - 1) if last_text else size - 1


def _http_date_to_seconds(value: str | None) -> int | None:
    """Whole seconds since the epoch for an HTTP-date, or None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 9110 dates are always GMT
        return None
    return int(parsed.timestamp())


def _etag_matches_weakly(header: str, etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison (RFC 9110 8.8.3.2): ``W/`` prefixes are ignored."""
    wanted = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in wanted or etag.removeprefix("W/") in wanted


class _MirrorHTTPServer(ThreadingHTTPServer):
    """The socket server; carries the served root and the owning :class:`MirrorServer`."""

    daemon_threads = True  # keep-alive client connections must not block stop()

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], root: Path,
                 mirror: MirrorServer, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.root = root
        self.mirror = mirror
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up mid-response; print real bugs as usual."""
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class MirrorRequestHandler(BaseHTTPRequestHandler):
    """Serves the files under ``server.root``; every step a test may want to break is a hook."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a downloader reuses its connections
    server_version = "isic-mirror/1"
    timeout = 120  # an idle keep-alive connection frees its thread after this many seconds
    server: _MirrorHTTPServer

    # ----------------------------------------------------------------- hooks for subclasses
    def before_serving(self, rel_path: str) -> bool:
        """Hook called for every well-formed GET/HEAD; return True if it already sent a response."""
        return False

    def honours_range(self, rel_path: str) -> bool:
        """Hook: return False to ignore ``Range`` and always send the full body (a naive server)."""
        return True

    def send_head(self, rel_path: str, status: int, headers: dict[str, str]) -> None:
        """Hook: send the status line and ``headers``; override to lie about them."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def send_body(self, rel_path: str, handle: BinaryIO, length: int) -> None:
        """Hook: stream ``length`` bytes of ``handle`` (already positioned); override to cut it short."""
        self.copy_bytes(handle, length)

    def write_chunk(self, data: bytes) -> None:
        """Hook: write one piece of a body to the socket; override to count or throttle."""
        self.wfile.write(data)

    # ----------------------------------------------------------------- request handling
    def do_GET(self) -> None:  # name fixed by BaseHTTPRequestHandler
        self.serve_file(with_body=True)

    def do_HEAD(self) -> None:  # name fixed by BaseHTTPRequestHandler
        self.serve_file(with_body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request stderr line (tests and the demo run thousands of requests)."""

    def copy_bytes(self, handle: BinaryIO, length: int) -> int:
        """Write up to ``length`` bytes from ``handle`` in chunks; return how many were written.

        If the file shrank underneath us the connection is closed, so the client sees an
        incomplete body instead of a short one that matches nothing.
        """
        written = 0
        while written < length:
            data = handle.read(min(STREAM_CHUNK_BYTES, length - written))
            if not data:
                self.close_connection = True
                break
            self.write_chunk(data)
            written += len(data)
        return written

    def send_text(self, status: int, text: str, extra_headers: dict[str, str] | None = None) -> None:
        """Send a short plain-text response (errors); the connection stays usable."""
        body = (text + "\n").encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        headers.update(extra_headers or {})
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def relative_path(self) -> str | None:
        """The request path as a safe ``a/b/c`` relative path, or None (400 already sent)."""
        # Origin-form ("/a/b?q") is split by hand: urlsplit would read "//etc/passwd" as a host.
        raw = self.path.split("?", 1)[0].split("#", 1)[0] if self.path.startswith("/") else urlsplit(
            self.path).path
        decoded = unquote(raw)
        if decoded == "/":
            return ""
        segments = decoded.split("/")[1:]
        # An empty segment ("//etc") would make the rest absolute when joined; ".." climbs out.
        if (
            not decoded.startswith("/")
            or "\\" in decoded
            or "\x00" in decoded
            or any(seg in ("", ".", "..") for seg in segments)
        ):
            self.send_text(HTTPStatus.BAD_REQUEST, f"bad path {raw!r}: only plain relative file paths")
            return None
        return "/".join(segments)

    def resolve_file(self, rel_path: str) -> Path | None:
        """The regular file under root for ``rel_path``, or None after sending 403/404."""
        root = self.server.root
        candidate = root.joinpath(*rel_path.split("/")) if rel_path else root
        real = candidate.resolve()
        if not real.is_relative_to(root):
            self.send_text(HTTPStatus.FORBIDDEN, f"forbidden: /{rel_path} leads outside the mirror")
            return None
        if not real.is_file():
            self.send_text(HTTPStatus.NOT_FOUND, f"not found: /{rel_path}")
            return None
        return real

    def serve_file(self, with_body: bool) -> None:
        """Answer one GET/HEAD: conditionals first, then range, then headers and body."""
        rel_path = self.relative_path()
        if rel_path is None or self.before_serving(rel_path):
            return
        path = self.resolve_file(rel_path)
        if path is None:
            return
        try:
            handle = path.open("rb")
        except OSError as exc:
            self.send_text(HTTPStatus.NOT_FOUND, f"cannot open /{rel_path}: {exc.strerror}")
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            etag = make_etag(size, stat.st_mtime_ns)
            validators = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            }
            if self._not_modified(etag, int(stat.st_mtime)):
                self.send_head(rel_path, HTTPStatus.NOT_MODIFIED, validators)
                return
            try:
                byte_range = self._wanted_range(rel_path, etag, int(stat.st_mtime), size)
            except UnsatisfiableRange:
                headers = {"Content-Range": f"bytes */{size}", "Content-Length": "0", **validators}
                self.send_head(rel_path, HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, headers)
                return
            headers = {
                "Content-Type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                "Accept-Ranges": "bytes",
                **validators,
            }
            if byte_range is None:
                first, length, status = 0, size, HTTPStatus.OK
            else:
                first, last = byte_range
                length, status = last - first + 1, HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            headers["Content-Length"] = str(length)
            self.send_head(rel_path, status, headers)
            if with_body and length:
                handle.seek(first)
                self.send_body(rel_path, handle, length)

    def _not_modified(self, etag: str, mtime_s: int) -> bool:
        """True when the client's cached copy is current (If-None-Match wins over If-Modified-Since)."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return _etag_matches_weakly(if_none_match, etag)
        since = _http_date_to_seconds(self.headers.get("If-Modified-Since"))
        return since is not None and mtime_s <= since

    def _wanted_range(self, rel_path: str, etag: str, mtime_s: int, size: int) -> tuple[int, int] | None:
        """The range to send, or None for the full body (no Range, ignored, or If-Range stale)."""
        if not self.honours_range(rel_path):
            return None
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None:
            if_range = if_range.strip()
            if if_range.startswith(('"', "W/")):
                current = if_range == etag  # strong comparison: a weak tag never matches
            else:
                current = _http_date_to_seconds(if_range) == mtime_s
            if not current:
                return None
        return parse_byte_range(header, size)


class MirrorServer:
    """A loopback HTTP server for one folder, run on a background thread.

    Construction binds the socket (so :attr:`url` is known at once, with an ephemeral port by
    default); :meth:`start` begins answering; :meth:`stop` shuts it down. As a context manager it
    starts on entry (if not started) and stops on exit.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0,
                 handler_class: type[MirrorRequestHandler] = MirrorRequestHandler) -> None:
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"mirror root {root} is not an existing directory")
        self.root = root.resolve()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._httpd = _MirrorHTTPServer((host, port), handler_class, self.root, self, family)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, rel_path: str) -> str:
        """URL of a file given by its path relative to root (``a/b.zip``)."""
        return f"{self.url}/{rel_path.lstrip('/')}"

    def start(self) -> Self:
        """Begin answering requests on a daemon thread; calling it twice is harmless."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"mirror-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the listening socket; calling it twice is harmless."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_folder(root: Path, host: str = "127.0.0.1", port: int = 0) -> MirrorServer:
    """Serve ``root`` over HTTP on ``host:port`` (an ephemeral port by default); already started.

    Use it as ``with serve_folder(folder) as server: ... server.url ...`` so it stops afterwards.
    """
    return MirrorServer(root, host, port).start()
