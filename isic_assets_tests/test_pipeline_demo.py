"""The whole graph on the demo mirror, in a real Dagster instance: what `make demo` promises.

The demo mirror records in MIRROR.json the facts a correct merge must reproduce (kept images,
class counts, duplicates, corrupt members), so these tests compare against ground truth written by
the generator, not against numbers copied from a previous run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from isic_assets.core import layout
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings

from .demo_support import copy_demo_mirror

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


@pytest.fixture
def own_data_dir(demo_runs, tmp_path) -> Path:
    """A private copy of the shared demo outputs, for a test whose runs rewrite them.

    The module's two runs are shared by the read-only tests; a test that re-materializes with other
    config (a failing check, a refused zip) works on its copy, so no test sees another's outputs and
    the order of tests does not matter. The mirror itself is left out: these runs never download.
    """
    copy = tmp_path / "isic_data"
    shutil.copytree(demo_runs[0], copy, ignore=shutil.ignore_patterns(layout.DEMO_MIRROR, "logs", ".lock"))
    return copy


@pytest.fixture(scope="module")
def expected(demo_runs) -> dict:
    data_dir = demo_runs[0]
    return json.loads((data_dir / layout.DEMO_MIRROR / "MIRROR.json").read_text())["expected"]


def test_whole_graph_succeeds(demo_runs):
    _, first, second, _ = demo_runs
    assert first.success
    assert second.success


def _check_outcomes(result: dg.ExecuteInJobResult) -> list[dict]:
    return sorted(
        ({"asset": e.asset_key.to_user_string(), "check": e.check_name, "passed": e.passed,
          "severity": e.severity.value} for e in result.get_asset_check_evaluations()),
        key=lambda outcome: (outcome["asset"], outcome["check"]),
    )


def test_every_check_outcome_matches_the_mirror(demo_runs, expected):
    """Every check evaluated, by name, pass/fail and severity, exactly as MIRROR.json records it.

    Both runs: the second one (nothing to do) must judge the same outputs the same way. A check added
    or renamed must show up here until the generator's EXPECTED_CHECKS lists it.
    """
    _, first, second, _ = demo_runs
    wanted = sorted(expected["checks"], key=lambda outcome: (outcome["asset"], outcome["check"]))
    assert _check_outcomes(first) == wanted
    assert _check_outcomes(second) == wanted


def test_merge_reproduces_the_mirror_ground_truth(demo_runs, expected):
    data_dir, _, _, _ = demo_runs
    merged = expected["merged"]
    frame = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(frame) == merged["kept_images"]
    assert frame["benign_malignant"].value_counts().to_dict() == dict(merged["benign_malignant"].items())
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


def test_missing_data_blocks_downstream_when_labels_are_missing(own_data_dir):
    """A threshold the demo cannot meet must fail the blocking ERROR check."""
    data_dir = own_data_dir
    with dg.instance_for_test() as instance:
        result = _materialize(
            data_dir, instance, selection=["merged_images", "merged_metadata"],
            run_config={"ops": {"merged_metadata_missing_data": {"config": {"max_missing_label_pct": 0.0}}}},
        )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["missing_data"].passed is False
    assert evaluations["missing_data"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["missing_data"].metadata["label_threshold_pct"].value == 0.0


def test_cli_materialize_uses_the_project_instance(tmp_path, generated_demo_mirror):
    """The README's `dagster asset materialize -m isic_assets --select '*'` path, for real."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    copy_demo_mirror(generated_demo_mirror, tmp_path / "data")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
           "ISIC_SOURCES": "demo_isic2016,demo_isic2018"}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "asset", "materialize", "-m", "isic_assets", "--select", "*"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "data" / layout.MERGED / "metadata.csv", dtype=str)
    assert set(frame["source"]) == {"demo_isic2016", "demo_isic2018"}
    # What `make demo` shows of it (isic_assets/run_progress.py): a line or a few per stage, each
    # check's verdict, no warning a user cannot act on.
    from isic_assets.run_progress import condense

    shown = list(condense((done.stdout + done.stderr).splitlines()))
    assert len(shown) <= 40, "\n".join(shown)
    assert not any("Warning" in line for line in shown), "\n".join(shown)
    for step in ("raw_zips", "merge_sources", "transformed_images", "eda_plots", "balanced_splits"):
        assert any(line.startswith(f"[{step}] done") for line in shown), "\n".join(shown)
    assert any(line.startswith("check no_leakage ") for line in shown), "\n".join(shown)
    assert shown[-1] == "run finished: success", "\n".join(shown)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey("merged_metadata")) is not None


# ----------------------------------------------------------------------------------------------
# transformed_images, eda_plots, balanced_splits on the demo


def test_transformed_images_cover_every_merged_image(demo_runs):
    data_dir, first, second, _ = demo_runs
    merged = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    transformed = pd.read_csv(data_dir / layout.TRANSFORMED / "metadata.csv", dtype=str, keep_default_na=False)
    assert sorted(transformed["isic_id"]) == sorted(merged["isic_id"])
    assert set(transformed["width"]) == {"256"} and set(transformed["height"]) == {"256"}
    assert set(transformed["transform"]) == {"pad 256x256; jpeg q95"}
    norm = json.loads((data_dir / layout.TRANSFORMED / "normalization.json").read_text())
    assert norm["image_count"] == len(merged) and len(norm["mean"]) == 3
    assert _metadata(first, "transformed_images")["processed_this_run"] == len(merged)
    assert _metadata(second, "transformed_images")["processed_this_run"] == 0


def test_eda_plots_written_with_figures_in_the_ui(demo_runs):
    data_dir, first, _, _ = demo_runs
    eda = data_dir / layout.EDA
    pngs = sorted(p.name for p in eda.glob("*.png"))
    assert {"class_distribution.png", "image_dimensions.png", "missing_values.png"} <= set(pngs)
    assert all((eda / name).stat().st_size > 5000 for name in pngs)
    meta = _metadata(first, "eda_plots")
    assert meta["figures"].count("data:image/png;base64,") == len(pngs)
    assert Path(meta["report"]).is_file()


def test_the_demo_has_no_false_near_duplicate_and_the_report_says_so(demo_runs):
    """The training sources' re-exports are all on the 2020 duplicates list, so the merge keeps one of
    each and no near-duplicate is left to find; a pair here would be two different pictures (the
    evaluation sources plant one that is not listed: test_evaluation_sets.py)."""
    data_dir, _, _, _ = demo_runs
    pairs = pd.read_csv(data_dir / layout.MERGED / layout.NEAR_DUPLICATES_CSV, dtype=str)
    assert pairs.empty, pairs
    report = (data_dir / layout.EDA / "report.html").read_text()
    section = report[report.index('id="near-duplicates"'):]
    assert "near_duplicates found no near-duplicate pairs." in section
    assert "data:image/jpeg;base64," not in section


def test_balanced_splits_are_balanced_and_leak_free(demo_runs):
    data_dir, first, _, _ = demo_runs
    out = data_dir / layout.SPLITS_DIR
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    assert (counts["benign"] == counts["malignant"]).all(), counts
    for split in ("train", "validation", "test"):
        for label in ("benign", "malignant"):
            files = {p.stem for p in (out / split / label).glob("*.jpg")}
            expected = set(manifest.loc[(manifest["split"] == split) & (manifest["label"] == label), "isic_id"])
            assert files == expected
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in first.get_asset_check_evaluations()}
    assert checks[("balanced_splits", "no_leakage")] is True
    assert checks[("balanced_splits", "split_class_balance")] is True
    assert checks[("merged_images", "merged_images_readable")] is True
    assert checks[("transformed_images", "transformed_images_readable")] is True
    # The demo is small: after undersampling by whole groups, validation and test get fewer than 10
    # images of a class, which the check reports (ERROR, not blocking: the rest of the graph runs).
    assert checks[("merged_metadata", "balanced_dataset_buildable")] is False
    [buildable] = [e for e in first.get_asset_check_evaluations() if e.check_name == "balanced_dataset_buildable"]
    assert "fewer than the 10 required" in buildable.description
    assert checks[("merged_metadata", "missing_data")] is True
    assert checks[("balanced_splits", "split_proportions")] is True
    assert checks[("balanced_splits", "no_evaluation_leakage")] is True
    assert len(checks) == len(defs.asset_checks) == 8


def test_every_asset_has_a_data_version_and_tables_a_schema_of_their_real_types(demo_runs):
    data_dir, first, _, _ = demo_runs
    versions = {e.asset_key.to_user_string(): e.materialization.tags.get("dagster/data_version")
                for e in first.get_asset_materialization_events()}
    assert set(versions) == {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert all(versions.values()), versions
    merged = {c.name: c.type for c in _metadata(first, "merged_metadata")["dagster/column_schema"].columns}
    stored = pd.read_parquet(data_dir / layout.MERGED / layout.METADATA_PARQUET)
    assert list(merged) == list(stored.columns)
    assert merged["age_approx"] == merged["width"] == "int" and merged["label_conflict"] == "bool"
    assert merged["isic_id"] == "string"
    transformed = {c.name: c.type for c in _metadata(first, "transformed_images")["dagster/column_schema"].columns}
    written = pd.read_csv(data_dir / layout.TRANSFORMED / layout.METADATA_CSV, nrows=1)
    assert list(transformed) == list(written.columns)
    assert transformed["source_width"] == transformed["width"] == "int" and transformed["transform"] == "string"
    manifest = {c.name: c.type for c in _metadata(first, "balanced_splits")["dagster/column_schema"].columns}
    assert manifest["is_augmented"] == "bool" and manifest["split"] == "string"


def test_failing_blocking_check_stops_downstream_in_the_same_run(own_data_dir):
    """missing_data is ERROR + blocking: transformed_images and everything after must not run."""
    data_dir = own_data_dir
    with dg.instance_for_test() as instance:
        result = _materialize(
            data_dir, instance, selection=["merged_images", "merged_metadata", "transformed_images"],
            run_config={"ops": {"merged_metadata_missing_data": {"config": {"max_missing_label_pct": 0.0}}}},
        )
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "transformed_images" not in materialized
    skipped = [e for e in result.all_events if e.event_type_value == "STEP_SKIPPED"]
    failures = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures or skipped


def test_failing_class_balance_blocks_an_asset_downstream_of_balanced_splits(own_data_dir):
    """A consumer of the splits (here a stand-in training asset) must never see unbalanced splits."""
    data_dir = own_data_dir
    ran = []

    @dg.asset(deps=["balanced_splits"])
    def train_model() -> None:
        ran.append(True)

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks, train_model], instance=instance,
            resources={"isic": IsicSettings(data_dir=str(data_dir), sources="demo")},
            selection=["balanced_splits", "train_model"],
            run_config={"ops": {
                "balanced_splits": {"config": {"strategy": "none"}},
                "balanced_splits_split_class_balance": {"config": {"tolerance": 0.0}},
            }},
            raise_on_error=False,
        )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()
                   if e.asset_key.to_user_string() == "balanced_splits"}
    assert evaluations["split_class_balance"].passed is False
    assert not ran
    assert not result.success


def test_make_demo_summary_names_every_output(demo_runs, expected):
    """`make demo` ends by printing where the outputs are and the headline counts."""
    from isic_assets.summary import summarize

    data_dir, _, _, _ = demo_runs
    text = "\n".join(summarize(data_dir))
    assert f"{expected['merged']['kept_images']} images" in text
    for folder in (layout.DOWNLOADS, layout.MERGED, layout.TRANSFORMED, layout.EDA, layout.SPLITS_DIR):
        assert folder + "/" in text
    assert "DATASET_CARD.md" in text and "report.html" in text


def test_label_conflicts_are_flagged_and_left_out_of_the_splits(demo_runs, expected):
    """An image that one release calls benign and another malignant must not be trained on silently."""
    data_dir, first, _, _ = demo_runs
    conflict_id = expected["label_conflict_id"]
    merged = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    flags = merged.set_index("isic_id")["label_conflict"]
    assert flags[conflict_id] == "True"
    assert (flags == "True").sum() == 1
    manifest = pd.read_csv(data_dir / layout.SPLITS_DIR / "manifest.csv", dtype=str, keep_default_na=False)
    assert conflict_id not in set(manifest["isic_id"])
    assert _metadata(first, "balanced_splits")["excluded"]["label_conflict"] == 1


def test_zip_bomb_limit_fails_the_merge_with_the_config_to_change(own_data_dir):
    """A refused archive stops the run with the archive named and the launchpad field to raise."""
    data_dir = own_data_dir
    with dg.instance_for_test() as instance:
        result = _materialize(data_dir, instance, selection=["merged_images", "merged_metadata"],
                              run_config={"ops": {"merge_sources": {"config": {"max_member_mb": 0.01}}}})
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].event_specific_data.error.to_string()
    assert ".zip" in message and "max_member_mb" in message
    metadata = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str)
    assert len(metadata) > 500, "the refused run must leave the previous outputs untouched"


def _outputs(data_dir: Path) -> dict[str, str]:
    """sha256 of every file the graph wrote, by path relative to the data root.

    Left out: the downloads and the mirror (inputs), run logs, `_state/` journals, the data-root
    lock (its owner is a run id) and the EDA figures and report (the data root's path is in them).
    """
    import hashlib

    skip = {layout.DEMO_MIRROR, layout.DOWNLOADS, layout.LOGS, layout.STATE_DIR, layout.EDA, layout.STAGE_RECORDS,
            ".lock"}
    return {p.relative_to(data_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*"))
            if p.is_file() and not skip & set(p.relative_to(data_dir).parts)}


def _warnings(instance: dg.DagsterInstance, result: dg.ExecuteInJobResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id)
            if e.level == logging.WARNING and e.user_message]


@dataclass
class OddRootRun:
    root: Path
    result: dg.ExecuteInJobResult
    warnings: list[str]
    not_exfat: str | None  # why the root is a plain folder (exFAT could not be mounted here), else None


@pytest.fixture(scope="module")
def odd_root_run(demo_runs, tmp_path_factory, generated_demo_mirror) -> Iterator[OddRootRun]:
    """One whole-graph run on the data root a user's USB disk gives: an exFAT volume (no hard links)
    mounted at a path with spaces and accents, named through ISIC_DATA_DIR.

    The two odd-root tests below read this one run; each was a whole-graph run of its own. Where
    exFAT cannot be mounted (not root, no driver) the root is a plain folder of the same name, so the
    path's part is still proven and the exFAT test skips with the reason.
    """
    from .tmpfs_support import mounted_exfat

    root = tmp_path_factory.mktemp("odd_root") / "données patients" / "ü 1"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(mounted_exfat(root, 1024))
            not_exfat = None
        except pytest.skip.Exception as why:
            not_exfat = str(why)
            root.mkdir(parents=True)
        copy_demo_mirror(generated_demo_mirror, root)  # the generator's fast path (demo_support.py)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv(layout.DATA_DIR_ENV, str(root))
        instance = stack.enter_context(dg.instance_for_test())
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], instance=instance,
            resources={"isic": IsicSettings(sources="demo")}, selection="*", raise_on_error=False,
        )
        yield OddRootRun(root, result, _warnings(instance, result), not_exfat)


def test_a_data_root_with_spaces_and_non_ascii_characters_gives_the_same_outputs(demo_runs, odd_root_run):
    """ISIC_DATA_DIR with spaces and accents, as a user's home folder may have: every stage, same bytes."""
    run = odd_root_run
    assert run.result.success
    assert run.root.is_dir() and (run.root / layout.SPLITS_DIR / layout.MANIFEST_CSV).is_file()
    assert _outputs(run.root) == _outputs(demo_runs[0])
    assert _metadata(run.result, "merged_images")["path"].startswith(str(run.root))


def test_a_data_root_without_hard_links_copies_the_splits_and_says_so(demo_runs, odd_root_run):
    """An exFAT data root (a USB disk, an SD card): link() fails with EPERM, so the splits are copies,
    the run warns once, and every output is byte-identical to a run on a filesystem with links."""
    run = odd_root_run
    if run.not_exfat:
        pytest.skip(run.not_exfat)
    baseline_root = demo_runs[0]
    linked = next((baseline_root / layout.SPLITS_DIR / "train").rglob("*.jpg"))
    assert linked.stat().st_nlink > 1, "the baseline's splits are hard links on this filesystem"
    assert run.result.success
    assert _outputs(run.root) == _outputs(baseline_root)
    split_files = list((run.root / layout.SPLITS_DIR).glob("*/*/*.jpg"))
    assert split_files and all(p.stat().st_nlink == 1 for p in split_files)
    said = [w for w in run.warnings if "refused a hard link" in w]
    assert len(said) == 1 and "EPERM" in said[0] and "copied instead" in said[0], run.warnings


# ----------------------------------------------------------------------------------------------
# No-change re-runs (defs/unchanged.py): a stage whose inputs and outputs are as its last complete run
# left them re-emits that run's result; any change makes it do the real work.

SKIPPED = "unchanged: skipped (fingerprint "


def _run(data_dir: Path, instance: dg.DagsterInstance, selection: list[str], run_config: dict | None = None,
         force: str | None = None) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks], instance=instance,
        resources={"isic": IsicSettings(data_dir=str(data_dir), sources="demo", force=force)},
        selection=selection, run_config=run_config or {}, raise_on_error=False,
    )


def _unchanged(result: dg.ExecuteInJobResult) -> dict[str, bool]:
    """Asset or check name -> whether the run re-emitted its recorded result."""
    flags = {e.asset_key.to_user_string(): e.materialization.metadata["isic/unchanged"].value
             for e in result.get_asset_materialization_events() if "isic/unchanged" in e.materialization.metadata}
    flags.update({c.check_name: c.metadata["isic/unchanged"].value for c in result.get_asset_check_evaluations()})
    return flags


def _messages(instance: dg.DagsterInstance, result: dg.ExecuteInJobResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]


def test_a_second_run_with_nothing_changed_skips_every_stage_and_check(demo_runs):
    """Every stage but raw_zips (which must ask the servers) and every check re-emit the first run's
    result: same data version, same verdict, and the skip is said in the log."""
    _, first, second, instance = demo_runs
    assert first.success and second.success
    assert set(_unchanged(first).values()) == {False}
    flags = _unchanged(second)
    expected_names = ({k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} - {"raw_zips"}
                      | {c.name for c in _check_names()})
    assert set(flags) == expected_names and all(flags.values()), flags
    versions = [{e.asset_key.to_user_string(): e.materialization.tags.get("dagster/data_version")
                 for e in run.get_asset_materialization_events()} for run in (first, second)]
    assert versions[0] == versions[1]
    verdicts = [{c.check_name: (c.passed, c.description) for c in run.get_asset_check_evaluations()}
                for run in (first, second)]
    assert verdicts[0] == verdicts[1]
    said = [m for m in _messages(instance, second) if SKIPPED in m]
    assert len(said) == len(expected_names) - 1  # merged_images and merged_metadata are one step
    recorded = _metadata(second, "merged_images")
    assert recorded["isic/recorded_by_run"] == first.run_id and recorded["seconds"] == 0


def _check_names() -> list[dg.AssetCheckKey]:
    return list(defs.resolve_asset_graph().asset_check_keys)


def test_a_changed_source_file_makes_the_merge_run(own_data_dir):
    data_dir = own_data_dir
    merge = ["merged_images", "merged_metadata"]
    with dg.instance_for_test() as instance:
        _run(data_dir, instance, merge)  # a new data root: its own first record
        assert set(_unchanged(_run(data_dir, instance, merge)).values()) == {True}
        source = next((data_dir / layout.DOWNLOADS).rglob("*.csv"))
        source.write_bytes(source.read_bytes())  # the same bytes, written again: a new mtime
        result = _run(data_dir, instance, merge)
        assert result.success
        assert _unchanged(result)["merged_images"] is False
        assert any(f"merge_sources: running (inputs changed: reads {source}" in m for m in _messages(instance, result))


def test_a_changed_setting_makes_the_stage_run_and_the_same_setting_again_skips(own_data_dir):
    data_dir = own_data_dir
    ratios = {"ops": {"balanced_splits": {"config": {"train": 0.6, "validation": 0.2, "test": 0.2}}}}
    with dg.instance_for_test() as instance:
        _run(data_dir, instance, ["balanced_splits"])
        changed = _run(data_dir, instance, ["balanced_splits"], ratios)
        assert _unchanged(changed)["balanced_splits"] is False
        assert any("running (inputs changed: settings config" in m for m in _messages(instance, changed))
        plan = json.loads((data_dir / layout.SPLITS_DIR / layout.PLAN_JSON).read_text())
        assert plan["config"]["ratios"] == [0.6, 0.2, 0.2]
        again = _run(data_dir, instance, ["balanced_splits"], ratios)
        assert _unchanged(again)["balanced_splits"] is True
        back = _run(data_dir, instance, ["balanced_splits"])
        assert _unchanged(back)["balanced_splits"] is False


def test_a_deleted_output_image_or_table_makes_its_stage_run_and_come_back(own_data_dir):
    data_dir = own_data_dir
    with dg.instance_for_test() as instance:
        _run(data_dir, instance, ["transformed_images", "balanced_splits"])
        image = sorted((data_dir / layout.TRANSFORMED / "images").glob("*.jpg"))[0]
        image.unlink()
        result = _run(data_dir, instance, ["transformed_images"])
        assert _unchanged(result)["transformed_images"] is False and image.is_file()
        assert _metadata(result, "transformed_images")["processed_this_run"] == 1
        manifest = data_dir / layout.SPLITS_DIR / layout.MANIFEST_CSV
        _run(data_dir, instance, ["balanced_splits"])
        manifest.unlink()
        result = _run(data_dir, instance, ["balanced_splits"])
        assert _unchanged(result)["balanced_splits"] is False and manifest.is_file()
        assert any("running (outputs changed: " in m and str(manifest) in m for m in _messages(instance, result))


def test_a_run_killed_between_its_outputs_and_its_record_is_done_again(own_data_dir, monkeypatch):
    """The record is removed before the real work and written only after it: a run that dies in between
    leaves outputs but no record claiming them, so the next run does the work."""
    from isic_assets.core.stage_fingerprint import RecordStore

    data_dir = own_data_dir
    record = data_dir / layout.STAGE_RECORDS / "eda_plots.json"
    with dg.instance_for_test() as instance:
        _run(data_dir, instance, ["eda_plots"])
        assert record.is_file()
        with monkeypatch.context() as patch:
            patch.setattr(RecordStore, "save", _killed)
            _run(data_dir, instance, ["eda_plots"], force="eda_plots")
        assert not record.is_file() and (data_dir / layout.EDA / layout.REPORT_HTML).is_file()
        result = _run(data_dir, instance, ["eda_plots"])
        assert _unchanged(result)["eda_plots"] is False
        assert any("eda_plots: running (no record of a complete run)" in m for m in _messages(instance, result))
        assert _unchanged(_run(data_dir, instance, ["eda_plots"]))["eda_plots"] is True


def test_force_and_a_new_code_version_take_the_full_path(own_data_dir, monkeypatch):
    data_dir = own_data_dir
    with dg.instance_for_test() as instance:
        _run(data_dir, instance, ["eda_plots"])
        forced = _run(data_dir, instance, ["eda_plots"], force="eda_plots")
        assert _unchanged(forced)["eda_plots"] is False
        assert any("running (forced by ISIC_FORCE)" in m for m in _messages(instance, forced))
        monkeypatch.setenv("ISIC_FORCE", "all")
        assert _unchanged(_run(data_dir, instance, ["eda_plots"]))["eda_plots"] is False
        monkeypatch.delenv("ISIC_FORCE")
        assert _unchanged(_run(data_dir, instance, ["eda_plots"]))["eda_plots"] is True
        monkeypatch.setattr("isic_assets.defs.unchanged.code_digest", lambda: "another version of the code")
        result = _run(data_dir, instance, ["eda_plots"])
        assert _unchanged(result)["eda_plots"] is False
        assert any("running (inputs changed: code" in m for m in _messages(instance, result))
        wrong = _run(data_dir, instance, ["eda_plots"], force="eda_plot")
        assert not wrong.success


def _killed(self, record) -> None:
    raise RuntimeError("the process died before its record was written")
