"""The sensor path for real: dagster-daemon, isic_sources_sensor switched on, a file changes, one run.

This is how a user who never clicks anything drives the platform (README, "Three ways to drive the
platform"): the demo mirror served on loopback stands in for the ISIC buckets, the sensor is
started with the README's own `dagster sensor start` command, and the daemon does the rest.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from isic_assets.core import layout
from isic_assets.demo import __main__ as demo_cli
from isic_assets_tests.demo_support import copy_demo_mirror
from isic_assets_tests.fault_server import rewrite_with_new_version

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENSOR = "isic_sources_sensor"
INTERVAL_S = 2
CHANGED = "isic2018/HAM10000_metadata.csv"


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, log: Path) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log.exists() else "(no daemon log)"
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; daemon log tail:\n{tail}")


@pytest.fixture
def daemon_env(tmp_path: Path, generated_demo_mirror: Path) -> Iterator[dict[str, str]]:
    """Two demo sources on a loopback mirror, a project-like instance, a fast sensor interval.

    The mirror is generated and served by `python -m isic_assets.demo serve` (its function, on a
    thread), exactly what the README tells a user to run; it starts from a copy of the session's
    mirror (demo_support.py), so serving takes the generator's fast path.
    """
    mirror = copy_demo_mirror(generated_demo_mirror, tmp_path)
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    server = threading.Thread(target=demo_cli.serve, args=(mirror, "127.0.0.1", 0, 0),
                              kwargs={"on_ready": urls.put, "stop": stop}, daemon=True)
    server.start()
    url = urls.get(timeout=300)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / ".dagster_home" / "dagster.yaml").read_text())
    try:
        yield {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
               "ISIC_SOURCES": "demo_isic2016,demo_isic2018", "ISIC_DEMO_MIRROR_URL": url,
               "ISIC_SENSOR_INTERVAL_S": str(INTERVAL_S), "MIRROR": str(mirror)}
    finally:
        stop.set()
        server.join(timeout=30)


def sensor_state(instance: dg.DagsterInstance):
    states = [s for s in instance.all_instigator_state() if s.instigator_name == SENSOR]
    return states[0] if states else None


def sensor_ticks(instance: dg.DagsterInstance) -> list:
    state = sensor_state(instance)
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id)) if state else []


@pytest.mark.e2e
def test_a_changed_file_on_the_mirror_launches_exactly_one_successful_run(daemon_env, tmp_path):
    env = daemon_env
    started = subprocess.run([str(BIN / "dagster"), "sensor", "start", SENSOR], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180, check=False)
    assert started.returncode == 0 and f"Started sensor {SENSOR}" in started.stdout, started.stderr[-3000:]
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "isic_assets"], cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            # First tick: the fingerprints are recorded and nothing is launched.
            wait_for(lambda: sensor_state(instance) and sensor_state(instance).instigator_data.cursor,
                     120, "the first tick to record fingerprints", log_path)
            first = sensor_ticks(instance)
            assert any("first evaluation" in (t.skip_reason or "") for t in first), [t.skip_reason for t in first]
            assert instance.get_run_records() == []
            # The mirror publishes a new version of one file.
            changed = Path(env["MIRROR"]) / CHANGED
            rewrite_with_new_version(changed, changed.read_bytes())
            [record] = wait_for(lambda: instance.get_run_records(), 60, "the sensor to launch a run", log_path)
            finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
            wait_for(lambda: instance.get_run_by_id(record.dagster_run.run_id).status in finished, 240,
                     "the run to finish", log_path)
            run = instance.get_run_by_id(record.dagster_run.run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-4000:]
            assert run.tags["dagster/sensor_name"] == SENSOR
            assert run.tags["isic/changed"] == "demo_isic2018/metadata"
            # Later ticks see the stored fingerprints: still exactly one run.
            ticks_after = len(sensor_ticks(instance))
            wait_for(lambda: len(sensor_ticks(instance)) >= ticks_after + 2, 60, "two more ticks", log_path)
            assert len(instance.get_run_records()) == 1
    finally:
        _stop(daemon)
    data = Path(env["ISIC_DATA_DIR"])
    assert (data / layout.SPLITS_DIR / "manifest.csv").is_file()
    [run_log] = (data / layout.LOGS).glob(f"*_{run.run_id}.log")  # the plain-text log of a daemon run
    assert "RUN_SUCCESS" in run_log.read_text()


def _stop(process: subprocess.Popen) -> None:
    """Stop the daemon and everything it started (code server, run workers): the whole group."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
