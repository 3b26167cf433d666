"""Two runs that would write the same outputs never run at once, whichever way they were started.

Verified with dagster 1.13.28 (README, "Safe operation"): the pool ``isic_data`` with
``granularity: run`` holds back runs that go through the run queue (UI, sensors, schedules,
``dagster job launch``), but ``dagster asset materialize`` executes at once and never asks the queue;
those runs wait on the data-root lock instead. Both paths are exercised here with real processes, and
afterwards the downloads must be byte-identical to the source with a consistent manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from isic_assets.core import layout
from isic_assets.core.operation import data_lock
from isic_assets.core.sources.download import read_manifest
from isic_assets_tests.fault_server import FaultServer, Hold
from isic_assets_tests.test_dropzone import CSV_NAME, ZIP_NAME, write_tiny_isic2016

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------------
# the lock itself, across real processes


def _hold_in_subprocess(root: Path, run_id: str, timeout_s: float, hold_s: float = 0.0) -> subprocess.Popen:
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom isic_assets.core.operation import data_lock\n"
        f"lock = data_lock.acquire(Path({str(root)!r}), {run_id!r}, poll_s=0.05, timeout_s={timeout_s})\n"
        "print('acquired', flush=True)\n"
        f"time.sleep({hold_s})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_processes_of_one_run_share_the_lock_and_another_run_waits(tmp_path):
    """The multiprocess executor runs each step of a run in its own process: they must not block
    each other, while a step of any other run must wait."""
    with data_lock.acquire(tmp_path, "run-a") as held:
        same_run = _hold_in_subprocess(tmp_path, "run-a", timeout_s=5)
        other_run = _hold_in_subprocess(tmp_path, "run-b", timeout_s=1)
        assert same_run.communicate(timeout=60)[0].strip() == "acquired"
        err = other_run.communicate(timeout=60)[1]
        assert other_run.returncode != 0 and "TimeoutError: run run-a" in err
        assert data_lock.current_owner(tmp_path)["run_id"] == "run-a"
        assert held.held
    assert data_lock.current_owner(tmp_path) is None
    later = _hold_in_subprocess(tmp_path, "run-b", timeout_s=5)
    assert later.communicate(timeout=60)[0].strip() == "acquired"


def test_a_killed_run_never_leaves_a_stale_lock(tmp_path):
    holder = _hold_in_subprocess(tmp_path, "run-a", timeout_s=5, hold_s=60)
    assert holder.stdout.readline().strip() == "acquired"
    messages: list[str] = []
    with pytest.raises(TimeoutError):
        data_lock.acquire(tmp_path, "run-b", poll_s=0.05, timeout_s=0.3, on_wait=messages.append)
    assert messages and "run run-a" in messages[0] and "waiting" in messages[0]
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with data_lock.acquire(tmp_path, "run-b", timeout_s=5) as lock:
        assert lock.held


# ----------------------------------------------------------------------------------------------
# real runs


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror" / "tiny"
    write_tiny_isic2016(folder)
    return folder


@pytest.fixture
def server(source: Path) -> Iterator[FaultServer]:
    with FaultServer(source.parent) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, server: FaultServer) -> dict[str, str]:
    """A project-like instance (the repository's dagster.yaml) and a catalog of one slow-able source."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / ".dagster_home" / "dagster.yaml").read_text())
    catalog = {"sources": {"tiny": {"format": "isic2016", "files": {
        "images": f"{server.url}/tiny/{ZIP_NAME}", "ground_truth": f"{server.url}/tiny/{CSV_NAME}"}}}}
    (tmp_path / "catalog.yaml").write_text(json.dumps(catalog))
    return {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
            "ISIC_SOURCES": "tiny", "ISIC_CATALOG": str(tmp_path / "catalog.yaml")}


def _events(instance: dg.DagsterInstance, run_id: str, kind: str, step: str | None = None) -> list[float]:
    return [r.timestamp for r in instance.all_logs(run_id)
            if r.dagster_event is not None and r.dagster_event.event_type_value == kind
            and (step is None or r.step_key == step)]


def _wait_for_first_get(server: FaultServer, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.records(f"tiny/{ZIP_NAME}", "GET"):
        assert time.monotonic() < deadline, "no run ever asked for the zip"
        time.sleep(0.1)
    server.clear_faults()  # the request already held keeps sleeping; the next ones are fast


def _wait_for_a_waiting_run(dagster_home: str, timeout_s: float) -> None:
    """Until some run of the instance logs that it waits for the data-root lock."""
    deadline = time.monotonic() + timeout_s
    with dg.DagsterInstance.from_config(dagster_home) as instance:
        while time.monotonic() < deadline:
            for record in instance.get_run_records():
                if any("waiting for it to finish" in r.user_message
                       for r in instance.all_logs(record.dagster_run.run_id)):
                    return
            time.sleep(0.5)
    raise AssertionError(f"no run logged that it waits for the data-root lock within {timeout_s} s")


def _assert_downloads_intact(data: Path, source: Path) -> None:
    downloads = data / layout.DOWNLOADS
    manifest = read_manifest(downloads)
    for name in (ZIP_NAME, CSV_NAME):
        local = downloads / "tiny" / name
        assert local.read_bytes() == (source / name).read_bytes()
        assert manifest[f"tiny/{name}"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert not [p for p in downloads.rglob("*") if p.name.endswith((".part", ".part.json")) or ".tmp-" in p.name]


def test_a_cli_run_waits_for_the_cli_run_writing_the_same_data(env, server, source, tmp_path):
    """`dagster asset materialize` bypasses the run queue: the second one waits on the data-root lock."""
    release = threading.Event()  # the first download is held until the second run is seen waiting
    server.add_fault(f"tiny/{ZIP_NAME}", Hold(release))
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "isic_assets", "--select", "raw_zips"]
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_first_get(server)  # the first run holds the lock and is downloading
    second = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_waiting_run(env["DAGSTER_HOME"], timeout_s=240)
    finally:
        release.set()
    first_err = first.communicate(timeout=300)[1]
    second_err = second.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 0, second_err[-3000:]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = sorted(instance.get_run_records(), key=lambda r: r.create_timestamp)
        assert len(runs) == 2
        a, b = (r.dagster_run.run_id for r in runs)
        a_done = _events(instance, a, "STEP_SUCCESS", "raw_zips")
        b_start = _events(instance, b, "STEP_START", "raw_zips")
        assert a_done and b_start and b_start[0] >= a_done[0]
        waited = [r.user_message for r in instance.all_logs(b) if "waiting for it to finish" in r.user_message]
        assert waited and f"run {a}" in waited[0]
    _assert_downloads_intact(tmp_path / "data", source)


@pytest.mark.e2e
def test_queued_runs_wait_for_the_pool_one_at_a_time(env, server, source, tmp_path):
    """Two runs submitted to the queue together (as the UI or two sensors would): the daemon starts
    one, logs that the other is blocked by the isic_data pool, and starts it only afterwards.

    The limit is set explicitly first, as `make ui` and `make demo` do: with only `default_limit` in
    dagster.yaml, 1.13.28 initializes a pool's limit lazily and its first dequeue pass launched two
    runs together (verified; the data-root lock then made the second wait, see the README).
    """
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "isic_data", "1"], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=120)
    # The first run's download is held until the daemon has said the second run waits for the pool:
    # the overlap is seen, not guessed with a fixed delay.
    release = threading.Event()
    server.add_fault(f"tiny/{ZIP_NAME}", Hold(release))
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("w") as log:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "isic_assets"], cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        launch = [str(BIN / "dagster"), "job", "launch", "-m", "isic_assets", "-j", "__ASSET_JOB", "-o", "raw_zips"]
        launches = [subprocess.Popen(launch, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True) for _ in range(2)]
        for launched in launches:
            err = launched.communicate(timeout=300)[1]
            assert launched.returncode == 0, err[-3000:]
        try:
            _wait_for_first_get(server)
            _wait_for_text(daemon_log, BLOCKED, timeout_s=240)
        finally:
            release.set()
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            records = _wait_for_finished_runs(instance, 2, timeout_s=240)
            assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2, \
                daemon_log.read_text()[-3000:]
            first, second = sorted(records, key=lambda r: r.start_time)
            assert second.start_time >= first.end_time, "the two runs overlapped"
            # The queue, not the data-root lock, kept them apart.
            for record in records:
                assert not [r for r in instance.all_logs(record.dagster_run.run_id)
                            if "waiting for it to finish" in r.user_message]
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
    text = daemon_log.read_text()
    assert BLOCKED in text and '"isic_data"' in text
    _assert_downloads_intact(tmp_path / "data", source)


BLOCKED = "blocked by global concurrency limits"


def _wait_for_text(log: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in the daemon log within {timeout_s} s:\n" \
                                            f"{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)


def _wait_for_finished_runs(instance: dg.DagsterInstance, count: int, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    while time.monotonic() < deadline:
        records = instance.get_run_records()
        if len(records) >= count and all(r.dagster_run.status in finished for r in records):
            return records
        time.sleep(1.0)
    raise AssertionError(f"runs did not finish in {timeout_s} s: "
                         f"{[(r.dagster_run.run_id, r.dagster_run.status) for r in instance.get_run_records()]}")
