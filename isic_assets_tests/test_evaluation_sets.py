"""Official evaluation sets: held out of training, written to evaluation_data/, leaks caught.

The demo mirror's evaluation sources (group ``demo_evaluation``) overlap the training sources in every
planted way; MIRROR.json records which ids, so the tests compare against the generator's ground truth.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from isic_assets.core import layout
from isic_assets.core.eda.figures import FIGURE_TITLES, TABLE_TITLES, build_tables
from isic_assets.core.eda.overlap import source_overlap
from isic_assets.core.sources.catalog import CatalogError, load_catalog, parse_catalog
from isic_assets.core.splits.assign import MANIFEST_COLUMNS
from isic_assets.core.splits.evaluation import OVERLAP_COLUMNS, evaluation_leakage, hold_out
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets_tests.demo_support import copy_demo_mirror

SOURCES = "demo,demo_evaluation"
EVAL_SOURCES = ("demo_isic2016_test", "demo_isic2017_validation")


# ----------------------------------------------------------------------------------------------
# catalog


def _entry(**extra) -> dict:
    return {"sources": {"mine": {"format": "isic2016", "files": {
        "images": "https://example.org/a.zip", "ground_truth": "https://example.org/gt.csv"}, **extra}}}


def test_purpose_defaults_to_training_and_a_bad_value_names_file_and_source():
    assert parse_catalog(_entry(), origin="my.yaml").sources["mine"].purpose == "training"
    assert parse_catalog(_entry(purpose="evaluation"), origin="my.yaml").sources["mine"].is_evaluation
    with pytest.raises(CatalogError, match=r"my\.yaml: source 'mine': purpose must be one of training, evaluation"):
        parse_catalog(_entry(purpose="test"), origin="my.yaml")


def test_user_catalog_evaluation_source_is_read_from_its_file(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(_entry(purpose="evaluation")))
    assert load_catalog(path).sources["mine"].is_evaluation


def test_builtin_evaluation_group_has_the_published_files_and_merges_first():
    catalog = load_catalog()
    names = catalog.groups["evaluation"]
    assert names == ("isic2016_test", "isic2017_validation", "isic2017_test", "isic2018_validation", "isic2018_test")
    files = {n: {r: f.filename for r, f in catalog.sources[n].files.items()} for n in names}
    assert files["isic2016_test"] == {"images": "ISBI2016_ISIC_Part3_Test_Data.zip",
                                      "ground_truth": "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"}
    assert files["isic2017_test"]["ground_truth"] == "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    assert files["isic2018_test"]["ground_truth"] == "ISIC2018_Task3_Test_GroundTruth.zip"
    assert all(catalog.sources[n].is_evaluation for n in names)
    assert not any(s.is_evaluation for s in catalog.select("challenges,demo"))
    # Evaluation first whatever the spelling: the merge keeps the copy of the earliest source.
    order = [s.name for s in catalog.select("isic2019,isic2016_test")]
    assert order == ["isic2016_test", "isic2019"]


# ----------------------------------------------------------------------------------------------
# the core rules on small frames


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["isic_id", "sources", "benign_malignant", "patient_id", "lesion_id", "sha256"])


def test_holdout_follows_chains_and_names_the_most_direct_reason():
    metadata = _frame([
        ("E1", "test_set;train_a", "benign", "", "L1", "h1"),
        ("T1", "train_a", "benign", "", "L1", "h2"),  # same lesion as E1
        ("T2", "train_a", "malignant", "P1", "", "h3"),  # same patient as T1? no: patient P1 shared with T3
        ("T3", "train_b", "benign", "P1", "L1", "h4"),  # lesion L1 -> E1; patient P1 -> T2 (a chain)
        ("T4", "train_b", "benign", "", "", "h5"),  # near-duplicate of E1
        ("T5", "train_b", "benign", "", "", "h6"),  # unrelated
    ])
    pairs = pd.DataFrame({"isic_id_a": ["E1"], "isic_id_b": ["T4"]})
    holdout = hold_out(metadata, None, pairs, ["test_set"])
    overlap = holdout.overlap
    reasons = dict(zip(overlap["isic_id"] + "/" + overlap["reason"], overlap["evaluation_isic_id"], strict=True))
    assert reasons == {"E1/same_id": "E1", "T1/same_lesion": "E1", "T3/same_lesion": "E1", "T2/same_group": "E1",
                       "T4/near_duplicate": "E1"}
    assert holdout.held_out_ids == {"E1", "T1", "T2", "T3", "T4"}
    assert list(holdout.manifest.columns) == MANIFEST_COLUMNS
    assert holdout.manifest[["isic_id", "split", "source", "image"]].values.tolist() == [
        ["E1", "evaluation", "test_set", "test_set/benign/E1.jpg"]]


def test_leakage_check_names_every_split_image_linked_to_an_evaluation_image():
    metadata = _frame([
        ("E1", "test_set", "benign", "", "", "h1"),
        ("T1", "train_a", "benign", "", "", "h1"),  # same bytes as E1
        ("T2", "train_a", "benign", "", "", "h2"),
        ("T3", "train_a", "benign", "", "", "h3"),  # listed duplicate of a dropped copy of E1
    ])
    duplicates = pd.DataFrame({"isic_id": ["D1"], "kept_isic_id": ["T3"], "source": ["test_set"], "sha256": ["h9"]})
    manifest = pd.DataFrame({"isic_id": ["E1", "T1", "T2", "T3"], "split": ["test", "train", "train", "validation"]})
    offences, checked = evaluation_leakage(manifest, metadata, duplicates, None, ["test_set"])
    assert checked == 4
    assert {(o["isic_id"], o["link"]) for o in offences} == {("E1", "same_id"), ("T1", "identical_content"),
                                                             ("T3", "same_id")}
    clean = manifest[manifest["isic_id"] == "T2"]
    assert evaluation_leakage(clean, metadata, duplicates, None, ["test_set"])[0] == []


# ----------------------------------------------------------------------------------------------
# the demo mirror, in a real Dagster instance


def _materialize(data_dir: Path, instance, selection, extra_assets=(), run_config=None) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks, *extra_assets], instance=instance,
        resources={"isic": IsicSettings(data_dir=str(data_dir), sources=SOURCES)},
        selection=selection, run_config=run_config or {}, raise_on_error=False,
    )


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, generated_demo_mirror):
    data_dir = tmp_path_factory.mktemp("isic_eval")
    copy_demo_mirror(generated_demo_mirror, data_dir)
    with dg.instance_for_test() as instance:
        result = _materialize(data_dir, instance, ["*balanced_splits", "eda_plots"])
    expected = json.loads((data_dir / layout.DEMO_MIRROR / "MIRROR.json").read_text())["expected"]
    return data_dir, result, expected["evaluation"]


def _metadata(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_evaluation_images_are_written_beside_the_splits_never_inside(eval_run):
    data_dir, result, facts = eval_run
    assert result.success
    out = data_dir / layout.EVALUATION_DIR
    manifest = layout.read_table(out / layout.MANIFEST_CSV)
    assert list(manifest.columns) == MANIFEST_COLUMNS and set(manifest["split"]) == {"evaluation"}
    for source in EVAL_SOURCES:
        rows = manifest[manifest["source"] == source]
        assert sorted(rows["isic_id"]) == facts["sources"][source]
        for isic_id, label, image in zip(rows["isic_id"], rows["label"], rows["image"], strict=True):
            assert image == f"{source}/{label}/{isic_id}.jpg" and (out / image).is_file()
            assert label == facts["labels"][isic_id]
    splits = layout.read_table(data_dir / layout.SPLITS_DIR / layout.MANIFEST_CSV)
    assert not set(splits["isic_id"]) & set(manifest["isic_id"])
    assert not list((data_dir / layout.SPLITS_DIR).glob("**/evaluation*"))


def test_every_planted_overlap_leaves_the_training_pool_with_its_reason(eval_run):
    data_dir, result, facts = eval_run
    overlap = layout.read_table(data_dir / layout.EVALUATION_DIR / layout.EVALUATION_OVERLAP_CSV)
    assert list(overlap.columns) == OVERLAP_COLUMNS
    found = {(r.isic_id, r.evaluation_isic_id, r.reason) for r in overlap.itertuples()}
    expected = {(i, i, "same_id") for i in facts["same_id"]}
    for kind in ("identical_content", "near_duplicate"):
        expected.add((facts[kind]["training"], facts[kind]["evaluation"], kind))
    for kind in ("same_lesion", "same_patient"):
        expected |= {(t, facts[kind]["evaluation"], kind) for t in facts[kind]["training"]}
    assert found == expected
    splits = layout.read_table(data_dir / layout.SPLITS_DIR / layout.MANIFEST_CSV)
    assert not set(splits["isic_id"]) & set(overlap["isic_id"])
    counts = _metadata(result, "evaluation_sets")["overlap_by_reason"]
    assert counts == {"same_id": 3, "identical_content": 1, "listed_duplicate": 0, "near_duplicate": 1,
                      "same_lesion": len(facts["same_lesion"]["training"]),
                      "same_patient": len(facts["same_patient"]["training"]), "same_group": 0,
                      "unlabelled_evaluation": 0}
    held = _metadata(result, "balanced_splits")["evaluation_held_out"]
    evaluated = {i for ids in facts["sources"].values() for i in ids}
    assert held["held_out_of_training"] == len(set(overlap["isic_id"]) | evaluated)
    card = (data_dir / layout.SPLITS_DIR / layout.DATASET_CARD).read_text()
    assert "## Evaluation sets held out" in card and "| same_patient |" in card


def test_the_evaluation_copy_and_its_label_win_over_the_training_copy(eval_run):
    data_dir, _, facts = eval_run
    merged = layout.read_table(data_dir / layout.MERGED / layout.METADATA_CSV).set_index("isic_id")
    for isic_id in facts["same_id"]:
        assert merged.loc[isic_id, "source"] in EVAL_SOURCES
    twin = facts["identical_content"]
    duplicates = layout.read_table(data_dir / layout.MERGED / layout.DUPLICATES_CSV)
    dropped = duplicates[duplicates["isic_id"] == twin["training"]]
    assert dropped["kept_isic_id"].tolist() == [twin["evaluation"]]


def test_no_evaluation_leakage_passes_on_the_demo(eval_run):
    _, result, _ = eval_run
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["no_evaluation_leakage"].passed is True


def test_each_evaluation_set_loads_with_huggingface_datasets(eval_run):
    datasets = pytest.importorskip("datasets")
    data_dir, _, facts = eval_run
    folder = data_dir / layout.EVALUATION_DIR / "demo_isic2016_test"
    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    assert sorted(loaded["isic_id"]) == facts["sources"]["demo_isic2016_test"]
    assert loaded.features["label"].names == ["benign", "malignant"]


def test_a_planted_leak_fails_the_check_and_blocks_downstream(eval_run, tmp_path):
    """A stale overlap list lets lesion- and patient-mates into the splits: the check, which re-derives
    the groups from raw keys, fails naming them, and a consumer of the splits never runs."""
    source, _, facts = eval_run
    data_dir = tmp_path / "isic_data"
    shutil.copytree(source, data_dir, ignore=shutil.ignore_patterns(layout.DEMO_MIRROR, "logs", ".lock"))
    overlap_path = data_dir / layout.EVALUATION_DIR / layout.EVALUATION_OVERLAP_CSV
    overlap = layout.read_table(overlap_path)
    overlap[overlap["reason"] == "same_id"].to_csv(overlap_path, index=False)
    ran = []

    @dg.asset(deps=["balanced_splits"])
    def train_model() -> None:
        ran.append(True)

    with dg.instance_for_test() as instance:
        result = _materialize(data_dir, instance, ["balanced_splits", "train_model"], [train_model],
                              run_config={"ops": {"balanced_splits": {"config": {"strategy": "none"}}}})
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_evaluation_leakage")
    assert check.passed is False
    leaked = set(facts["same_lesion"]["training"]) | set(facts["same_patient"]["training"])
    named = {o["isic_id"] for o in check.metadata["offending"].value}
    assert leaked <= named
    assert any(i in check.description for i in leaked)
    assert not ran and not result.success


# ----------------------------------------------------------------------------------------------
# the EDA's source overlap


def test_source_overlap_counts_ids_content_and_near_duplicates_per_pair():
    metadata = pd.DataFrame({"isic_id": ["A", "B", "C", "D"],
                             "sources": ["s1;s2;s3", "s2", "s3", "s1"]})
    duplicates = pd.DataFrame({"isic_id": ["X"], "kept_isic_id": ["B"], "reason": ["identical_content"],
                               "source": ["s1"]})
    pairs = pd.DataFrame({"isic_id_a": ["C"], "isic_id_b": ["D"]})
    table = source_overlap(metadata, duplicates, pairs, ("s1", "s2", "s3"))
    assert table.values.tolist() == [["s1", "s2", 1, 1, 0], ["s1", "s3", 1, 0, 1], ["s2", "s3", 1, 0, 0]]
    assert source_overlap(metadata.iloc[1:2], None, None).empty


def test_eda_overlap_of_the_demo_shows_every_planted_kind(eval_run):
    data_dir, _, _ = eval_run
    merged = data_dir / layout.MERGED
    tables = build_tables(layout.read_table(merged / layout.METADATA_CSV),
                          layout.read_table(merged / layout.DUPLICATES_CSV),
                          layout.read_table(merged / layout.QUARANTINE_CSV),
                          layout.read_table(merged / layout.NEAR_DUPLICATES_CSV))
    overlap = tables["source_overlap"]

    def pair(a: str, b: str) -> list[int]:  # the table lists each unordered pair once, in merge order
        rows = overlap[[{x, y} == {a, b} for x, y in zip(overlap["source_a"], overlap["source_b"], strict=True)]]
        assert len(rows) == 1, (a, b)
        return rows[["same_id", "same_content", "near_duplicate"]].iloc[0].tolist()

    assert pair("demo_isic2016_test", "demo_isic2016") == [1, 1, 1]
    assert pair("demo_isic2017_validation", "demo_isic2020")[0] == 1
    assert "source_overlap" in FIGURE_TITLES and "source_overlap" in TABLE_TITLES


def test_the_planted_near_duplicate_is_the_only_pair_and_the_report_shows_it_side_by_side(eval_run):
    """Exactly the planted re-export (a 2016 test image re-exported from a 2016 training image) is
    found: not the two different 2020 pictures whose detail alone correlates (test_near_duplicates.py)."""
    data_dir, _, expected = eval_run
    pairs = pd.read_csv(data_dir / layout.MERGED / layout.NEAR_DUPLICATES_CSV, dtype=str)
    planted = expected["near_duplicate"]
    assert set(zip(pairs["isic_id_a"], pairs["isic_id_b"], strict=True)) == {
        tuple(sorted((planted["evaluation"], planted["training"])))}
    report = (data_dir / layout.EDA / "report.html").read_text()
    section = report[report.index('id="near-duplicates"'):]
    a, b = pairs.iloc[0][["isic_id_a", "isic_id_b"]]
    assert f"<td>{a}</td><td>{b}</td>" in section
    assert section.count("data:image/jpeg;base64,") == 1
