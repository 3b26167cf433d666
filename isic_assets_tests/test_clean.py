"""clean_intermediates: frees disk only where every later step is done, and the next run still works.

The raw archives are the biggest thing on disk, but deleting them before the merge has consumed them
would break the next run; these tests materialize a small real source in a real instance and check
both the refusals and what the next run pays after a deletion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from isic_assets.core import layout
from isic_assets.core.operation.cleanup import TARGETS, parse_targets, plan_cleanup
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets_tests.test_dropzone import CSV_NAME, ZIP_NAME, write_tiny_isic2016

REPO = Path(__file__).resolve().parents[1]
MERGE = ["raw_zips", "merged_images", "merged_metadata"]


def tiny_catalog(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    write_tiny_isic2016(source)
    catalog = {"sources": {"tiny": {"format": "isic2016", "files": {
        "images": (source / ZIP_NAME).as_uri(), "ground_truth": (source / CSV_NAME).as_uri()}}}}
    path = tmp_path / "catalog.yaml"
    path.write_text(json.dumps(catalog))
    return path


def materialize(settings: IsicSettings, instance: dg.DagsterInstance, selection: list[str]) -> dg.ExecuteInJobResult:
    result = dg.materialize([*defs.assets, *defs.asset_checks], instance=instance, resources={"isic": settings},
                            selection=selection)
    assert result.success
    return result


def clean(settings: IsicSettings, instance: dg.DagsterInstance, targets: list[str], dry_run: bool = False,
          ) -> dg.ExecuteInJobResult:
    job = defs.resolve_job_def("clean_intermediates")
    return job.execute_in_process(
        instance=instance, resources={"isic": settings}, raise_on_error=False,
        run_config={"ops": {"delete_intermediate_folders": {"config": {"targets": targets, "dry_run": dry_run}}}},
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, IsicSettings, dg.DagsterInstance]]:
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="tiny", catalog=str(tiny_catalog(tmp_path)))
    with dg.instance_for_test() as instance:
        yield tmp_path / "data", settings, instance


def _messages(instance: dg.DagsterInstance, result: dg.ExecuteInJobResult) -> str:
    records = instance.all_logs(result.run_id)
    return "\n".join(r.user_message for r in records)


def test_downloads_go_once_merged_and_the_next_run_downloads_them_again(setup):
    data, settings, instance = setup
    materialize(settings, instance, MERGE)
    metadata_before = (data / layout.MERGED / "metadata.csv").read_bytes()
    images_before = sorted(p.name for p in (data / layout.MERGED / "images").iterdir())
    result = clean(settings, instance, ["downloads"])
    assert result.success
    assert not (data / layout.DOWNLOADS).exists()
    assert (data / layout.MERGED / "metadata.csv").read_bytes() == metadata_before
    assert sorted(p.name for p in (data / layout.MERGED / "images").iterdir()) == images_before
    messages = _messages(instance, result)
    assert "deleting" in messages and "the next raw_zips downloads every file again" in messages
    # What the deletion costs: the next run downloads again, and decodes nothing again.
    again = materialize(settings, instance, MERGE)
    raw = again.asset_materializations_for_node("raw_zips")[0].metadata
    assert raw["files_by_status"].value == {"downloaded": 2}
    images = again.asset_materializations_for_node("merge_sources")[0].metadata
    assert images["members_checked_this_run"].value == 0
    assert (data / layout.DOWNLOADS / "tiny" / ZIP_NAME).is_file()


def test_downloads_stay_while_the_merge_is_older_than_them(setup):
    """raw_zips re-ran after the merge: the merge still needs these files, so nothing goes."""
    data, settings, instance = setup
    materialize(settings, instance, MERGE)
    materialize(settings, instance, ["raw_zips"])
    result = clean(settings, instance, ["downloads"])
    assert result.success
    assert (data / layout.DOWNLOADS / "tiny" / ZIP_NAME).is_file()
    assert "merged_images is older than the latest raw_zips" in _messages(instance, result)


def test_a_dry_run_and_an_unknown_history_delete_nothing(setup, tmp_path):
    data, settings, instance = setup
    materialize(settings, instance, MERGE)
    (data / layout.DEMO_MIRROR).mkdir()
    (data / layout.DEMO_MIRROR / "MIRROR.json").write_text("{}")
    dry = clean(settings, instance, ["downloads", "demo_mirror"], dry_run=True)
    assert dry.success and "would delete" in _messages(instance, dry)
    assert (data / layout.DOWNLOADS).is_dir() and (data / layout.DEMO_MIRROR).is_dir()
    with dg.instance_for_test() as stranger:  # an instance that never saw these materializations
        result = clean(settings, stranger, ["downloads", "demo_mirror"])
        assert "never materialized" in _messages(stranger, result)
    assert (data / layout.DOWNLOADS).is_dir() and (data / layout.DEMO_MIRROR).is_dir()
    done = clean(settings, instance, ["demo_mirror"])
    assert done.success and not (data / layout.DEMO_MIRROR).exists() and (data / layout.DOWNLOADS).is_dir()


def test_merged_images_go_only_after_transformed_images(tmp_path):
    """Pure plan: a reader never materialized, or older than the writer, keeps the folder."""
    (tmp_path / layout.MERGED / "images").mkdir(parents=True)
    (tmp_path / layout.MERGED / "images" / "ISIC_0000000.jpg").write_bytes(b"x" * 10)
    target = parse_targets(["merged_images"])
    keep = plan_cleanup(tmp_path, target, {"merged_images": 100.0, "transformed_images": None})
    older = plan_cleanup(tmp_path, target, {"merged_images": 100.0, "transformed_images": 50.0})
    ok = plan_cleanup(tmp_path, target, {"merged_images": 100.0, "transformed_images": 150.0})
    assert [d.delete for d in (*keep, *older, *ok)] == [False, False, True]
    assert ok[0].size_bytes == 10


def test_targets_default_and_unknown_ones_are_refused():
    assert [t.name for t in parse_targets("")] == ["downloads", "demo_mirror"]
    assert [t.name for t in parse_targets("merged_images, downloads")] == ["merged_images", "downloads"]
    with pytest.raises(ValueError, match="unknown clean target"):
        parse_targets("everything")
    assert all(t.cost for t in TARGETS.values())


def test_cli_job_reads_targets_from_the_environment_and_writes_a_run_log(tmp_path, monkeypatch):
    """`make clean-intermediates CLEAN=...` runs exactly this command in the project instance."""
    monkeypatch.setenv("ISIC_DATA_DIR", str(tmp_path / "data"))  # where the in-process run logs go too
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / ".dagster_home" / "dagster.yaml").read_text())
    settings = IsicSettings(data_dir=str(tmp_path / "data"), sources="tiny", catalog=str(tiny_catalog(tmp_path)))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        materialize(settings, instance, MERGE)
    env = {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
           "ISIC_CLEAN_TARGETS": "downloads"}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "job", "execute", "-m", "isic_assets", "-j", "clean_intermediates"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "data" / layout.DOWNLOADS).exists()
    logs = [p.read_text() for p in (tmp_path / "data" / layout.LOGS).glob("*.log")]
    assert len(logs) == 2  # the materialization and the clean job, one file each
    [text] = [t for t in logs if "delete_intermediate_folders" in t]
    assert "delete_intermediate_folders - STEP_SUCCESS" in text and "deleting" in text


def test_cleanup_decides_per_data_root(setup, tmp_path):
    """Two data roots share one instance: raw_zips on the other root says nothing about this one."""
    data, settings, instance = setup
    materialize(settings, instance, MERGE)
    other = IsicSettings(data_dir=str(tmp_path / "other"), sources="tiny", catalog=settings.catalog)
    materialize(other, instance, ["raw_zips"])  # later, elsewhere: must not keep this root's downloads
    result = clean(settings, instance, ["downloads"])
    assert result.success, _messages(instance, result)
    assert not (data / layout.DOWNLOADS).exists()
    # The other root was never merged: its downloads stay, with that reason.
    kept = clean(other, instance, ["downloads"])
    assert (tmp_path / "other" / layout.DOWNLOADS / "tiny" / ZIP_NAME).is_file()
    assert "merged_images was never materialized" in _messages(instance, kept)
    record = instance.get_latest_materialization_event(dg.AssetKey("raw_zips"))
    assert record.asset_materialization.metadata["isic/data_root"].value == str((tmp_path / "other").resolve())


def test_make_clean_deletes_only_what_the_pipeline_wrote_and_says_so(tmp_path):
    data = tmp_path / "data root"
    for folder in (layout.DOWNLOADS, layout.MERGED, layout.TRANSFORMED, layout.SPLITS_DIR, layout.LOGS,
                   layout.DEMO_MIRROR):
        (data / folder).mkdir(parents=True)
        (data / folder / "f.bin").write_bytes(b"x" * 1000)
    (data / "dropzone" / "batch").mkdir(parents=True)
    (data / "dropzone" / "batch" / "drop.yaml").write_text("format: isic2016\n")
    (data / "my_catalog.yaml").write_text("sources: {}\n")
    home = tmp_path / "home"
    (home / "storage").mkdir(parents=True)
    env = {**os.environ, "ISIC_DATA_DIR": str(data)}
    done = subprocess.run(["make", "-s", "-o", ".venv/.installed", "clean", f"DAGSTER_HOME={home}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for folder in (layout.DOWNLOADS, layout.MERGED, layout.TRANSFORMED, layout.SPLITS_DIR, layout.LOGS,
                   layout.DEMO_MIRROR):
        assert not (data / folder).exists()
        assert f"deleting {data / folder} (0.0 MB)" in done.stdout
    assert (data / "dropzone" / "batch" / "drop.yaml").is_file() and (data / "my_catalog.yaml").is_file()
    assert f"kept everything else in {data} (not written by the pipeline): dropzone, my_catalog.yaml" in done.stdout
    assert not (home / "storage").exists() and f"deleting {home}/storage" in done.stdout

    # A dropzone pointed inside a pipeline folder keeps that folder, and says why.
    (data / layout.MERGED / "drops").mkdir(parents=True)
    env["ISIC_DROPZONE"] = str(data / layout.MERGED / "drops")
    again = subprocess.run(["make", "-s", "-o", ".venv/.installed", "clean", f"DAGSTER_HOME={home}"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert (data / layout.MERGED / "drops").is_dir()
    assert f"keeping {data / layout.MERGED}: it holds ISIC_DROPZONE=" in again.stdout
