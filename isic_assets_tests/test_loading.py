"""What we write loads as written: Hugging Face ``datasets`` in one call, torchvision's ImageFolder per split.

The load goes through the real ``datasets`` package (offline, a temporary cache), not through our own
reading of the metadata: a type mismatch between splits or a lost ClassLabel only shows up there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic_assets.core.splits.assign import SPLITS, SplitConfig, assign_splits
from isic_assets.core.splits.folds import assign_folds, fold_class_counts
from isic_assets.core.splits.grouping import build_groups
from isic_assets.core.splits.writer import FOLD_COLUMN, NO_FOLD, write_splits

datasets = pytest.importorskip("datasets")

# torchvision.datasets.folder.IMG_EXTENSIONS, restated so the walk below needs no torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _metadata(n: int = 90) -> pd.DataFrame:
    """Patients of two or three images, a third malignant; ``dermoscopic_type`` is set on a few only,
    so it is empty in whole splits (the column that broke the one-call load)."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "isic_id": f"ISIC_{i:07d}",
                "source": "demo",
                "benign_malignant": "malignant" if i % 3 == 0 else "benign",
                "patient_id": f"IP_{i // 3:07d}" if i < 60 else "",
                "lesion_id": "",
                "age_approx": "" if i % 5 == 0 else str(30 + i % 40),
                "dermoscopic_type": "contact polarized" if i in (1, 2) else "",
                "sha256": f"{i:064x}",
            }
        )
    return pd.DataFrame(rows)


class FlipAugment:
    def __call__(self, source: Path, destination: Path, seed: int) -> None:
        with Image.open(source) as image:
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(destination, format="JPEG", quality=90)


@pytest.fixture()
def written(tmp_path: Path):
    meta = _metadata()
    src = tmp_path / "data_transformed"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for isic_id in meta["isic_id"]:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(src / "images" / f"{isic_id}.jpg")
    plan = assign_splits(meta, build_groups(meta), SplitConfig(strategy="oversample", seed=3))
    plan = assign_folds(plan, 3, seed=3)
    out = tmp_path / "neural_network_data"
    write_splits(plan, meta, src, out, FlipAugment())
    # Files a user or another tool keeps beside the splits must not become examples.
    (out / "notes.txt").write_text("mine")
    return plan, out


def _load(out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(cache))


def test_datasets_loads_every_split_in_one_call_with_class_labels(written, tmp_path, monkeypatch):
    plan, out = written
    assert (plan.manifest["split"] == "validation").any() and plan.manifest["is_augmented"].any()
    loaded = _load(out, tmp_path / "hf_cache", monkeypatch)
    assert set(loaded) == set(SPLITS)
    for split in SPLITS:
        part = loaded[split]
        label = part.features["label"]
        assert isinstance(label, datasets.ClassLabel)
        assert label.names == list(plan.classes)
        rows = plan.manifest[plan.manifest["split"] == split]
        assert sorted(part["isic_id"]) == sorted(rows["isic_id"])
        expected = rows.set_index("isic_id")["label"]
        got = pd.Series([label.int2str(v) for v in part["label"]], index=part["isic_id"])
        assert (got == expected.reindex(got.index)).all()
        assert part.features["dermoscopic_type"] == datasets.Value("string")
        folds = pd.Series(part[FOLD_COLUMN], index=part["isic_id"])
        assert (folds == rows.set_index("isic_id")[FOLD_COLUMN].reindex(folds.index)).all()
        first = part[0]["image"]
        assert first.size == (8, 8)


def _image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ``ImageFolder`` discovery: sorted class folders, then every image file under each."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    samples = []
    for index, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(folder, file), index))
    return classes, samples


def test_each_split_folder_is_an_image_folder_with_the_same_class_indices(written):
    plan, out = written
    for split in SPLITS:
        classes, samples = _image_folder(out / split)
        assert classes == list(plan.classes)
        rows = plan.manifest[plan.manifest["split"] == split]
        found = {Path(path).relative_to(out).as_posix(): index for path, index in samples}
        assert found == {img: plan.classes.index(lab) for img, lab in zip(rows["image"], rows["label"], strict=True)}
        table = pd.read_parquet(out / split / "metadata.parquet")
        by_file = dict(zip(split + "/" + table["file_name"], table["label"], strict=True))
        assert by_file == found


def test_folds_keep_groups_whole_and_classes_proportional(written):
    plan, _ = written
    manifest = plan.manifest
    pool = manifest[manifest["split"].isin(["train", "validation"])]
    assert (manifest.loc[manifest["split"] == "test", FOLD_COLUMN] == NO_FOLD).all()
    assert set(pool[FOLD_COLUMN]) == {0, 1, 2}
    assert (pool.groupby("group_id")[FOLD_COLUMN].nunique() == 1).all()
    copies = pool[pool["is_augmented"]]
    fold_of = pool.set_index("isic_id")[FOLD_COLUMN]
    assert (copies[FOLD_COLUMN].to_numpy() == fold_of.reindex(copies["augmented_from"]).to_numpy()).all()
    counts = fold_class_counts(manifest, plan.classes)
    overall = counts.sum() / counts.to_numpy().sum()
    shares = counts.div(counts.sum(axis=1), axis=0)
    assert (shares.sub(overall, axis=1).abs() < 0.12).all().all()


def test_folds_are_seeded_and_refuse_too_few_groups(written):
    plan, _ = written
    again = assign_folds(plan, 3, seed=3)
    assert (again.manifest[FOLD_COLUMN] == plan.manifest[FOLD_COLUMN]).all()
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(plan, 1, seed=0)
    with pytest.raises(ValueError, match="leakage groups"):
        assign_folds(plan, 10_000, seed=0)


def test_dataset_card_reports_per_fold_class_counts(written):
    plan, _ = written
    from isic_assets.core.splits.dataset_card import render_dataset_card

    meta = _metadata().assign(copyright_license="CC-BY", attribution="demo")
    card = render_dataset_card(plan.manifest, meta, {"seed": 3}, [])
    counts = fold_class_counts(plan.manifest, plan.classes)
    section = card.split("## Cross-validation folds", 1)[1]
    for fold, row in counts.iterrows():
        cells = " | ".join(str(int(v)) for v in row)
        assert f"| {fold} | {cells} | {int(row.sum())} |" in section
