"""The downloader against a real loopback server that misbehaves on purpose.

Every fault test checks the same end state: the file at dest is byte-identical to the source and no
``.part``, sidecar or ``.tmp-`` file is left behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from isic_assets.core.sources.download import (
    MANIFEST_NAME,
    DownloadError,
    DownloadJob,
    DownloadPolicy,
    FileRecord,
    download_all,
    read_manifest,
)
from isic_assets.core.sources.retry import parse_retry_after
from isic_assets_tests.fault_server import (
    Delay,
    DropConnection,
    ErrorStatus,
    FaultServer,
    IgnoreRange,
    LogLines,
    NoValidators,
    Stall,
    WrongContentLength,
    rewrite_with_new_version,
    write_random_file,
)

SIZE = 300_000
CUT = 100_000
FAST = DownloadPolicy(
    concurrency=3, connect_timeout=2.0, read_timeout=2.0, max_attempts=4,
    backoff_initial=0.01, backoff_max=0.05, progress_interval_s=10.0,
)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    write_random_file(folder / "a.bin", SIZE, seed=1)
    return folder


@pytest.fixture
def server(mirror: Path) -> Iterator[FaultServer]:
    with FaultServer(mirror) as running:
        yield running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "downloaded_zips"


def job_for(server: FaultServer, root: Path, name: str = "a.bin", *, sha256: str | None = None,
            urls: tuple[str, ...] | None = None) -> DownloadJob:
    return DownloadJob(
        source="demo", role="images", urls=urls or (server.url_for(name),),
        dest=root / "demo" / name, sha256=sha256,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Temporary, partial and sidecar files anywhere under root."""
    return sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*")
        if path.name.endswith((".part", ".part.json")) or path.name.startswith(".tmp-")
    )


def assert_identical_and_clean(root: Path, mirror: Path, name: str = "a.bin") -> None:
    assert (root / "demo" / name).read_bytes() == (mirror / name).read_bytes()
    assert leftovers(root) == []


# ------------------------------------------------------------------------------- plain paths
def test_download_writes_the_file_the_record_and_a_stable_manifest(server, mirror, root):
    """The manifest is what the next run trusts; it must say exactly what is on disk and where from."""
    [record] = download_all([job_for(server, root)], root, FAST)
    data = (mirror / "a.bin").read_bytes()
    served = server.records("a.bin", "GET")[0]
    assert record.status == "downloaded"
    assert (record.path, record.size, record.sha256) == ("demo/a.bin", SIZE, sha(data))
    assert record.url == server.url_for("a.bin")
    assert record.bytes_transferred == SIZE
    assert record.etag and record.etag.startswith('"') and record.last_modified
    assert_identical_and_clean(root, mirror)

    manifest_text = (root / MANIFEST_NAME).read_text()
    expected = {"demo/a.bin": {"url": record.url, "size": SIZE, "sha256": sha(data),
                               "etag": record.etag, "last_modified": record.last_modified}}
    assert json.loads(manifest_text) == expected == read_manifest(root)
    assert manifest_text == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    assert served.status == 200 and "range" not in served.headers


def test_an_unchanged_remote_gives_304_and_no_body(server, mirror, root):
    """Re-running the pipeline must not pull GBs again when nothing changed upstream."""
    download_all([job_for(server, root)], root, FAST)
    [record] = download_all([job_for(server, root)], root, FAST)
    conditional = server.records("a.bin", "GET")[1]
    assert record.status == "not_modified"
    assert record.bytes_transferred == 0
    assert conditional.headers["if-none-match"] == record.etag
    assert conditional.status == 304 and conditional.body_bytes == 0
    assert server.count("a.bin", "GET") == 2
    assert_identical_and_clean(root, mirror)


def test_a_changed_remote_is_fetched_again(server, mirror, root):
    """A new release under the same name must replace the local copy and update the manifest."""
    [first] = download_all([job_for(server, root)], root, FAST)
    new_data = write_random_file(mirror / "b.tmp", SIZE + 10, seed=9)
    rewrite_with_new_version(mirror / "a.bin", new_data)
    [record] = download_all([job_for(server, root)], root, FAST)
    assert record.status == "downloaded"
    assert record.etag != first.etag
    assert record.sha256 == sha(new_data)
    assert read_manifest(root)["demo/a.bin"]["sha256"] == sha(new_data)
    assert server.records("a.bin", "GET")[1].status == 200
    assert_identical_and_clean(root, mirror)


def test_without_validators_a_head_decides_by_size(server, mirror, root):
    """Some servers send no ETag/Last-Modified: then HEAD's Content-Length is the change signal."""
    server.add_fault("a.bin", NoValidators())
    [first] = download_all([job_for(server, root)], root, FAST)
    assert first.etag is None and first.last_modified is None
    [again] = download_all([job_for(server, root)], root, FAST)
    assert again.status == "not_modified"
    assert (server.count("a.bin", "HEAD"), server.count("a.bin", "GET")) == (1, 1)

    rewrite_with_new_version(mirror / "a.bin", b"shorter now")
    [changed] = download_all([job_for(server, root)], root, FAST)
    assert changed.status == "downloaded"
    assert (server.count("a.bin", "HEAD"), server.count("a.bin", "GET")) == (2, 2)
    assert_identical_and_clean(root, mirror)


# ------------------------------------------------------------------------------- faults
def test_a_dropped_connection_is_resumed_with_a_range_request(server, mirror, root):
    """Multi-GB zips over flaky links: a drop must cost only the missing bytes, not a restart."""
    server.add_fault("a.bin", DropConnection(after_bytes=CUT))
    [record] = download_all([job_for(server, root)], root, FAST)
    first, second = server.records("a.bin", "GET")
    assert (first.status, first.body_bytes) == (200, CUT)
    assert second.headers["range"] == f"bytes={CUT}-"
    assert second.headers["if-range"] == record.etag
    assert (second.status, second.body_bytes) == (206, SIZE - CUT)
    assert record.status == "resumed"
    assert record.bytes_transferred == SIZE
    assert record.sha256 == sha((mirror / "a.bin").read_bytes())
    assert_identical_and_clean(root, mirror)


def test_a_partial_left_by_a_failed_run_is_resumed_by_the_next(server, mirror, root):
    """A killed or failed run keeps its partial; the next run hashes it once and fetches the rest."""
    server.add_fault("a.bin", DropConnection(after_bytes=CUT))
    one_try = DownloadPolicy(max_attempts=1, backoff_initial=0.01, read_timeout=2.0)
    with pytest.raises(DownloadError, match=r"incomplete|RemoteProtocolError"):
        download_all([job_for(server, root)], root, one_try)
    assert leftovers(root) == ["demo/a.bin.part", "demo/a.bin.part.json"]
    assert (root / "demo" / "a.bin.part").stat().st_size == CUT
    assert not (root / "demo" / "a.bin").exists()

    [record] = download_all([job_for(server, root)], root, FAST)
    assert record.status == "resumed"
    assert record.bytes_transferred == SIZE - CUT
    assert server.records("a.bin", "GET")[-1].headers["range"] == f"bytes={CUT}-"
    assert_identical_and_clean(root, mirror)


def test_a_partial_that_cannot_be_resumed_is_not_kept(server, mirror, root):
    """Without validators a partial could be spliced onto another version, so it is dropped."""
    server.add_fault("a.bin", NoValidators())
    server.add_fault("a.bin", DropConnection(after_bytes=CUT))
    with pytest.raises(DownloadError):
        download_all([job_for(server, root)], root, DownloadPolicy(max_attempts=1))
    assert leftovers(root) == []
    [record] = download_all([job_for(server, root)], root, FAST)
    assert record.status == "downloaded" and "range" not in server.records("a.bin", "GET")[-1].headers
    assert_identical_and_clean(root, mirror)


def test_a_partial_of_an_older_version_is_not_spliced(server, mirror, root):
    """If the remote changed since the partial started, If-Range makes the server send it whole."""
    server.add_fault("a.bin", DropConnection(after_bytes=CUT))
    with pytest.raises(DownloadError):
        download_all([job_for(server, root)], root, DownloadPolicy(max_attempts=1))
    new_data = write_random_file(mirror / "b.tmp", SIZE, seed=5)
    rewrite_with_new_version(mirror / "a.bin", new_data)
    [record] = download_all([job_for(server, root)], root, FAST)
    last = server.records("a.bin", "GET")[-1]
    assert "range" in last.headers and last.status == 200
    assert record.status == "downloaded"
    assert record.sha256 == sha(new_data)
    assert_identical_and_clean(root, mirror)


def test_a_server_ignoring_range_restarts_from_zero(server, mirror, root):
    """A server without range support answers a resume with 200: the partial must be truncated."""
    server.add_fault("a.bin", DropConnection(after_bytes=CUT))
    server.add_fault("a.bin", IgnoreRange())
    [record] = download_all([job_for(server, root)], root, FAST)
    second = server.records("a.bin", "GET")[1]
    assert second.headers["range"] == f"bytes={CUT}-" and second.status == 200
    assert record.status == "downloaded"
    assert_identical_and_clean(root, mirror)


def test_retry_after_is_honoured(server, mirror, root):
    """A 429 with Retry-After is the server asking for patience; retrying sooner gets us banned."""
    server.add_fault("a.bin", ErrorStatus(429, times=1, retry_after="1"))
    patient = DownloadPolicy(backoff_initial=0.01, backoff_max=2.0)  # the cap must not cut the 1 s
    download_all([job_for(server, root)], root, patient)
    first, second = server.records("a.bin", "GET")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.0
    assert_identical_and_clean(root, mirror)


def test_retry_after_is_capped_by_backoff_max(server, mirror, root):
    """A server asking for an hour must not stall the pipeline beyond the policy's cap."""
    server.add_fault("a.bin", ErrorStatus(503, times=1, retry_after="4"))  # stands for "3600"
    log = LogLines()
    download_all([job_for(server, root)], root, FAST, log=log)
    waits = [line for line in log.lines if "retrying in" in line]
    assert len(waits) == 1 and f"retrying in {FAST.backoff_max:.2f} s" in waits[0], waits
    assert_identical_and_clean(root, mirror)


def test_503_then_success(server, mirror, root):
    server.add_fault("a.bin", ErrorStatus(503, times=2))
    [record] = download_all([job_for(server, root)], root, FAST)
    assert [r.status for r in server.records("a.bin", "GET")] == [503, 503, 200]
    assert record.status == "downloaded"
    assert_identical_and_clean(root, mirror)


def test_too_many_5xx_fail_with_the_attempt_count(server, mirror, root):
    server.add_fault("a.bin", ErrorStatus(503, times=10))
    with pytest.raises(DownloadError) as caught:
        download_all([job_for(server, root)], root, FAST)
    message = str(caught.value)
    assert server.url_for("a.bin") in message and "HTTP 503" in message and "4 attempts" in message
    assert server.count("a.bin", "GET") == FAST.max_attempts
    assert not (root / "demo" / "a.bin").exists()
    assert leftovers(root) == []


def test_a_declared_length_larger_than_the_body_is_retried(server, mirror, root):
    """A body that ends before its Content-Length is incomplete, never a finished file."""
    server.add_fault("a.bin", WrongContentLength(delta=5_000))
    [record] = download_all([job_for(server, root)], root, FAST)
    assert record.size == SIZE
    assert server.count("a.bin", "GET") >= 2
    assert_identical_and_clean(root, mirror)


def test_a_declared_length_smaller_than_the_body_is_caught_by_the_sha256(server, mirror, root):
    """A short Content-Length is self-consistent on the wire; only the catalog checksum reveals it."""
    server.add_fault("a.bin", WrongContentLength(delta=-5_000))
    data = (mirror / "a.bin").read_bytes()
    log = LogLines()
    [record] = download_all([job_for(server, root, sha256=sha(data))], root, FAST, log=log)
    assert record.sha256 == sha(data)
    assert server.count("a.bin", "GET") == 2
    assert any("sha256 mismatch" in line for line in log.lines)
    assert_identical_and_clean(root, mirror)


def test_a_stalled_server_times_out_and_is_retried(server, mirror, root):
    """A server that accepts and then says nothing must cost read_timeout, not forever."""
    server.add_fault("a.bin", Stall(seconds=3.0))
    policy = DownloadPolicy(read_timeout=0.2, max_attempts=3, backoff_initial=0.01)
    log = LogLines()
    download_all([job_for(server, root)], root, policy, log=log)
    # Without the read timeout the first GET would have waited out the stall and succeeded.
    assert server.count("a.bin", "GET") == 2
    assert any("ReadTimeout" in line and "retrying in" in line for line in log.lines), log.lines
    assert_identical_and_clean(root, mirror)


# ------------------------------------------------------------------------------- failures
def test_a_404_fails_at_once_naming_url_and_status(server, root):
    """A wrong catalog URL is not a transient error: one request, then a message that says which."""
    with pytest.raises(DownloadError) as caught:
        download_all([job_for(server, root, "missing.bin")], root, FAST)
    message = str(caught.value)
    assert server.url_for("missing.bin") in message
    assert "HTTP 404" in message and "1 attempt)" in message and "demo/images" in message
    assert server.count("missing.bin", "GET") == 1
    assert not (root / "demo" / "missing.bin").exists()
    assert leftovers(root) == []


def test_the_next_mirror_is_tried_when_the_first_fails(server, mirror, root):
    urls = (server.url_for("missing.bin"), server.url_for("a.bin"))
    [record] = download_all([job_for(server, root, urls=urls)], root, FAST)
    assert record.url == server.url_for("a.bin")
    assert server.count("missing.bin", "GET") == 1
    assert_identical_and_clean(root, mirror)


def test_the_mirror_that_served_the_copy_is_asked_first_next_time(server, mirror, root):
    """Validators only mean something to the server that issued them; another mirror would resend."""
    for folder in ("m1", "m2"):
        write_random_file(mirror / folder / "a.bin", SIZE, seed=1)
    urls = (server.url_for("m1/a.bin"), server.url_for("m2/a.bin"))
    server.add_fault("m1/a.bin", ErrorStatus(503, times=100))
    [first] = download_all([job_for(server, root, urls=urls)], root, FAST)
    assert first.url == urls[1]
    server.clear_faults()
    m1_requests = server.count("m1/a.bin")
    [again] = download_all([job_for(server, root, urls=urls)], root, FAST)
    assert (again.status, again.url) == ("not_modified", urls[1])
    assert server.count("m1/a.bin") == m1_requests


def test_a_strong_etag_from_another_url_still_gives_304(server, mirror, root):
    """The demo mirror gets a new port every run; an unchanged file must not be fetched again."""
    [first] = download_all([job_for(server, root)], root, FAST)
    with FaultServer(mirror) as moved:
        [again] = download_all([job_for(moved, root)], root, FAST)
        [asked] = moved.records("a.bin", "GET")
    assert (again.status, again.url, again.bytes_transferred) == ("not_modified", moved.url_for("a.bin"), 0)
    assert asked.headers["if-none-match"] == first.etag and "if-modified-since" not in asked.headers
    assert asked.status == 304
    assert read_manifest(root)["demo/a.bin"]["url"] == moved.url_for("a.bin")


def test_when_every_mirror_fails_each_is_named(server, root):
    server.add_fault("a.bin", ErrorStatus(503, times=10))
    urls = (server.url_for("missing.bin"), server.url_for("a.bin"))
    with pytest.raises(DownloadError) as caught:
        download_all([job_for(server, root, urls=urls)], root, FAST)
    [failure] = caught.value.failures
    assert [(f.url, f.attempts) for f in failure.url_failures] == [(urls[0], 1), (urls[1], 4)]
    assert "HTTP 404" in str(caught.value) and "HTTP 503" in str(caught.value)


def test_a_sha256_mismatch_is_retried_once_then_fails_leaving_nothing(server, root):
    """A corrupt or substituted file must never land at dest; the error shows both digests."""
    wrong = "0" * 64
    with pytest.raises(DownloadError) as caught:
        download_all([job_for(server, root, sha256=wrong)], root, FAST)
    message = str(caught.value)
    actual = sha((server.root / "a.bin").read_bytes())
    assert f"expected {wrong}" in message and f"got {actual}" in message
    assert server.count("a.bin", "GET") == 2
    assert not (root / "demo" / "a.bin").exists()
    assert leftovers(root) == []


def test_failures_are_collected_after_the_successes_are_recorded(server, mirror, root):
    """One broken source must not lose the work done for the others."""
    write_random_file(mirror / "c.bin", 1000, seed=3)
    jobs = [job_for(server, root, "a.bin"), job_for(server, root, "missing.bin"),
            job_for(server, root, "c.bin")]
    with pytest.raises(DownloadError) as caught:
        download_all(jobs, root, FAST)
    assert str(caught.value).startswith("1 of 3 downloads failed")
    assert sorted(r.path for r in caught.value.completed) == ["demo/a.bin", "demo/c.bin"]
    assert sorted(read_manifest(root)) == ["demo/a.bin", "demo/c.bin"]


# ------------------------------------------------------------------------------- the rest
def test_several_files_download_concurrently(server, mirror, root):
    """Bounded concurrency: as many files in flight as the policy says, never more."""
    names = [f"f{index}.bin" for index in range(6)]
    for index, name in enumerate(names):
        write_random_file(mirror / name, 50_000 + index, seed=index)
        server.add_fault(name, Delay(0.3))
    records = download_all([job_for(server, root, name) for name in names], root, FAST)
    assert [r.path for r in records] == [f"demo/{name}" for name in names]
    assert server.peak_in_flight == FAST.concurrency
    for name in names:
        assert_identical_and_clean(root, mirror, name)
    assert sorted(read_manifest(root)) == [f"demo/{name}" for name in names]


def test_file_urls_are_copied_checked_and_skipped_when_unchanged(mirror, root):
    """Local mirrors (a mounted share, the demo generator's folder) go through the same checks."""
    data = (mirror / "a.bin").read_bytes()
    job = DownloadJob("demo", "images", ((mirror / "a.bin").as_uri(),), root / "demo" / "a.bin", sha(data))
    [first] = download_all([job], root, FAST)
    assert (first.status, first.sha256, first.size) == ("downloaded", sha(data), SIZE)
    assert download_all([job], root, FAST)[0].status == "not_modified"
    assert_identical_and_clean(root, mirror)

    rewrite_with_new_version(mirror / "a.bin", b"changed")
    with pytest.raises(DownloadError, match=f"expected {sha(data)}"):
        download_all([job], root, FAST)
    assert (root / "demo" / "a.bin").read_bytes() == data  # the good old copy stays
    assert leftovers(root) == []

    missing = DownloadJob("demo", "images", ((mirror / "nope.bin").as_uri(),), root / "demo" / "nope.bin")
    with pytest.raises(DownloadError, match=r"nope.bin"):
        download_all([missing], root, FAST)


def test_progress_is_logged_with_percent_and_rate(server, root):
    log = LogLines()
    download_all([job_for(server, root)], root, DownloadPolicy(progress_interval_s=0.0), log=log)
    progress = [line for line in log.lines if "MB/s" in line and "%" in line]
    assert progress and "demo/images" in progress[0]


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_uses_full_jitter_under_the_cap():
    policy = DownloadPolicy(backoff_initial=1.0, backoff_max=5.0)
    delays = [policy.backoff_delay(3) for _ in range(200)]
    assert all(0.0 <= delay <= 4.0 for delay in delays) and len(set(delays)) > 100
    assert all(policy.backoff_delay(30) <= 5.0 for _ in range(50))
    assert policy.backoff_delay(1, retry_after=60.0) == 5.0


def test_bad_jobs_are_refused_before_anything_runs(tmp_path):
    root = tmp_path / "dl"
    with pytest.raises(ValueError, match=r"absolute"):
        DownloadJob("s", "r", ("http://x/a",), Path("rel/a.zip"))
    with pytest.raises(ValueError, match=r"64 hex"):
        DownloadJob("s", "r", ("http://x/a",), root / "a", sha256="abc")
    with pytest.raises(TypeError, match=r"not the string"):
        DownloadJob("s", "r", "http://x/a", root / "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"not inside the downloads root"):
        download_all([DownloadJob("s", "r", ("http://x/a",), tmp_path / "elsewhere")], root)
    twice = [DownloadJob("s", role, ("http://x/a",), root / "a") for role in ("r1", "r2")]
    with pytest.raises(ValueError, match=r"both download to a"):
        download_all(twice, root)


def test_file_record_round_trips_through_json():
    record = FileRecord("s", "r", "http://x/a", "s/a", 3, "ab" * 32, '"e"', None, "resumed", 2, 0.5)
    assert FileRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ValueError, match=r"status"):
        FileRecord.from_dict({**record.to_dict(), "status": "cached"})
