"""The whole graph on the demo mirror, in a real Dagster instance: what `make demo` promises.

The demo mirror records in MIRROR.json the facts a correct merge must reproduce (kept images,
class counts, duplicates, corrupt members), so these tests compare against ground truth written by
the generator, not against numbers copied from a previous run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from isic_assets.core import layout
from isic_assets.dagster_layer.resources import IsicSettings
from isic_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]


def _materialize(data_dir: Path, instance: dg.DagsterInstance, selection: str | list[str] = "*",
                 run_config: dict | None = None) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        resources={"isic": IsicSettings(data_dir=str(data_dir), sources="demo")},
        selection=selection,
        run_config=run_config or {},
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInJobResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Two runs of the whole graph on the demo mirror: the first does the work, the second nothing."""
    data_dir = tmp_path_factory.mktemp("isic_data")
    with dg.instance_for_test() as instance:
        first = _materialize(data_dir, instance)
        second = _materialize(data_dir, instance)
        yield data_dir, first, second, instance


@pytest.fixture(scope="module")
def expected(demo_runs) -> dict:
    data_dir = demo_runs[0]
    return json.loads((data_dir / layout.DEMO_MIRROR / "MIRROR.json").read_text())["expected"]


def test_whole_graph_succeeds(demo_runs):
    _, first, second, _ = demo_runs
    assert first.success
    assert second.success


def test_checks_pass_on_the_demo(demo_runs):
    _, first, _, _ = demo_runs
    results = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in first.get_asset_check_evaluations()}
    assert results[("merged_metadata", "missing_data")] is True


def test_merge_reproduces_the_mirror_ground_truth(demo_runs, expected):
    data_dir, _, _, _ = demo_runs
    merged = expected["merged"]
    frame = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(frame) == merged["kept_images"]
    assert frame["benign_malignant"].value_counts().to_dict() == {k: v for k, v in merged["benign_malignant"].items()}
    assert frame["isic_id"].is_unique
    images = sorted(p.name for p in (data_dir / layout.MERGED / "images").iterdir())
    assert images == sorted(frame["image"].str.removeprefix("images/"))


def test_every_dropped_duplicate_is_recorded_with_the_id_kept(demo_runs, expected):
    data_dir, _, _, _ = demo_runs
    dups = pd.read_csv(data_dir / layout.MERGED / "duplicates.csv", dtype=str, keep_default_na=False)
    kept = set(pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str)["isic_id"])
    assert set(dups["kept_isic_id"]) <= kept
    cross_id = dups[dups["isic_id"] != dups["kept_isic_id"]]
    assert len(cross_id) == expected["merged"]["dropped_as_duplicates"]
    for pair in expected["byte_identical_pairs"]:
        assert len(set(pair["ids"]) & kept) == 1, pair
    for a, b in expected["duplicate_pairs"]:
        assert len({a, b} & kept) == 1, (a, b)


def test_corrupt_and_missing_images_are_quarantined_not_dropped(demo_runs, expected):
    data_dir, _, _, _ = demo_runs
    quarantine = pd.read_csv(data_dir / layout.MERGED / "quarantine.csv", dtype=str, keep_default_na=False)
    assert set(expected["merged"]["ids_without_readable_image"]) <= set(quarantine["isic_id"])
    assert set(expected["corrupt_ids"]) <= set(quarantine.loc[quarantine["member"] != "", "isic_id"])


def test_label_conflict_is_reported(demo_runs, expected):
    data_dir, _, _, _ = demo_runs
    conflicts = pd.read_csv(data_dir / layout.MERGED / "conflicts.csv", dtype=str, keep_default_na=False)
    assert expected["label_conflict_id"] in set(conflicts["isic_id"])


def test_parquet_matches_csv(demo_runs):
    data_dir, _, _, _ = demo_runs
    csv = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    parquet = pd.read_parquet(data_dir / layout.MERGED / "metadata.parquet")
    assert list(parquet.columns) == list(csv.columns)
    assert parquet["isic_id"].tolist() == csv["isic_id"].tolist()
    assert str(parquet["age_approx"].dtype) == "Int64"


def test_second_run_downloads_and_decodes_nothing(demo_runs):
    """Idempotent and incremental: unchanged remote files are not fetched, no member is re-checked."""
    _, first, second, _ = demo_runs
    assert _metadata(first, "merged_images")["members_checked_this_run"] > 500
    raw = _metadata(second, "raw_zips")
    assert raw["files_by_status"] == {"not_modified": raw["files"]}
    assert raw["transferred_MB"] == 0
    images = _metadata(second, "merged_images")
    assert images["members_checked_this_run"] == 0
    assert images["images_written_this_run"] == 0
    assert images["images_deleted_this_run"] == 0


def test_data_versions_are_stable_when_nothing_changed(demo_runs):
    _, _, _, instance = demo_runs
    for key in ("raw_zips", "merged_images", "merged_metadata"):
        records = instance.fetch_materializations(dg.AssetKey(key), limit=2).records
        versions = {r.asset_materialization.tags.get("dagster/data_version") for r in records}
        assert len(records) == 2 and len(versions) == 1, key


def test_ui_metadata_is_present(demo_runs):
    _, first, _, _ = demo_runs
    images = _metadata(first, "merged_images")
    assert images["images"] == images["dagster/row_count"]
    assert {"per_source", "duplicates_by_reason", "quarantined_by_reason", "path"} <= set(images)
    meta = _metadata(first, "merged_metadata")
    assert {"class_counts", "classes_per_source", "preview", "dagster/column_schema", "path"} <= set(meta)
    assert Path(meta["path"]).is_absolute()


def test_missing_data_blocks_downstream_when_labels_are_missing(tmp_path, demo_runs):
    """A threshold the demo cannot meet must fail the blocking ERROR check."""
    data_dir, _, _, _ = demo_runs
    with dg.instance_for_test() as instance:
        result = _materialize(
            data_dir, instance, selection=["merged_images", "merged_metadata"],
            run_config={"ops": {"merged_metadata_missing_data": {"config": {"max_missing_label_pct": 0.0}}}},
        )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["missing_data"].passed is False
    assert evaluations["missing_data"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["missing_data"].metadata["label_threshold_pct"].value == 0.0


def test_cli_materialize_uses_the_project_instance(tmp_path):
    """The README's `dagster asset materialize -m isic_assets --select '*'` path, for real."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
           "ISIC_SOURCES": "demo_isic2016,demo_isic2018"}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "asset", "materialize", "-m", "isic_assets", "--select", "*"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "data" / layout.MERGED / "metadata.csv", dtype=str)
    assert set(frame["source"]) == {"demo_isic2016", "demo_isic2018"}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey("merged_metadata")) is not None
