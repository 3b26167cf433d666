"""Per-image work on Dask (ISIC_COMPUTE): same bytes as the local pool, and every fault handled.

Real processes throughout: a `dask scheduler` and two `dask worker` processes on loopback for the
module, a LocalCluster for `dask-local`, extra clusters where a test kills a scheduler or needs a
worker that cannot see the data root.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from isic_assets.core import layout
from isic_assets.core.compute import dask_cluster
from isic_assets.core.compute.dask_cluster import ComputeLost, ComputeUnavailable, SharedStorageError
from isic_assets.core.compute.setting import ComputeSettingError, parse_compute
from isic_assets.core.transform.runner import STATE_DIR, transform_images
from isic_assets_tests.dask_support import Cluster, Misbehave
from isic_assets_tests.demo_support import copy_demo_mirror
from isic_assets_tests.e2e_support import free_port
from isic_assets_tests.test_transform import SETTINGS, _make_jobs

REPO = Path(__file__).resolve().parents[1]


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two single-threaded workers for the module; stopped at the end."""
    started = Cluster(tmp_path_factory.mktemp("dask-logs"))
    try:
        started.add_worker("w1")
        started.add_worker("w2")
        started.wait_for_workers(2)
        yield started
    finally:
        started.stop()


def _outputs(out_dir: Path) -> dict[str, bytes]:
    """Every file a run leaves for its users (not the internal _state)."""
    return {
        path.relative_to(out_dir).as_posix(): path.read_bytes()
        for path in sorted(out_dir.rglob("*"))
        if path.is_file() and STATE_DIR not in path.relative_to(out_dir).parts
    }


def _state_records(out_dir: Path) -> dict[str, dict]:
    """Finished records by id, from the state file and any journals left behind."""
    found = {}
    for path in sorted((out_dir / STATE_DIR).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("status") == "ok":
                found[record["isic_id"]] = record
    return found


@pytest.mark.parametrize("value", ["dask", "tcp://nohost", "http://127.0.0.1:8786", "tcp://127.0.0.1:99999"])
def test_a_compute_value_that_names_no_engine_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ComputeSettingError, match=r"ISIC_COMPUTE=.*dask-local"):
        parse_compute(value)
    assert parse_compute("").kind == "local"
    assert parse_compute("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


def test_a_dask_value_without_the_extra_says_how_to_install_it_and_local_still_works(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.modules["distributed"] = None  # as on an install without isic_assets[dask]
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from isic_assets.core.compute.setting import parse_compute
        from isic_assets.core.transform.runner import transform_images
        from isic_assets_tests.test_transform import SETTINGS, _make_jobs
        jobs = _make_jobs(Path({str(tmp_path)!r}), 3)
        report = transform_images(jobs, Path({str(tmp_path)!r}) / "local", SETTINGS, workers=1, log=print)
        assert report.processed == 3, report
        try:
            transform_images(jobs, Path({str(tmp_path)!r}) / "dask", SETTINGS, workers=1, log=print,
                             compute=parse_compute("dask-local"))
        except Exception as exc:
            print("ERROR", type(exc).__name__, exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ERROR DaskUnavailable" in result.stdout
    assert "pip install 'isic_assets[dask]'" in result.stdout
    assert not list((tmp_path / "dask" / "images").iterdir())


def test_an_unreachable_scheduler_fails_before_any_work_naming_address_and_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_SECONDS", 2.0)
    address = f"tcp://127.0.0.1:{free_port()}"
    jobs = _make_jobs(tmp_path, 4)
    with pytest.raises(ComputeUnavailable) as caught:
        transform_images(jobs, tmp_path / "out", SETTINGS, log=_quiet, compute=parse_compute(address))
    assert address in str(caught.value) and "ISIC_COMPUTE" in str(caught.value)
    assert not list((tmp_path / "out" / "images").iterdir())


def test_dask_local_and_an_external_cluster_write_the_bytes_of_a_local_run(tmp_path: Path, cluster) -> None:
    jobs = _make_jobs(tmp_path, 24)
    local = transform_images(jobs, tmp_path / "local", SETTINGS, log=_quiet)
    logs: list[str] = []
    on_local_cluster = transform_images(jobs, tmp_path / "dask-local", SETTINGS, workers=2, log=logs.append,
                                        compute=parse_compute("dask-local"))
    external = transform_images(jobs, tmp_path / "external", SETTINGS, log=logs.append,
                                compute=parse_compute(cluster.address))
    expected = _outputs(tmp_path / "local")
    assert len(expected) == 24 + 1  # the images and normalization.json
    assert _outputs(tmp_path / "dask-local") == expected
    assert _outputs(tmp_path / "external") == expected
    assert _state_records(tmp_path / "external") == _state_records(tmp_path / "local")
    assert (local.backend, on_local_cluster.backend, external.backend) == ("local", "dask-local", "dask")
    assert on_local_cluster.compute_workers == 2 and external.compute_workers == 2
    assert any(f"dask cluster at {cluster.address}: 2 workers" in line for line in logs)
    # Journals are folded into the state once every task is done.
    assert sorted(p.name for p in (tmp_path / "external" / STATE_DIR).iterdir()) == ["transform.lock",
                                                                                     "transform.sqlite"]


def _install(cluster: Cluster, plugin: Misbehave) -> Client:
    """Registers ``plugin`` on every worker of ``cluster`` (and on workers that join later)."""
    client = Client(cluster.address, timeout=30, set_as_default=False)
    try:
        client.register_plugin(plugin, name=Misbehave.name)
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def _misbehaving(cluster: Cluster, plugin: Misbehave) -> Iterator[None]:
    """Every worker of ``cluster`` runs ``plugin`` inside the block; afterwards it is removed and the
    block waits for two healthy workers again, so the next test starts on a whole cluster."""
    client = _install(cluster, plugin)
    try:
        yield
    finally:
        try:
            client.unregister_worker_plugin(Misbehave.name)
            client.wait_for_workers(2, timeout=120)
        finally:
            client.close()


def test_a_worker_killed_mid_transform_has_its_images_done_elsewhere_with_identical_bytes(
    tmp_path: Path, cluster
) -> None:
    jobs = _make_jobs(tmp_path, 16)
    transform_images(jobs, tmp_path / "local", SETTINGS, log=_quiet)
    marker = tmp_path / "killed-once"
    with _misbehaving(cluster, Misbehave(jobs[5].src_sha256, "kill_once", str(marker))):
        report = transform_images(jobs, tmp_path / "external", SETTINGS, log=_quiet,
                                  compute=parse_compute(cluster.address))
    assert marker.exists(), "no worker was killed: the test proved nothing"
    assert report.processed == 16 and report.quarantine == []
    assert _outputs(tmp_path / "external") == _outputs(tmp_path / "local")


def test_an_image_that_kills_every_worker_is_set_aside_with_the_reason_and_the_run_goes_on(
    tmp_path: Path, cluster
) -> None:
    jobs = _make_jobs(tmp_path, 10)
    killer = jobs[3]
    with _misbehaving(cluster, Misbehave(killer.src_sha256, "exit", str(tmp_path / "unused"))):
        report = transform_images(jobs, tmp_path / "out", SETTINGS, log=_quiet,
                                  compute=parse_compute(cluster.address))
    assert report.processed == 9
    assert [row.isic_id for row in report.quarantine] == [killer.isic_id]
    assert "died while transforming this image" in report.quarantine[0].reason
    assert report.worker_restarts >= 1
    assert not (tmp_path / "out" / "images" / f"{killer.isic_id}.jpg").exists()
    # Not remembered: the next run (here on the local pool, without the crash) does it.
    again = transform_images(jobs, tmp_path / "out", SETTINGS, log=_quiet)
    assert (again.processed, again.skipped, again.quarantine) == (1, 9, [])


def test_an_image_that_hangs_past_the_time_limit_on_a_dask_worker_is_set_aside_and_the_run_goes_on(
    tmp_path: Path, cluster
) -> None:
    """The per-image time limit holds on Dask as on the local pool: the hung worker process is ended
    by the kernel, and the image is set aside after the bounded number of deaths."""
    jobs = _make_jobs(tmp_path, 4)
    stuck = jobs[1]
    with _misbehaving(cluster, Misbehave(stuck.src_sha256, "hang", str(tmp_path / "never-created"))):
        report = transform_images(jobs, tmp_path / "out", SETTINGS, log=_quiet,
                                  compute=parse_compute(cluster.address), time_limit_s=2.0)
    assert report.processed == 3
    assert [row.isic_id for row in report.quarantine] == [stuck.isic_id]
    assert "time limit of 2 s" in report.quarantine[0].reason
    assert report.worker_restarts >= 1


def test_a_lost_scheduler_fails_the_step_and_the_next_run_redoes_only_what_was_unfinished(tmp_path: Path) -> None:
    jobs = _make_jobs(tmp_path, 12)
    hung = jobs[0]
    release = tmp_path / "release"
    doomed = Cluster(tmp_path / "logs", allowed_failures=1)
    try:
        doomed.add_worker("d1")
        doomed.add_worker("d2")
        doomed.wait_for_workers(2)
        _install(doomed, Misbehave(hung.src_sha256, "hang", str(release))).close()
        out_dir = tmp_path / "out"
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                transform_images(jobs, out_dir, SETTINGS, log=_quiet, compute=parse_compute(doomed.address))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while len(_state_records(out_dir)) < len(jobs) - 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_state_records(out_dir)) >= len(jobs) - 2, doomed.log_tail()
        doomed.kill_scheduler()
        thread.join(timeout=90)
        assert not thread.is_alive(), "the step hung after losing its scheduler"
    finally:
        release.touch()
        doomed.stop()
    error = outcome.get("error")
    assert isinstance(error, ComputeLost), repr(error)
    assert doomed.address in str(error) and "ISIC_COMPUTE" in str(error)
    finished = set(_state_records(out_dir))
    assert hung.isic_id not in finished
    again = transform_images(jobs, out_dir, SETTINGS, log=_quiet)
    assert again.skipped == len(finished) and again.processed == len(jobs) - len(finished)


def test_a_worker_that_cannot_see_the_data_root_fails_the_step_naming_it_and_the_path(tmp_path: Path) -> None:
    """The second worker runs in its own mount namespace with an empty tmpfs over the data root, as a
    machine without the shared volume would."""
    data_root = tmp_path / "shared"
    data_root.mkdir()
    jobs = _make_jobs(data_root, 4)
    probe = subprocess.run(["unshare", "-m", "true"], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    split = Cluster(tmp_path / "logs")
    try:
        split.add_worker("sees-it")
        wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount -t tmpfs tmpfs "{data_root}" && exec "$0" "$@"']
        split.add_worker("blind", wrap=wrap)
        split.wait_for_workers(2)
        with pytest.raises(SharedStorageError) as caught:
            transform_images(jobs, data_root / "out", SETTINGS, log=_quiet, compute=parse_compute(split.address))
    finally:
        split.stop()
    message = str(caught.value)
    assert "1 of 2 Dask workers" in message and str(data_root / "out") in message
    assert "cannot read" in message
    assert not list((data_root / "out" / "images").iterdir())
    assert not list((data_root / "out").glob(".compute-probe-*"))



def _graph_outputs(data_dir: Path) -> dict[str, bytes]:
    """What the graph leaves for users: both metadata.csv files, the transform's outputs, the splits."""
    found = {}
    for folder in (layout.TRANSFORMED, layout.SPLITS_DIR):
        found.update({f"{folder}/{k}": v for k, v in _outputs(data_dir / folder).items()})
    found["merged_data/metadata.csv"] = (data_dir / layout.MERGED / layout.METADATA_CSV).read_bytes()
    return found


def test_the_demo_graph_writes_the_same_bytes_on_every_engine_and_names_the_cluster(
    tmp_path: Path, cluster, generated_demo_mirror: Path
) -> None:
    """The demo graph once per engine (from merge to splits; raw_zips once, its downloads copied;
    eda_plots has no per-image work); every user-facing output must be identical."""
    import shutil

    import dagster as dg

    from isic_assets.definitions import defs
    from isic_assets.defs.resources import IsicSettings

    work = ["merged_images", "merged_metadata", "transformed_images", "balanced_splits"]
    copy_demo_mirror(generated_demo_mirror, tmp_path / "local")
    outputs, metadata, messages = {}, {}, {}
    with dg.instance_for_test() as instance:
        for engine in ("local", "dask-local", cluster.address):
            data_dir = tmp_path / engine.replace(":", "_").replace("/", "_")
            if engine != "local":
                shutil.copytree(tmp_path / "local" / layout.DOWNLOADS, data_dir / layout.DOWNLOADS)
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks], instance=instance, raise_on_error=False,
                selection=(["raw_zips"] if engine == "local" else []) + work,
                resources={"isic": IsicSettings(data_dir=str(data_dir), sources="demo", compute=engine)},
            )
            assert result.success, engine
            outputs[engine] = _graph_outputs(data_dir)
            events = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
            metadata[engine] = {k: v.value for k, v in events["transformed_images"].materialization.metadata.items()}
            merged = events["merged_images"].materialization.metadata
            assert merged["compute_backend"].value == metadata[engine]["compute_backend"]
            messages[engine] = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(name.startswith(layout.SPLITS_DIR) and name.endswith(layout.MANIFEST_CSV) for name in outputs["local"])
    assert any(name.startswith(f"{layout.TRANSFORMED}/images/") for name in outputs["local"])
    assert outputs["dask-local"] == outputs["local"]
    assert outputs[cluster.address] == outputs["local"]
    assert [metadata[e]["compute_backend"] for e in outputs] == ["local", "dask-local", "dask"]
    assert metadata["dask-local"]["compute_workers"] == 2 and metadata[cluster.address]["compute_workers"] == 2
    for step in ("merge: checking images", "transform: running"):
        assert any(f"{step} on the dask cluster at {cluster.address}: 2 workers, 2 threads, dashboard" in m
                   for m in messages[cluster.address]), step


def test_the_merge_checks_images_on_the_cluster_and_writes_what_a_local_merge_writes(tmp_path: Path, cluster) -> None:
    """Duplicates across sources, a downsampled copy, identical bytes under two ids and a truncated
    member: workers read, check and stage; the step decides; the outputs match byte for byte."""
    from isic_assets.core.merge.merge_sources import MergeOptions, merge_sources
    from isic_assets_tests.test_merge import _jpeg, _source_2016

    same = _jpeg(7)
    first = {f"ISIC_00000{i:02d}.jpg": _jpeg(i, (64 + i, 48)) for i in range(20)}
    first.update({"ISIC_0000090.jpg": same, "ISIC_0000091.jpg": same, "ISIC_0000092.jpg": _jpeg(92)[:300],
                  "ISIC_0000005_downsampled.jpg": _jpeg(5, (32, 24))})
    second = {f"ISIC_00000{i:02d}.jpg": _jpeg(i, (80, 60)) for i in range(10, 30)}
    sources = [
        _source_2016(tmp_path / "a", "a", 0, first, {k[:12]: "benign" for k in first}),
        _source_2016(tmp_path / "b", "b", 1, second, {k[:12]: "malignant" for k in second}),
    ]
    local = merge_sources(sources, tmp_path / "local", log=_quiet)
    logs: list[str] = []
    on_cluster = merge_sources(sources, tmp_path / "cluster", MergeOptions(compute=parse_compute(cluster.address)),
                               log=logs.append)
    assert _outputs(tmp_path / "cluster") == _outputs(tmp_path / "local")
    assert len(local.metadata) == 31 and "truncated" in set(on_cluster.quarantine["reason"])
    assert any(f"checking images on the dask cluster at {cluster.address}" in line for line in logs)
    assert not list((tmp_path / "cluster").rglob(".tmp-*"))
    again = merge_sources(sources, tmp_path / "cluster", MergeOptions(compute=parse_compute(cluster.address)),
                          log=logs.append)
    assert (on_cluster.backend, on_cluster.compute_workers) == ("dask", 2)
    assert again.scanned == 0  # nothing new: no cluster needed, nothing checked twice
