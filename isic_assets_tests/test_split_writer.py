"""Writing neural_network_data/: hard links, imagefolder metadata, byte-identical re-runs, no stale files."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic_assets.core.splits import writer as split_writer
from isic_assets.core.splits.assign import SPLITS, SplitConfig, SplitPlan, assign_splits
from isic_assets.core.splits.checks import leakage
from isic_assets.core.splits.grouping import build_groups
from isic_assets.core.splits.writer import write_splits


def _metadata(n: int = 60) -> pd.DataFrame:
    """Small labelled set: pairs of images per patient, a third malignant, a few unlabelled."""
    rows = []
    for i in range(n):
        label = "" if i % 17 == 16 else ("malignant" if i % 3 == 0 else "benign")
        rows.append(
            {
                "isic_id": f"ISIC_{i:07d}",
                "source": "demo",
                "benign_malignant": label,
                "diagnosis": "melanoma" if label == "malignant" else "nevus",
                "patient_id": f"IP_{i // 2:07d}" if i < 40 else "",
                "lesion_id": "",
                "age_approx": str(30 + i % 40),
                "image": f"images/ISIC_{i:07d}.png",
                "sha256": f"{i:064x}",
                "width": "640",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[pd.DataFrame, Path, Path]:
    meta = _metadata()
    src = tmp_path / "data_transformed"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for isic_id in meta["isic_id"]:
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / "images" / f"{isic_id}.jpg", quality=90)
    return meta, src, tmp_path / "neural_network_data"


def _plan(meta: pd.DataFrame, **config) -> SplitPlan:
    return assign_splits(meta, build_groups(meta, None), SplitConfig(**config))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _image_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


class RotatingAugment:
    """A deterministic stand-in for the albumentations pipeline: rotate by the seed, count calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, source: Path, destination: Path, seed: int) -> None:
        self.calls += 1
        with Image.open(source) as image:
            image.rotate(90 * (seed % 4)).save(destination, format="JPEG", quality=90)


def test_originals_are_hard_links_in_class_folders(setup):
    """Hard links: 30k+ images cost no space twice, and ImageFolder/Keras read class subfolders."""
    meta, src, out = setup
    plan = _plan(meta)
    report = write_splits(plan, meta, src, out)
    assert report.linked == len(plan.manifest) and report.copied == 0
    for row in plan.manifest.itertuples():
        written = out / row.image
        assert written.stat().st_ino == (src / "images" / f"{row.isic_id}.jpg").stat().st_ino
    assert _image_files(out) == set(plan.manifest["image"])
    for split in SPLITS:
        assert sorted(p.name for p in (out / split).iterdir() if p.is_dir()) == ["benign", "malignant"]


def test_copies_when_links_are_refused(setup, monkeypatch):
    """Another filesystem refuses hard links (EXDEV); the writer copies and stays incremental."""
    meta, src, out = setup
    plan = _plan(meta)

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split_writer.os, "link", refuse)
    report = write_splits(plan, meta, src, out)
    assert report.copied == len(plan.manifest) and report.linked == 0
    first = plan.manifest["image"].iloc[0]
    source = src / "images" / f"{plan.manifest['isic_id'].iloc[0]}.jpg"
    assert (out / first).stat().st_ino != source.stat().st_ino
    assert (out / first).read_bytes() == source.read_bytes()
    again = write_splits(plan, meta, src, out)
    assert again.unchanged == len(plan.manifest) and again.copied == 0


def test_rerun_is_byte_identical_and_rewrites_nothing(setup):
    """The same inputs and config must give the same bytes, and a no-change run must do no work."""
    meta, src, out = setup
    augment = RotatingAugment()
    plan = _plan(meta, strategy="oversample", seed=3)
    write_splits(plan, meta, src, out, augment)
    before = _snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    calls = augment.calls
    report = write_splits(_plan(meta, strategy="oversample", seed=3), meta, src, out, augment)
    assert _snapshot(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    assert augment.calls == calls and report.augmented_unchanged == calls
    assert report.linked == report.copied == report.removed == 0 and report.tables_written == ()
    fresh = out.parent / "fresh"
    write_splits(plan, meta, src, fresh, RotatingAugment())
    assert _snapshot(fresh) == before, "an incremental folder must equal a fresh one"


def test_config_change_removes_stale_files(setup):
    """Files of a previous config (other split, other class names) must not linger and mislead."""
    meta, src, out = setup
    write_splits(_plan(meta, strategy="none", seed=1), meta, src, out)
    (out / "train" / "benign" / "ISIC_9999999.jpg").write_bytes(b"stray")
    (out / "train" / "benign" / ".tmp-ISIC_0000001.jpg").write_bytes(b"half")
    (out / "test" / "unknown_class").mkdir()
    new_plan = _plan(meta, label_column="diagnosis", class_map={"melanoma": "mel", "*": "rest"}, seed=2)
    report = write_splits(new_plan, meta, src, out)
    assert report.removed > 0
    assert _image_files(out) == set(new_plan.manifest["image"])
    for split in SPLITS:
        assert sorted(p.name for p in (out / split).iterdir()) == ["mel", "metadata.parquet", "rest"]
    fresh = out.parent / "fresh"
    write_splits(new_plan, meta, src, fresh)
    assert _snapshot(out) == _snapshot(fresh)


def test_leaving_oversample_removes_copies_and_their_record(setup):
    """Augmented copies of an earlier oversample run must not linger in a plain dataset."""
    meta, src, out = setup
    write_splits(_plan(meta, strategy="oversample"), meta, src, out, RotatingAugment())
    assert (out / ".augmented.json").is_file()
    plain = _plan(meta, strategy="none")
    write_splits(plain, meta, src, out)
    assert not list(out.rglob("*__aug*")) and not (out / ".augmented.json").exists()
    fresh = out.parent / "fresh"
    write_splits(plain, meta, src, fresh)
    assert _snapshot(out) == _snapshot(fresh)


def test_a_changed_source_is_linked_again(setup):
    """transformed_images replaces files by atomic rename; the old link must not survive."""
    meta, src, out = setup
    plan = _plan(meta, strategy="none")
    write_splits(plan, meta, src, out)
    row = plan.manifest.iloc[0]
    source = src / "images" / f"{row['isic_id']}.jpg"
    replacement = source.with_name("new.jpg")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(replacement)
    os.replace(replacement, source)
    report = write_splits(plan, meta, src, out)
    assert report.linked == 1
    assert (out / row["image"]).read_bytes() == source.read_bytes()


def test_augmented_copies_only_in_train_and_remade_when_the_pipeline_changes(setup):
    """Copies are train-only files named as copies; a new pipeline version makes them again."""
    meta, src, out = setup
    plan = _plan(meta, strategy="oversample")
    augment = RotatingAugment()
    report = write_splits(plan, meta, src, out, augment, augment_version="v1")
    copies = {p.relative_to(out).as_posix() for p in out.rglob("*__aug*")}
    assert copies and all(c.startswith("train/") for c in copies)
    assert report.augmented_written == augment.calls == len(copies)
    for name in copies:
        with Image.open(out / name) as image:
            assert image.format == "JPEG"
    again = write_splits(plan, meta, src, out, augment, augment_version="v2")
    assert again.augmented_written == len(copies) and again.augmented_unchanged == 0
    with pytest.raises(ValueError, match="make_augmented_copy"):
        write_splits(plan, meta, src, out.parent / "other")


def test_imagefolder_metadata_points_at_existing_files(setup):
    """datasets' imagefolder reads file_name relative to the metadata file beside it."""
    meta, src, out = setup
    plan = _plan(meta, strategy="oversample")
    write_splits(plan, meta, src, out, RotatingAugment())
    for split in SPLITS:
        table = pd.read_parquet(out / split / "metadata.parquet")
        assert list(table.columns[:3]) == ["file_name", "label", "isic_id"]
        assert (table["label"].map(dict(enumerate(plan.classes))) == table["file_name"].str.split("/").str[0]).all()
        assert (
            "age_approx" in table.columns and "sha256" not in table.columns and "image" not in table.columns
        )
        assert all((out / split / name).is_file() for name in table["file_name"])
        on_disk = {p.relative_to(out / split).as_posix() for p in (out / split).rglob("*.jpg")}
        assert on_disk == set(table["file_name"])
        copies = table[table["is_augmented"]]
        originals = meta.set_index("isic_id")
        assert (
            copies["age_approx"].to_numpy()
            == originals.loc[copies["augmented_from"], "age_approx"].to_numpy()
        ).all()


def test_manifest_csv_reads_back_and_passes_the_leakage_check(setup):
    """The check reads manifest.csv as strings; it must see the same plan the writer wrote."""
    meta, src, out = setup
    plan = _plan(meta, strategy="oversample")
    write_splits(plan, meta, src, out, RotatingAugment())
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns[:6]) == ["isic_id", "split", "label", "group_id", "source", "image"]
    assert len(manifest) == len(plan.manifest)
    assert leakage(manifest, meta).passed
    with_patient = manifest.merge(meta[["isic_id", "patient_id"]], on="isic_id")
    with_patient = with_patient[
        (with_patient["patient_id"] != "") & (with_patient["is_augmented"] == "False")
    ]
    shared = with_patient.groupby("patient_id")["isic_id"].transform("size") > 1
    moved = with_patient.loc[shared, "isic_id"].iloc[0]
    leaky = manifest.copy()
    row = leaky["isic_id"] == moved
    leaky.loc[row, "split"] = "train" if leaky.loc[row, "split"].iloc[0] == "test" else "test"
    outcome = leakage(leaky, meta)
    assert not outcome.passed and outcome.measured["leaking_keys"]["patient_id"] == 1


def test_missing_source_fails_before_anything_is_written(setup):
    """A half-written dataset is worse than none: check every source first."""
    meta, src, out = setup
    plan = _plan(meta)
    (src / "images" / f"{plan.manifest['isic_id'].iloc[-1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="transformed_images"):
        write_splits(plan, meta, src, out)
    assert not out.exists()


def _copy_with_the_real_pipeline(source: Path, destination: Path, seed: int) -> None:
    from isic_assets.core.transform.augment import augment_file

    augment_file(source, destination, seed)


def _kill_on_seed(bad_seed: int, source: Path, destination: Path, seed: int) -> None:
    if seed == bad_seed:
        os._exit(70)  # a crash in the augmentation, as a segfault would
    _copy_with_the_real_pipeline(source, destination, seed)


def test_oversampling_copies_made_on_worker_processes_are_the_bytes_made_in_the_step(setup):
    """The copies are per-image work mapped over the engine: on a fork pool of real processes the
    folder (copies and their record) is byte-identical to copies made one by one in the step."""
    from isic_assets.core.compute.engine import open_engine
    from isic_assets.core.compute.setting import ComputeChoice

    meta, src, out = setup
    plan = _plan(meta, strategy="oversample", seed=3)
    assert plan.manifest["is_augmented"].sum() > 4
    write_splits(plan, meta, src, out, _copy_with_the_real_pipeline)
    pooled = out.parent / "pooled"
    opened = []

    def engine():
        opened.append(True)
        return open_engine(ComputeChoice("local"), 2, pooled, lambda _m: None)

    report = write_splits(plan, meta, src, pooled, _copy_with_the_real_pipeline, open_engine=engine)
    assert opened and report.augmented_written == plan.manifest["is_augmented"].sum()
    assert _snapshot(pooled) == _snapshot(out)
    opened.clear()
    again = write_splits(plan, meta, src, pooled, _copy_with_the_real_pipeline, open_engine=engine)
    assert not opened and again.augmented_unchanged == report.augmented_written  # nothing to make: no pool

    broken = out.parent / "broken"
    bad_seed = int(plan.manifest.loc[plan.manifest["is_augmented"], "aug_seed"].iloc[2])
    with pytest.raises(RuntimeError, match="killed its worker process"):
        write_splits(plan, meta, src, broken, functools.partial(_kill_on_seed, bad_seed),
                     open_engine=lambda: open_engine(ComputeChoice("local"), 2, broken, lambda _m: None))
    assert not (broken / split_writer.AUGMENT_STATE_NAME).exists()
