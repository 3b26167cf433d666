"""The one retry loop the downloader and the ISIC API client share: waits, limits and Retry-After."""

from __future__ import annotations

import pytest

from isic_assets.core.sources.retry import RetriesExhausted, Transient, backoff_delay, call_with_retries


class Script:
    """An attempt that fails with the given outcomes in order, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def run(script: Script, max_attempts: int = 4, cap: float = 5.0) -> tuple[str, list[float], list[str]]:
    waits: list[float] = []
    logged: list[str] = []
    result = call_with_retries(
        script,
        max_attempts=max_attempts,
        delay=lambda attempt, retry_after: backoff_delay(attempt, 0.5, cap, retry_after),
        on_retry=lambda failure, attempt, wait: logged.append(f"{failure.reason} #{attempt} {wait}"),
        sleep=waits.append,
    )
    return result, waits, logged


def test_transient_failures_are_retried_with_jitter_under_the_exponential_ceiling():
    result, waits, logged = run(Script(Transient("HTTP 503"), Transient("ReadTimeout"), Transient("HTTP 502")))
    assert result == "done"
    assert len(waits) == 3 and logged[0].startswith("HTTP 503 #1")
    for attempt, wait in enumerate(waits, start=1):
        assert 0.0 <= wait <= 0.5 * 2 ** (attempt - 1)


def test_retry_after_is_honoured_and_capped():
    _, waits, _ = run(Script(Transient("HTTP 429", retry_after=2.0), Transient("HTTP 503", retry_after=3600.0)))
    assert waits == [2.0, 5.0]


def test_a_restart_is_retried_at_once():
    _, waits, _ = run(Script(Transient("server ignored Range", restart=True)))
    assert waits == [0.0]


def test_giving_up_names_the_last_failure_and_the_attempt_count():
    script = Script(*(Transient(f"HTTP 50{k}") for k in range(10)))
    with pytest.raises(RetriesExhausted) as caught:
        run(script, max_attempts=3)
    assert caught.value.attempts == 3 == script.calls
    assert caught.value.last.reason == "HTTP 502"
    assert "gave up after 3 attempts" in str(caught.value)


def test_other_errors_are_not_retried():
    script = Script(PermissionError("HTTP 403"))
    with pytest.raises(PermissionError):
        run(script)
    assert script.calls == 1


def test_full_jitter_spreads_the_waits():
    waits = {backoff_delay(4, 1.0, 60.0) for _ in range(50)}
    assert len(waits) > 40 and max(waits) <= 8.0
