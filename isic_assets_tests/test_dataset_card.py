"""DATASET_CARD.md and licences/ next to the splits: counts that match the data, byte-identical re-runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.splits.assign import SPLITS, SplitConfig, assign_splits
from isic_assets.core.splits.dataset_card import (
    CARD_NAME,
    LICENSES,
    license_text,
    normalize_license,
    order_attributions,
    render_dataset_card,
    write_dataset_card,
)
from isic_assets.core.splits.grouping import build_groups

#: Spellings as the sources write them, and what the card must call them.
SPELLINGS = {
    "CC-0": "CC-0", "CC0": "CC-0", " cc-0 ": "CC-0",
    "CC-BY": "CC-BY", "CC BY 4.0": "CC-BY",
    "CC-BY-NC": "CC-BY-NC", "CC-BY-NC 4.0": "CC-BY-NC", "cc_by_nc": "CC-BY-NC",
}
ATTRIBUTIONS = ["Anonymous", "Hospital Clínic de Barcelona", "ViDIR Group", "MSK"]
SOURCES = [
    {"name": "isic2019", "format": "isic2019", "files": {"images": "https://host/ISIC_2019_Training_Input.zip"}},
    {"name": "melanoma_2024", "format": "isic_api", "query": 'diagnosis_3:"Melanoma Invasive"',
     "collections": [70], "api_token": "must-not-appear"},
]


def crafted_metadata(seed: int = 0, n_patients: int = 40) -> pd.DataFrame:
    """Merged-style metadata: patients with several images, mixed labels, licence spellings, attributions."""
    rng = np.random.default_rng(seed)
    spellings = list(SPELLINGS)
    rows = []
    for patient in range(n_patients):
        for _ in range(int(rng.integers(1, 5))):
            rows.append({
                "isic_id": f"ISIC_{len(rows) * 7 + 100:07d}",
                "patient_id": f"IP_{patient:07d}",
                "source": "isic2019" if patient % 3 else "melanoma_2024",
                "benign_malignant": "malignant" if rng.random() < 0.25 else "benign",
                "copyright_license": spellings[int(rng.integers(len(spellings)))],
                "attribution": ATTRIBUTIONS[int(rng.integers(len(ATTRIBUTIONS)))],
            })
    rows[0]["copyright_license"] = ""  # an image whose licence nobody recorded
    return pd.DataFrame(rows)


def planned(metadata: pd.DataFrame, strategy: str = "oversample", seed: int = 7):
    return assign_splits(metadata, build_groups(metadata), SplitConfig(strategy=strategy, seed=seed))


def table_after(card: str, heading: str) -> list[list[str]]:
    """Body rows of the first markdown table after ``heading``, as stripped cells."""
    section = card.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def expected_license_counts(manifest: pd.DataFrame, metadata: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Independent count: every file, an augmented copy under its original's licence."""
    by_id = dict(zip(metadata["isic_id"], metadata["copyright_license"], strict=True))
    counts: dict[str, dict[str, int]] = {}
    for row in manifest.itertuples(index=False):
        original = row.augmented_from if row.is_augmented else row.isic_id
        name = SPELLINGS.get(by_id[original], "(none recorded)")
        counts.setdefault(name, dict.fromkeys(SPLITS, 0))[row.split] += 1
    return counts


def test_licence_counts_match_the_data_per_split_and_in_total(tmp_path):
    """The card must let a user publish honestly: every file counted under its (original's) licence."""
    metadata = crafted_metadata()
    plan = planned(metadata)
    assert plan.manifest["is_augmented"].any(), "the case needs augmented copies"

    path = write_dataset_card(plan.manifest, metadata, tmp_path, plan.config.as_dict(), SOURCES)

    rows = table_after(path.read_text(encoding="utf-8"), "## Licences")
    found = {row[0]: {s: int(v) for s, v in zip(SPLITS, row[1:4], strict=True)} for row in rows}
    assert found == expected_license_counts(plan.manifest, metadata)
    assert all(int(row[4]) == sum(found[row[0]].values()) for row in rows)
    assert sum(int(row[4]) for row in rows) == len(plan.manifest)
    assert [row[0] for row in rows] == ["CC-0", "CC-BY", "CC-BY-NC", "(none recorded)"]


def test_counts_per_split_and_class_match_the_plan(tmp_path):
    metadata = crafted_metadata(seed=3)
    plan = planned(metadata, strategy="none", seed=1)
    card = write_dataset_card(plan.manifest, metadata, tmp_path, plan.config.as_dict(), SOURCES).read_text()

    rows = {row[0]: row[1:] for row in table_after(card, "## Images per split and class")}
    for split in SPLITS:
        assert [int(v) for v in rows[split][:2]] == [int(plan.counts.loc[split, c]) for c in plan.classes]
    assert int(rows["all"][2]) == len(plan.manifest)
    balance = {row[0]: row for row in table_after(card, "## Class balance")}
    benign, malignant = (int(plan.counts.loc["train", c]) for c in ("benign", "malignant"))
    assert balance["train"][1] == f"{100 * benign / (benign + malignant):.1f}%"
    assert balance["train"][3] == f"{max(benign, malignant) / min(benign, malignant):.2f} : 1"


def test_licence_texts_are_written_for_the_licences_present_and_stale_ones_removed(tmp_path):
    metadata = crafted_metadata()
    plan = planned(metadata)
    write_dataset_card(plan.manifest, metadata, tmp_path, plan.config.as_dict(), SOURCES)
    assert sorted(p.name for p in (tmp_path / "licenses").iterdir()) == ["CC-0.txt", "CC-BY-NC.txt", "CC-BY.txt"]
    for name, info in LICENSES.items():
        text = (tmp_path / "licenses" / f"{name}.txt").read_text(encoding="utf-8")
        assert info.legal_code in text and f"ISIC licence tag: {name}" in text

    only_cc0 = metadata.assign(copyright_license="CC0")
    write_dataset_card(plan.manifest, only_cc0, tmp_path, plan.config.as_dict(), SOURCES)

    assert sorted(p.name for p in (tmp_path / "licenses").iterdir()) == ["CC-0.txt"]
    assert [row[0] for row in table_after((tmp_path / CARD_NAME).read_text(), "## Licences")] == ["CC-0"]


def test_same_inputs_give_byte_identical_files_whatever_the_row_order(tmp_path):
    """No timestamps, every table sorted: a re-run rewrites nothing and shuffled inputs change nothing."""
    metadata = crafted_metadata()
    plan = planned(metadata)
    config = plan.config.as_dict()
    path = write_dataset_card(plan.manifest, metadata, tmp_path / "a", config, SOURCES)
    first = path.read_bytes()
    mtime = path.stat().st_mtime_ns

    write_dataset_card(plan.manifest, metadata, tmp_path / "a", config, SOURCES)
    shuffled = write_dataset_card(
        plan.manifest.sample(frac=1, random_state=1), metadata.sample(frac=1, random_state=2),
        tmp_path / "b", dict(reversed(list(config.items()))), list(reversed(SOURCES)),
    )

    assert path.read_bytes() == first and path.stat().st_mtime_ns == mtime
    assert shuffled.read_bytes() == first
    assert (tmp_path / "b" / "licenses" / "CC-BY.txt").read_bytes() == (
        tmp_path / "a" / "licenses" / "CC-BY.txt").read_bytes()


def test_attributions_follow_the_archive_order_with_counts_of_original_images(tmp_path):
    """Image count descending, then name, Anonymous last (isic zip_download get_attributions)."""
    metadata = crafted_metadata()
    metadata.loc[:, "attribution"] = "Anonymous"
    metadata.loc[metadata.index[:6], "attribution"] = "Zeta Clinic"
    metadata.loc[metadata.index[6:12], "attribution"] = "Alpha Clinic"
    metadata.loc[metadata.index[12:14], "attribution"] = "Beta Clinic"
    plan = planned(metadata)
    card = write_dataset_card(plan.manifest, metadata, tmp_path, plan.config.as_dict(), SOURCES).read_text()

    section = card.split("## Attributions", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. (.+) \((\d+) images?\)$", section, flags=re.MULTILINE)
    originals = plan.manifest.loc[~plan.manifest["is_augmented"], "isic_id"]
    truth = metadata.set_index("isic_id").loc[originals, "attribution"].value_counts()
    assert [(name, int(n)) for name, n in listed] == [(name, int(truth[name])) for name in
                                                      order_attributions(metadata.set_index("isic_id")
                                                                         .loc[originals, "attribution"])]
    assert listed[-1][0] == "Anonymous" and int(listed[-1][1]) == max(int(n) for _, n in listed)


def test_order_attributions_breaks_ties_by_name_and_puts_anonymous_last():
    values = ["B"] * 2 + ["A"] * 2 + ["Anonymous"] * 9 + ["C"] * 3
    assert order_attributions(values) == ["C", "A", "B", "Anonymous"]


@pytest.mark.parametrize(("spelling", "expected"), [*SPELLINGS.items(), ("", ""), (None, ""),
                                                    (float("nan"), ""), ("CC-BY-SA", "CC-BY-SA")])
def test_licence_spellings_are_normalised(spelling, expected):
    assert normalize_license(spelling) == expected


def test_the_card_shows_sources_config_and_seed_but_no_secrets():
    metadata = crafted_metadata()
    plan = planned(metadata, seed=11)
    card = render_dataset_card(plan.manifest, metadata, plan.config.as_dict(), SOURCES)
    sources = {row[0]: row for row in table_after(card, "## Sources")}
    assert sources["melanoma_2024"][1] == "isic_api" and "Melanoma Invasive" in sources["melanoma_2024"][2]
    assert "ISIC_2019_Training_Input.zip" in sources["isic2019"][2]
    assert "must-not-appear" not in card
    assert "Seed: `11`" in card and '"strategy": "oversample"' in card
    assert "(none recorded)" in card and "do not redistribute" in card


def test_licence_texts_ship_with_the_package():
    """The card must work offline: the texts are package data, each naming its official legal code."""
    for name, info in LICENSES.items():
        assert info.legal_code in license_text(name)
    with pytest.raises(KeyError):
        license_text("CC-BY-SA")


def test_a_manifest_read_back_from_csv_gives_the_same_card(tmp_path):
    """balanced_splits may hand over manifest.csv as read from disk (text booleans, empty cells)."""
    metadata = crafted_metadata()
    plan = planned(metadata)
    plan.manifest.to_csv(tmp_path / "manifest.csv", index=False)
    from_disk = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    config = plan.config.as_dict()
    assert render_dataset_card(from_disk, metadata, config, SOURCES) == render_dataset_card(
        plan.manifest, metadata, config, SOURCES)


def test_missing_columns_are_named():
    metadata = crafted_metadata()
    with pytest.raises(ValueError, match="'split'"):
        render_dataset_card(pd.DataFrame({"isic_id": ["ISIC_0000100"], "label": ["benign"]}), metadata, {}, [])


def test_card_path_is_inside_out_dir(tmp_path: Path):
    metadata = crafted_metadata()
    plan = planned(metadata)
    path = write_dataset_card(plan.manifest, metadata, tmp_path / "neural_network_data", {}, [])
    assert path == tmp_path / "neural_network_data" / CARD_NAME and path.is_file()
    assert "Seed: `not recorded`" in path.read_text()
