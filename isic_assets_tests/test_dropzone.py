"""The dropzone: sidecars, completeness, the catalog, and dropzone_sensor ticks on a real folder.

A user copies a multi-GB zip into the dropzone over minutes; the sensor must never start a run on a
half-written file, and a complete drop must launch exactly one run that can really ingest it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from isic_assets.core import layout
from isic_assets.core.sources import dropzone
from isic_assets.core.sources.catalog import CatalogError, load_catalog
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets.defs.sensors import dropzone_sensor

ZIP_NAME = "ISBI2016_ISIC_Part3_Training_Data.zip"
CSV_NAME = "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
SIDECAR_2016 = f"format: isic2016\nfiles:\n  images: {ZIP_NAME}\n  ground_truth: {CSV_NAME}\n"


def write_tiny_isic2016(folder: Path, images: int = 6, seed: int = 0) -> dict[str, str]:
    """A small but real ISBI 2016 source (zip of JPEGs + headerless ground truth) in ``folder``.

    Shared by the dropzone, clean and concurrency tests: a genuine source the merge accepts, written
    in well under a second instead of the demo mirror's several seconds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    with zipfile.ZipFile(folder / ZIP_NAME, "w") as archive:
        for i in range(images):
            isic_id = f"ISIC_{9_000_000 + i:07d}"
            pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            archive.writestr(f"ISBI2016_ISIC_Part3_Training_Data/{isic_id}.jpg", buffer.getvalue())
            labels[isic_id] = "malignant" if i % 3 == 0 else "benign"
    (folder / CSV_NAME).write_text("".join(f"{i},{label}\r\n" for i, label in labels.items()))
    return labels


def bump(path: Path, extra: bytes = b"") -> None:
    """Change a file the way a copy in progress does: more bytes and a later modification time."""
    with path.open("ab") as handle:
        handle.write(extra)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def zone(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / dropzone.DEFAULT_FOLDER
    folder.mkdir(parents=True)
    return folder


def folder_drop(zone: Path, name: str = "batch1") -> Path:
    drop = zone / name
    write_tiny_isic2016(drop)
    (drop / dropzone.FOLDER_SIDECAR).write_text(SIDECAR_2016)
    return drop


# ----------------------------------------------------------------------------------------------
# discovery and completeness (pure)


def test_folder_and_loose_drops_are_discovered_with_their_names(zone):
    folder_drop(zone, "batch1")
    export = zone / "my_export.zip"
    export.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    (zone / "my_export.yaml").write_text("format: isic_archive_zip\nfiles:\n  archive: my_export.zip\n")
    drops = {d.name: d for d in dropzone.discover_drops(zone)}
    assert set(drops) == {"dropzone_batch1", "dropzone_my_export"}
    assert drops["dropzone_my_export"].ready_marker == zone / "my_export.ready"
    assert drops["dropzone_batch1"].ready_marker == zone / "batch1" / ".ready"
    source = drops["dropzone_batch1"].source()
    assert source.format == "isic2016"
    assert source.files["images"].urls[0].startswith("file:///")
    assert source.files["images"].filename == ZIP_NAME


@pytest.mark.parametrize(("sidecar", "problem"), [
    ("format: isic2099\nfiles: {images: a.zip}\n", "unknown format"),
    (f"format: isic2016\nfiles: {{images: {ZIP_NAME}}}\n", "needs the role"),
    ("format: isic2016\nfiles: {images: ../../etc/passwd.zip, ground_truth: gt.csv}\n", "inside the drop"),
    ("format: [isic2016\n", "unreadable sidecar"),
    ("format: isic2016\nfiles: {images: a.zip, ground_truth: b.csv}\nsha: x\n", "unknown sidecar keys"),
])
def test_a_bad_sidecar_is_reported_not_ingested(zone, sidecar, problem):
    """A typo in a sidecar must say what is wrong, and a path may never point outside the drop."""
    (zone / "bad.yaml").write_text(sidecar)
    [drop] = dropzone.discover_drops(zone)
    assert drop.problem is not None and problem in drop.problem
    assert dropzone.check_drop(drop, None).state == "invalid"
    assert dropzone.drop_sources(zone) == []


def test_a_half_copied_drop_waits_until_two_scans_agree(zone):
    drop_dir = folder_drop(zone)
    [drop] = dropzone.discover_drops(zone)
    first = dropzone.check_drop(drop, None)
    assert first.state == "waiting" and "first seen" in first.reason
    bump(drop_dir / ZIP_NAME, b"more bytes arriving")
    second = dropzone.check_drop(drop, first.snapshot)
    assert second.state == "waiting" and ZIP_NAME in second.reason
    third = dropzone.check_drop(drop, second.snapshot)
    assert third.state == "complete"
    assert third.fingerprint != first.fingerprint


def test_a_missing_file_keeps_the_drop_waiting(zone):
    drop_dir = folder_drop(zone)
    (drop_dir / CSV_NAME).unlink()
    [drop] = dropzone.discover_drops(zone)
    status = dropzone.check_drop(drop, None)
    assert status.state == "waiting" and CSV_NAME in status.reason
    assert dropzone.drop_sources(zone) == []  # a run could not resolve its files either


def test_the_ready_marker_completes_a_drop_at_once(zone):
    drop_dir = folder_drop(zone)
    (drop_dir / ".ready").touch()
    [drop] = dropzone.discover_drops(zone)
    assert dropzone.check_drop(drop, None).state == "complete"


def test_drops_join_the_catalog_after_every_other_source_with_a_group(zone, tmp_path):
    folder_drop(zone, "b")
    folder_drop(zone, "a")
    settings = IsicSettings(data_dir=str(tmp_path / "data"))
    catalog = settings.load_catalog()
    names = list(catalog.sources)
    assert names[-2:] == ["dropzone_a", "dropzone_b"]
    assert catalog.groups["dropzone"] == ("dropzone_a", "dropzone_b")
    assert [s.name for s in catalog.select("demo_isic2016,dropzone")] == ["demo_isic2016", "dropzone_a",
                                                                         "dropzone_b"]


def test_a_drop_name_that_clashes_is_an_error(zone):
    catalog = load_catalog()
    folder_drop(zone, "x")
    [source] = dropzone.drop_sources(zone)
    catalog.sources[source.name] = source
    with pytest.raises(CatalogError, match="clashes"):
        dropzone.add_to_catalog(catalog, [source])


# ----------------------------------------------------------------------------------------------
# dropzone_sensor ticks


def _tick(data: Path, cursor: str | None, instance: dg.DagsterInstance, base: str = "demo_isic2016"):
    settings = IsicSettings(data_dir=str(data), sources=base)
    with dg.build_sensor_context(cursor=cursor, resources={"isic": settings}, instance=instance) as context:
        return dropzone_sensor.evaluate_tick(context)


def test_no_dropzone_folder_is_a_skip_that_says_how(tmp_path):
    with dg.instance_for_test() as instance:
        result = _tick(tmp_path / "data", None, instance)
    assert not result.run_requests
    assert "no dropzone folder" in result.skip_message
    assert not (tmp_path / "data" / "dropzone").exists()  # the sensor only reads


def test_sensor_waits_for_a_half_copied_drop_then_launches_exactly_once(zone, tmp_path):
    data = tmp_path / "data"
    drop_dir = folder_drop(zone)
    with dg.instance_for_test() as instance:
        first = _tick(data, None, instance)
        assert not first.run_requests and "first seen" in first.skip_message
        bump(drop_dir / ZIP_NAME, b"still copying")
        second = _tick(data, first.cursor, instance)
        assert not second.run_requests and "still changing" in second.skip_message
        third = _tick(data, second.cursor, instance)
        assert len(third.run_requests) == 1
        request = third.run_requests[0]
        assert request.run_key.startswith("dropzone-")
        config = request.run_config["resources"]["isic"]["config"]
        assert config["sources"] == "demo_isic2016,dropzone_batch1"
        assert Path(config["dropzone"]) == zone.resolve()
        assert request.tags["isic/drops"] == "dropzone_batch1"
        assert json.loads(third.cursor)["launched"]["dropzone_batch1"]
        replay = _tick(data, second.cursor, instance)  # the same tick evaluated again
        assert replay.run_requests[0].run_key == request.run_key
        fourth = _tick(data, third.cursor, instance)
        assert not fourth.run_requests and "already ingested" in fourth.skip_message
        # Replacing the drop's data is a new version: wait for it to settle, then one new run.
        bump(drop_dir / CSV_NAME, b"ISIC_9000099,benign\r\n")
        fifth = _tick(data, fourth.cursor, instance)
        assert not fifth.run_requests
        sixth = _tick(data, fifth.cursor, instance)
        assert len(sixth.run_requests) == 1 and sixth.run_requests[0].run_key != request.run_key


def test_a_drop_removed_and_put_back_unchanged_launches_again(zone, tmp_path):
    """Taking a drop out and back (same files, same times) is a new request, not a replayed one."""
    data = tmp_path / "data"
    drop_dir = folder_drop(zone)
    (drop_dir / ".ready").touch()
    with dg.instance_for_test() as instance:
        first = _tick(data, None, instance)
        parked = tmp_path / "parked"
        drop_dir.rename(parked)
        gone = _tick(data, first.cursor, instance)
        assert not gone.run_requests and "dropzone_batch1" not in gone.cursor
        parked.rename(drop_dir)
        back = _tick(data, gone.cursor, instance)
    assert len(back.run_requests) == 1
    assert back.run_requests[0].run_key != first.run_requests[0].run_key


def test_a_drop_with_a_ready_marker_launches_at_the_first_scan(zone, tmp_path):
    (folder_drop(zone) / ".ready").touch()
    with dg.instance_for_test() as instance:
        result = _tick(tmp_path / "data", None, instance)
    assert len(result.run_requests) == 1


def test_the_launched_run_config_really_ingests_the_drop(zone, tmp_path):
    """The sensor's own run config, run for real: the drop is downloaded (file://) and merged.

    ISIC_SOURCES=dropzone (every drop) keeps this test off the demo mirror; the run config then
    names the group and the new drop, and the run must resolve both.
    """
    data = tmp_path / "data"
    drop_dir = folder_drop(zone)
    labels = write_tiny_isic2016(drop_dir)
    (drop_dir / ".ready").touch()
    with dg.instance_for_test() as instance:
        [request] = _tick(data, None, instance, base="dropzone").run_requests
        config = request.run_config["resources"]["isic"]["config"]
        assert config["sources"] == "dropzone,dropzone_batch1"
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], instance=instance,
            resources={"isic": IsicSettings()},
            run_config={"resources": {"isic": {"config": {**config, "data_dir": str(data)}}}},
            selection=["raw_zips", "merged_images", "merged_metadata"],
        )
    assert result.success
    copied = data / layout.DOWNLOADS / "dropzone_batch1" / ZIP_NAME
    assert copied.read_bytes() == (drop_dir / ZIP_NAME).read_bytes()
    merged = (data / layout.MERGED / "metadata.csv").read_text()
    assert all(isic_id in merged for isic_id in labels)


def test_every_tick_names_every_drop_with_its_state_even_when_one_launches(zone, tmp_path, capsys):
    """A bad sidecar is named (rejected, and why) in the same tick that launches a valid drop, a
    waiting drop says what it waits for, and the bad drop does not stop the valid one's run."""
    data = tmp_path / "data"
    (folder_drop(zone, "good") / ".ready").touch()
    folder_drop(zone, "later")
    (zone / "typo.yaml").write_text("format: isic2091\nfiles: {images: x.zip}\n")
    with dg.instance_for_test() as instance:
        first = _tick(data, None, instance)
    assert len(first.run_requests) == 1
    launched = first.run_requests[0].run_config["resources"]["isic"]["config"]["sources"]
    assert launched.endswith(",dropzone_good")
    logged = capsys.readouterr().err  # the sensor's log line, as `dagster sensor preview` prints it
    assert "dropzone_good: complete, new (.ready marker present)" in logged
    assert "dropzone_later: waiting, first seen" in logged
    assert "dropzone_typo: rejected" in logged and "unknown format 'isic2091'" in logged
    # The run the tick requests resolves its sources although the rejected drop is still there.
    settings = IsicSettings(data_dir=str(data), sources=launched, dropzone=str(zone))
    assert [s.name for s in settings.selected_sources()][-1] == "dropzone_good"
    with dg.instance_for_test() as instance:
        second = _tick(data, first.cursor, instance)
    assert len(second.run_requests) == 1  # "later" settled
    logged = capsys.readouterr().err
    for expected in ("dropzone_good: complete, already ingested", "dropzone_later: complete, new",
                     "dropzone_typo: rejected"):
        assert expected in logged, logged
    with dg.instance_for_test() as instance:
        third = _tick(data, second.cursor, instance)
    assert not third.run_requests
    assert "dropzone_typo: rejected" in third.skip_message and "already ingested" in third.skip_message
