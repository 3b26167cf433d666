"""A loopback mirror that misbehaves on purpose, so download tests meet real faults on real sockets.

Faults are configured per path (relative to the served folder, e.g. ``"a.bin"``) with
:meth:`FaultServer.add_fault`. Faults with ``times`` apply to the first ``times`` matching requests
and then stop, which is how a test says "503, then success". Every request is recorded
(:class:`RequestRecord`: method, headers, status, body bytes handed to the socket, arrival time) so a
test can assert what went over the wire, e.g. that a 304 came back and no body was sent again.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from isic_assets.core.sources.http_mirror import MirrorRequestHandler, MirrorServer


@dataclass
class DropConnection:
    """Send headers and the first ``after_bytes`` of the body, then hang up (first ``times`` GETs)."""

    after_bytes: int
    times: int = 1


@dataclass
class ErrorStatus:
    """Answer ``status`` (with ``Retry-After`` if given) instead of the file, ``times`` times."""

    status: int = 503
    times: int = 1
    retry_after: str | None = None


@dataclass
class IgnoreRange:
    """Always answer 200 with the whole body, like a server without range support."""


@dataclass
class WrongContentLength:
    """Declare ``delta`` bytes more (or, negative, fewer) than the body really has; closes after."""

    delta: int
    times: int = 1


@dataclass
class NoValidators:
    """Send neither ``ETag`` nor ``Last-Modified`` (some CDNs and dynamic endpoints do not)."""


@dataclass
class Stall:
    """Wait ``seconds`` without answering, then hang up (first ``times`` requests)."""

    seconds: float
    times: int = 1


@dataclass
class Delay:
    """Wait ``seconds`` before answering normally (every request); measures overlap."""

    seconds: float


@dataclass
class Hold:
    """Wait until the test sets ``release`` (at most ``max_seconds``), then answer normally (every request).

    Unlike :class:`Delay` it does not guess how long another process takes to reach a point: the test
    releases the request once it has seen that point.
    """

    release: threading.Event
    max_seconds: float = 300.0


Fault = DropConnection | ErrorStatus | IgnoreRange | WrongContentLength | NoValidators | Stall | Delay | Hold


@dataclass
class RequestRecord:
    """One request as the server saw it; ``headers`` keys are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival
    status: int | None = None
    body_bytes: int = 0  # counted before each write, so it is final once the client has the body


class FaultServer(MirrorServer):
    """A :class:`MirrorServer` with per-path faults and a log of every request."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(root, host, port, handler_class=FaultyHandler)
        self._lock = threading.Lock()
        self._faults: dict[str, list[Fault]] = {}
        self._records: list[RequestRecord] = []
        self._delayed_now = 0
        self.peak_in_flight = 0  # most requests inside a Delay at the same moment

    def add_fault(self, path: str, fault: Fault) -> None:
        """Attach ``fault`` to ``path``; several faults on one path combine."""
        with self._lock:
            self._faults.setdefault(path.lstrip("/"), []).append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def records(self, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        """Requests seen so far, optionally only for one path and/or method, in arrival order."""
        with self._lock:
            return [
                record for record in self._records
                if (path is None or record.path == path.lstrip("/"))
                and (method is None or record.method == method)
            ]

    def count(self, path: str, method: str = "GET") -> int:
        return len(self.records(path, method))

    # ------------------------------------------------------------------ used by the handler
    def open_record(self, method: str, path: str, headers: dict[str, str]) -> RequestRecord:
        record = RequestRecord(method, path, headers, time.monotonic())
        with self._lock:
            self._records.append(record)
        return record

    def has_fault(self, path: str, kind: type) -> bool:
        with self._lock:
            return any(isinstance(fault, kind) for fault in self._faults.get(path, []))

    def take_fault(self, path: str, kind: type) -> Fault | None:
        """The first fault of ``kind`` on ``path`` still active, using up one of its ``times``."""
        with self._lock:
            for fault in self._faults.get(path, []):
                if not isinstance(fault, kind):
                    continue
                times = getattr(fault, "times", None)
                if times is None:
                    return fault
                if times > 0:
                    fault.times = times - 1  # type: ignore[union-attr]
                    return fault
            return None

    def delay(self, seconds: float) -> None:
        with self._lock:
            self._delayed_now += 1
            self.peak_in_flight = max(self.peak_in_flight, self._delayed_now)
        time.sleep(seconds)
        with self._lock:
            self._delayed_now -= 1


class FaultyHandler(MirrorRequestHandler):
    """Applies the faults of :class:`FaultServer` through the mirror handler's hooks."""

    _record: RequestRecord | None = None
    _drop: DropConnection | None = None
    _wrong_length: WrongContentLength | None = None

    @property
    def faults(self) -> FaultServer:
        return self.server.mirror  # type: ignore[return-value]

    def handle_one_request(self) -> None:
        # One handler serves every request of a keep-alive connection: reset per-request state.
        self._record, self._drop, self._wrong_length = None, None, None
        super().handle_one_request()

    def before_serving(self, rel_path: str) -> bool:
        faults = self.faults
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._record = faults.open_record(self.command, rel_path, headers)
        delay = faults.take_fault(rel_path, Delay)
        if isinstance(delay, Delay):
            faults.delay(delay.seconds)
        hold = faults.take_fault(rel_path, Hold)
        if isinstance(hold, Hold):
            hold.release.wait(hold.max_seconds)
        stall = faults.take_fault(rel_path, Stall)
        if isinstance(stall, Stall):
            time.sleep(stall.seconds)
            self.close_connection = True
            return True
        error = faults.take_fault(rel_path, ErrorStatus)
        if isinstance(error, ErrorStatus):
            extra = {"Retry-After": error.retry_after} if error.retry_after is not None else {}
            self.send_text(error.status, f"injected {error.status} for /{rel_path}", extra)
            return True
        if self.command == "GET":
            drop = faults.take_fault(rel_path, DropConnection)
            wrong = faults.take_fault(rel_path, WrongContentLength)
            self._drop = drop if isinstance(drop, DropConnection) else None
            self._wrong_length = wrong if isinstance(wrong, WrongContentLength) else None
        return False

    def honours_range(self, rel_path: str) -> bool:
        return not self.faults.has_fault(rel_path, IgnoreRange)

    def send_head(self, rel_path: str, status: int, headers: dict[str, str]) -> None:
        if self.faults.has_fault(rel_path, NoValidators):
            headers.pop("ETag", None)
            headers.pop("Last-Modified", None)
        if self._wrong_length is not None and status in (200, 206):
            headers["Content-Length"] = str(int(headers["Content-Length"]) + self._wrong_length.delta)
            headers["Connection"] = "close"  # the stream is out of step: never reuse it
            self.close_connection = True
        super().send_head(rel_path, status, headers)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._record is not None:
            self._record.status = code
        super().send_response(code, message)

    def send_body(self, rel_path: str, handle: BinaryIO, length: int) -> None:
        if self._drop is not None:
            self.copy_bytes(handle, min(length, self._drop.after_bytes))
            self.wfile.flush()
            self.close_connection = True  # the client sees the body end early
            return
        super().send_body(rel_path, handle, length)

    def write_chunk(self, data: bytes) -> None:
        if self._record is not None:
            self._record.body_bytes += len(data)
        super().write_chunk(data)


def write_random_file(path: Path, size: int, seed: int = 0) -> bytes:
    """Write ``size`` deterministic pseudo-random bytes to ``path`` (parents created); return them."""
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def rewrite_with_new_version(path: Path, data: bytes) -> None:
    """Replace ``path`` so its ETag surely changes, even within the filesystem's mtime granularity."""
    path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


@dataclass
class LogLines:
    """A thread-safe ``log`` callable for ``download_all`` that keeps every line."""

    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        self.lines.append(line)  # list.append is atomic under the GIL
