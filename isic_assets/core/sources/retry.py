"""The one retry loop of every network client here: exponential backoff, full jitter, Retry-After.

The zip downloader (download.py) and the ISIC Archive client (the isic_api package) both retry the same
transient failures (connection errors, timeouts, incomplete bodies, 429 and 5xx) on the same
schedule: after failed attempt ``n`` wait a uniform random time in ``[0, min(cap, initial * 2**(n-1))]``
("full jitter", which spreads concurrent clients instead of having them retry in lock-step), or what
the server's ``Retry-After`` asks, capped at the same ``cap`` so one server cannot stall a run.
The remote-file probes of the sensor (fingerprints.py) do not retry on purpose: the sensor polls
again at its next tick.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import httpx

_T = TypeVar("_T")
_jitter = random.Random()


class Transient(Exception):
    """Worth another attempt: 429, 5xx, a timeout, a dropped connection, an incomplete body.

    ``retry_after`` is what the server asked for (seconds); ``restart`` means the attempt's partial
    result was thrown away and the next attempt starts from scratch at once, without waiting.
    """

    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.restart = restart


class RetriesExhausted(Exception):
    """Every attempt failed transiently; ``last`` is the final failure, ``attempts`` the count."""

    def __init__(self, last: Transient, attempts: int) -> None:
        super().__init__(f"{last.reason} (gave up after {attempts} attempts)")
        self.last = last
        self.attempts = attempts


def backoff_delay(attempt: int, initial: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): Retry-After if given, else full jitter.

    Both forms are capped at ``cap``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, initial * 2.0 ** min(attempt - 1, 60))
    return _jitter.uniform(0.0, ceiling)


def call_with_retries(
    attempt: Callable[[], _T],
    *,
    max_attempts: int,
    delay: Callable[[int, float | None], float],
    on_retry: Callable[[Transient, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """Call ``attempt`` until it returns, raises something other than :class:`Transient`, or
    ``max_attempts`` calls have failed transiently (then :class:`RetriesExhausted`).

    ``delay(attempt_number, retry_after)`` gives the wait (usually :func:`backoff_delay` with the
    caller's policy); a ``restart`` failure is retried at once. ``on_retry(failure, attempt_number,
    wait)`` is called before each wait, for the log.
    """
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except Transient as failure:
            if attempts >= max_attempts:
                raise RetriesExhausted(failure, attempts) from None
            wait = 0.0 if failure.restart else delay(attempts, failure.retry_after)
            if on_retry is not None:
                on_retry(failure, attempts, wait)
            sleep(wait)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # RFC 9110 says an integer; a decimal is read generously
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message`` (or just the type name), for logs and error reports."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def http_status(response: httpx.Response) -> str:
    """``HTTP 503 Service Unavailable``, for logs and error reports."""
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
