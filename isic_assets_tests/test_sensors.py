"""isic_sources_sensor ticks against a real loopback server, over the cursor scenarios that matter.

Each tick is evaluated the way the daemon does (``evaluate_tick``) and both the run requests and the
new cursor are asserted: a sensor that launches the right run but forgets what it saw would launch
it again on the next tick, and one that advances its cursor past an unreachable server would never
notice the change once the server is back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest

from isic_assets.core.sources.fingerprints import Fingerprint, SourceUnreachable, probe
from isic_assets.core.sources.http_mirror import MirrorRequestHandler, MirrorServer, make_etag
from isic_assets.core.sources.watch import change_run_key, probe_files, read_sources_cursor
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets.defs.sensors import dropzone_sensor, isic_sources_sensor
from isic_assets_tests.fault_server import (
    ErrorStatus,
    FaultServer,
    Stall,
    rewrite_with_new_version,
    write_random_file,
)

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "m2016": {"images": "y2016/ISBI2016_ISIC_Part3_Training_Data.zip",
              "ground_truth": "y2016/ISBI2016_ISIC_Part3_Training_GroundTruth.csv"},
    "m2018": {"images": "y2018/ISIC2018_Task3_Training_Input.zip",
              "ground_truth": "y2018/ISIC2018_Task3_Training_GroundTruth.csv"},
}
FORMATS = {"m2016": "isic2016", "m2018": "isic2018"}


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    for seed, rel in enumerate(rel for files in FILES.values() for rel in files.values()):
        write_random_file(folder / rel, 2000 + 100 * seed, seed=seed)
    return folder


@pytest.fixture
def server(mirror: Path) -> Iterator[FaultServer]:
    with FaultServer(mirror) as running:
        yield running


def write_catalog(path: Path, base_url: str) -> Path:
    sources = {
        name: {"format": FORMATS[name], "files": {role: f"{base_url}/{rel}" for role, rel in files.items()}}
        for name, files in FILES.items()
    }
    path.write_text(json.dumps({"sources": sources}))  # JSON is YAML
    return path


@pytest.fixture
def settings(tmp_path: Path, server: FaultServer) -> IsicSettings:
    catalog = write_catalog(tmp_path / "catalog.yaml", server.url)
    return IsicSettings(data_dir=str(tmp_path / "data"), sources="m2016,m2018", catalog=str(catalog))


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """In memory: these sensors read no run history, and a sqlite instance costs seconds per test."""
    with dg.DagsterInstance.ephemeral() as test_instance:
        yield test_instance


def tick(settings: IsicSettings, cursor: str | None, instance: dg.DagsterInstance):
    """One evaluation as the daemon sees it: run requests, skip message and the cursor to store."""
    with dg.build_sensor_context(cursor=cursor, resources={"isic": settings}, instance=instance) as context:
        return isic_sources_sensor.evaluate_tick(context)


def files_in(cursor: str) -> dict[str, dict]:
    return json.loads(cursor)["files"]


def etag_of(path: Path) -> str:
    stat = path.stat()
    return make_etag(stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------------------------
# cursor scenarios


def test_first_tick_records_fingerprints_and_launches_nothing(settings, instance, server, mirror):
    """Switching the sensor on for an already materialized graph must not start a download."""
    result = tick(settings, None, instance)
    assert result.run_requests == []
    assert "first evaluation" in result.skip_message
    files = files_in(result.cursor)
    assert set(files) == {"m2016/images", "m2016/ground_truth", "m2018/images", "m2018/ground_truth"}
    rel = FILES["m2016"]["images"]
    assert files["m2016/images"]["etag"] == etag_of(mirror / rel)
    assert files["m2016/images"]["content_length"] == (mirror / rel).stat().st_size
    assert files["m2016/images"]["last_modified"]
    assert server.records(method="GET") == []  # validators only, never a body
    assert len(server.records(method="HEAD")) == 4


def test_unchanged_files_are_a_skip_answered_by_304(settings, instance, server):
    first = tick(settings, None, instance)
    second = tick(settings, first.cursor, instance)
    assert second.run_requests == []
    assert "4 file(s) unchanged" in second.skip_message
    assert second.cursor == first.cursor
    conditional = [r for r in server.records(method="HEAD") if "if-none-match" in r.headers]
    assert len(conditional) == 4 and {r.status for r in conditional} == {304}


def test_one_changed_file_gives_exactly_one_run_keyed_by_its_fingerprints(settings, instance, mirror):
    first = tick(settings, None, instance)
    changed = mirror / FILES["m2016"]["ground_truth"]
    rewrite_with_new_version(changed, changed.read_bytes() + b"ISIC_0000001,benign\r\n")
    second = tick(settings, first.cursor, instance)
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    assert request.tags["isic/changed"] == "m2016/ground_truth"
    assert request.asset_selection is None  # the sensor's target: raw_zips and everything downstream
    before, after = files_in(first.cursor), files_in(second.cursor)
    assert after["m2016/ground_truth"]["etag"] == etag_of(changed) != before["m2016/ground_truth"]["etag"]
    assert {k: v for k, v in after.items() if k != "m2016/ground_truth"} == \
        {k: v for k, v in before.items() if k != "m2016/ground_truth"}
    old = Fingerprint.from_dict(before["m2016/ground_truth"])
    new = Fingerprint.from_dict(after["m2016/ground_truth"])
    assert request.run_key == change_run_key({"m2016/ground_truth": (old, new)}, launch=1)
    # The daemon may evaluate the same tick twice (e.g. after a crash): same key, so one run.
    again = tick(settings, first.cursor, instance)
    assert [r.run_key for r in again.run_requests] == [request.run_key]
    # With the stored cursor the change is old news.
    third = tick(settings, second.cursor, instance)
    assert third.run_requests == [] and "unchanged" in third.skip_message


def test_several_files_changing_at_once_still_make_one_run(settings, instance, mirror):
    first = tick(settings, None, instance)
    for rel in (FILES["m2016"]["images"], FILES["m2018"]["ground_truth"]):
        rewrite_with_new_version(mirror / rel, b"new version of " + rel.encode())
    second = tick(settings, first.cursor, instance)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].tags["isic/changed"] == "m2016/images,m2018/ground_truth"


def _set_version(path: Path, data: bytes, mtime_ns: int) -> None:
    """Publish exactly this version: same bytes and time give the same ETag, like S3's content MD5."""
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_going_back_and_forth_launches_every_time(settings, instance, mirror):
    """A, B, A, B: the second A->B has the very same fingerprints as the first and must still run."""
    path = mirror / FILES["m2018"]["images"]
    version_a = (path.read_bytes(), path.stat().st_mtime_ns)
    version_b = (b"version b", version_a[1] + 5_000_000_000)
    first = tick(settings, None, instance)
    cursor, keys = first.cursor, []
    for data, mtime in (version_b, version_a, version_b):
        _set_version(path, data, mtime)
        result = tick(settings, cursor, instance)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert len(keys) == 3 and len(set(keys)) == 3
    assert json.loads(cursor)["launches"] == 3


def test_an_unreachable_source_is_a_skip_naming_it_and_the_cursor_does_not_advance(settings, instance, server,
                                                                                    mirror):
    first = tick(settings, None, instance)
    changed = mirror / FILES["m2016"]["ground_truth"]
    rewrite_with_new_version(changed, b"ISIC_0000001,malignant\r\n")
    server.add_fault(FILES["m2018"]["images"], ErrorStatus(503, times=100))
    second = tick(settings, first.cursor, instance)
    assert second.run_requests == []  # a run now would fail on m2018: no spurious run
    assert "m2018 (images:" in second.skip_message and "HTTP 503" in second.skip_message
    assert "1 changed file(s) wait" in second.skip_message
    assert second.cursor == first.cursor  # neither the unreachable nor the pending change advanced
    server.clear_faults()
    third = tick(settings, second.cursor, instance)
    assert len(third.run_requests) == 1
    assert third.run_requests[0].tags["isic/changed"] == "m2016/ground_truth"


def test_a_server_that_is_down_is_reported_not_raised(tmp_path, instance):
    with socket.socket() as probe_socket:  # a port nothing listens on
        probe_socket.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe_socket.getsockname()[1]}"
    catalog = write_catalog(tmp_path / "catalog.yaml", dead)
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="m2016,m2018", catalog=str(catalog))
    result = tick(settings, None, instance)
    assert result.run_requests == []
    assert "unreachable: m2016 (" in result.skip_message and "m2018 (" in result.skip_message
    assert "ConnectError" in result.skip_message
    assert files_in(result.cursor) == {}


def test_a_hanging_server_cannot_hold_the_evaluation_past_its_budget(server, mirror):
    rel = FILES["m2016"]["images"]
    server.add_fault(rel, Stall(seconds=8, times=5))
    started = time.monotonic()
    results = probe_files({"m2016/images": (f"{server.url}/{rel}",)}, {}, budget_s=1.5)
    assert time.monotonic() - started < 4.0
    assert isinstance(results["m2016/images"], SourceUnreachable)


def test_mirror_urls_are_tried_in_order(tmp_path, server, mirror, instance):
    rel = FILES["m2016"]["images"]
    server.add_fault("missing.zip", ErrorStatus(404, times=100))
    result = probe_files({"m2016/images": (f"{server.url}/missing.zip", f"{server.url}/{rel}")}, {})
    assert result["m2016/images"].url == f"{server.url}/{rel}"


def test_demo_sources_need_an_external_mirror_url(tmp_path, instance, server, mirror, monkeypatch):
    """The demo mirror is generated and served only inside raw_zips: the sensor says how to watch it."""
    monkeypatch.delenv("ISIC_DEMO_MIRROR_URL", raising=False)
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="demo_isic2016")
    skipped = tick(settings, None, instance)
    assert skipped.run_requests == [] and skipped.cursor is None
    assert "ISIC_DEMO_MIRROR_URL" in skipped.skip_message and "isic_assets.demo serve" in skipped.skip_message
    for name in ("ISBI2016_ISIC_Part3_Training_Data.zip", "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"):
        write_random_file(mirror / "isic2016" / name, 500)
    monkeypatch.setenv("ISIC_DEMO_MIRROR_URL", server.url + "/")
    watched = tick(settings, None, instance)
    files = files_in(watched.cursor)
    assert set(files) == {"demo_isic2016/images", "demo_isic2016/ground_truth"}
    assert files["demo_isic2016/images"]["url"] == f"{server.url}/isic2016/ISBI2016_ISIC_Part3_Training_Data.zip"


# ----------------------------------------------------------------------------------------------
# fingerprints


class _NoHeadHandler(MirrorRequestHandler):
    """A server that refuses HEAD, as some CDNs and S3 pre-signed URLs do; counts body bytes sent."""

    body_bytes = 0
    ranges: ClassVar[list[str | None]] = []

    def do_HEAD(self) -> None:
        self.send_text(405, "HEAD not allowed")

    def do_GET(self) -> None:
        _NoHeadHandler.ranges.append(self.headers.get("Range"))
        super().do_GET()

    def write_chunk(self, data: bytes) -> None:
        _NoHeadHandler.body_bytes += len(data)
        super().write_chunk(data)


def test_head_refused_falls_back_to_a_one_byte_range_get(mirror):
    rel = FILES["m2016"]["images"]
    _NoHeadHandler.body_bytes, _NoHeadHandler.ranges = 0, []
    with MirrorServer(mirror, handler_class=_NoHeadHandler) as server:
        fingerprint = probe(f"{server.url}/{rel}")
        again = probe(f"{server.url}/{rel}", previous=fingerprint)
    assert fingerprint.content_length == (mirror / rel).stat().st_size
    assert fingerprint.etag == etag_of(mirror / rel)
    assert again == fingerprint  # the conditional range GET answered 304
    assert _NoHeadHandler.ranges == ["bytes=0-0", "bytes=0-0"]
    assert _NoHeadHandler.body_bytes <= 1


def test_file_urls_are_fingerprinted_by_stat_and_changes_launch(tmp_path, mirror, instance):
    catalog = write_catalog(tmp_path / "catalog.yaml", mirror.resolve().as_uri())
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="m2016", catalog=str(catalog))
    first = tick(settings, None, instance)
    assert files_in(first.cursor)["m2016/images"]["etag"] == etag_of(mirror / FILES["m2016"]["images"])
    rewrite_with_new_version(mirror / FILES["m2016"]["images"], b"replaced")
    second = tick(settings, first.cursor, instance)
    assert len(second.run_requests) == 1
    (mirror / FILES["m2016"]["ground_truth"]).unlink()
    third = tick(settings, second.cursor, instance)
    assert third.run_requests == [] and "cannot stat" in third.skip_message


def test_cursor_round_trips():
    fingerprint = Fingerprint("http://h/a.zip", '"1-2"', "Tue, 01 Jul 2025 00:00:00 GMT", 12)
    cursor = json.dumps({"files": {"s/images": fingerprint.to_dict()}, "launches": 3})
    assert read_sources_cursor(cursor) == ({"s/images": fingerprint}, 3)


# ----------------------------------------------------------------------------------------------
# wiring


def test_sensors_target_raw_zips_and_everything_downstream_with_default_statuses():
    repository = defs.get_repository_def()
    everything = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for sensor in (isic_sources_sensor, dropzone_sensor):
        job = repository.get_job(sensor.job_name)
        assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == everything
        assert len(job.asset_layer.asset_graph.asset_check_keys) == 8  # the checks gate these runs too
        assert job.executor_def.name == "in_process"
    assert isic_sources_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert dropzone_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {s.name for s in defs.sensors} == {"isic_sources_sensor", "dropzone_sensor", "isic_automation"}
    assert not list(defs.schedules or [])  # the weekly refresh is an automation condition on raw_zips


def test_interval_comes_from_the_environment_when_the_code_location_loads():
    code = ("from isic_assets.defs.sensors import isic_sources_sensor as s, dropzone_sensor as d\n"
            "print(s.minimum_interval_seconds, d.minimum_interval_seconds)")
    env = {**os.environ, "ISIC_SENSOR_INTERVAL_S": "7", "ISIC_DROPZONE_INTERVAL_S": "5"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.split() == ["7", "5"]


# ----------------------------------------------------------------------------------------------
# an isic_api source as a sensor input (issue 6)


def test_api_source_new_image_launches_one_run(tmp_path):
    """A new archive image matching the query changes the count: one run; nothing new: no run."""
    from isic_assets_tests.fake_isic_api import FakeIsicApi, sample_images

    images = sample_images()
    with FakeIsicApi(tmp_path / "api", images[:6]) as fake, dg.instance_for_test() as instance:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(f"sources:\n  live:\n    format: isic_api\n    api_url: {fake.api_url}\n")
        settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="live", catalog=str(catalog))

        def tick(cursor):
            with dg.build_sensor_context(cursor=cursor, resources={"isic": settings}, instance=instance) as ctx:
                return isic_sources_sensor.evaluate_tick(ctx)

        first = tick(None)
        assert not first.run_requests
        assert "live/query" in files_in(first.cursor)
        same = tick(first.cursor)
        assert not same.run_requests
        fake.add_image(images[6])
        changed = tick(same.cursor)
        assert len(changed.run_requests) == 1
        assert "live/query" in changed.run_requests[0].tags["isic/changed"]
        assert tick(changed.cursor).run_requests == []


def test_unreachable_api_source_is_a_skip_naming_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"sources:\n  live:\n    format: isic_api\n    api_url: http://127.0.0.1:{port}/api/v2/\n")
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="live", catalog=str(catalog))
    with dg.instance_for_test() as instance, dg.build_sensor_context(
            cursor=None, resources={"isic": settings}, instance=instance) as ctx:
        result = isic_sources_sensor.evaluate_tick(ctx)
    assert not result.run_requests
    assert "live" in result.skip_message and "unreachable" in result.skip_message
