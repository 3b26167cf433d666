"""Combining harmonized sources: overlap counts across years, gap filling, and label conflicts.

The real overlaps (docs/ISIC_SOURCES.md 1.5) decide the unique image count a leakage-free split starts
from; the small inline frames pin down the combining rules so they hold everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.merge import vocab
from isic_assets.core.merge.combine import CONFLICT_FRAME_COLUMNS, Combined, combine_sources
from isic_assets.core.merge.harmonize import (
    BASE_COLUMNS,
    harmonize_isic2016,
    harmonize_isic2017,
    harmonize_isic2018,
    harmonize_isic2019,
    harmonize_isic2020,
)
from isic_assets_tests.test_harmonize import (
    DUPLICATES_2020,
    GT_2016_TEST,
    GT_2016_TRAIN,
    GT_2017_TRAIN,
    GT_2017_VAL,
    GT_2019,
    GT_2020_V2,
    HAM,
    META_2017_TRAIN,
    META_2019,
    ham_ground_truth_csv,
)

#: The genuine label disagreements between releases in the saved CSVs (eyeballed, see the report):
#: three images that 2016 calls benign and 2017 and 2019 call melanoma, and two HAM images aged 5
#: in HAM10000 and 0 in 2019.
EXPECTED_REAL_CONFLICTS = {
    (
        "ISIC_0000077",
        "benign_malignant",
    ): "isic2016_train=benign; isic2017_train=malignant; isic2019=malignant",
    (
        "ISIC_0000511",
        "benign_malignant",
    ): "isic2016_train=benign; isic2017_train=malignant; isic2019=malignant",
    (
        "ISIC_0010094",
        "benign_malignant",
    ): "isic2016_train=benign; isic2017_train=malignant; isic2019=malignant",
    ("ISIC_0025101", "age_approx"): "isic2018=5; isic2019=0",
    ("ISIC_0029970", "age_approx"): "isic2018=5; isic2019=0",
}


@pytest.fixture(scope="module")
def real_sources(isic_reference: Path) -> list[tuple[str, pd.DataFrame]]:
    """Every saved labelled release, in catalog order (2016 -> 2020)."""
    ref = isic_reference
    return [
        ("isic2016_train", harmonize_isic2016(ref / GT_2016_TRAIN).frame),
        ("isic2016_test", harmonize_isic2016(ref / GT_2016_TEST).frame),
        ("isic2017_train", harmonize_isic2017(ref / GT_2017_TRAIN, ref / META_2017_TRAIN).frame),
        ("isic2017_val", harmonize_isic2017(ref / GT_2017_VAL).frame),
        ("isic2018", harmonize_isic2018(ham_ground_truth_csv(ref / HAM), ref / HAM).frame),
        ("isic2019", harmonize_isic2019(ref / GT_2019, ref / META_2019).frame),
        ("isic2020", harmonize_isic2020(ref / GT_2020_V2, ref / DUPLICATES_2020).frame),
    ]


@pytest.fixture(scope="module")
def combined_real(real_sources: list[tuple[str, pd.DataFrame]]) -> Combined:
    return combine_sources(real_sources)


def _listed_by(frame: pd.DataFrame, *prefixes: str) -> pd.Series:
    """Rows whose ``sources`` include at least one source of every given prefix."""
    listed = pd.Series(True, index=frame.index)
    for prefix in prefixes:
        listed &= frame["sources"].str.contains(rf"(?:^|;){prefix}", regex=True)
    return listed


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.needs_shared
def test_unique_counts_across_years(
    real_sources: list[tuple[str, pd.DataFrame]], combined_real: Combined
) -> None:
    """2016 (1,279) + 2017 (2,150) + HAM (10,015) + 2019 (25,331) = 25,398 unique; + 2020 = 58,524."""
    without_2020 = combine_sources(real_sources[:-1]).frame
    assert len(without_2020) == 25398
    assert len(combined_real.frame) == 58524
    assert combined_real.frame["isic_id"].is_unique


@pytest.mark.needs_shared
def test_overlap_facts(combined_real: Combined) -> None:
    """docs/ISIC_SOURCES.md 1.5: 2016 ∩ 2019 = 1,212 (after stripping _downsampled), 2016 ∩ 2017 = 1,054,
    2019 ⊇ HAM and ⊇ 2017, and 2020 shares no id with the earlier years."""
    frame = combined_real.frame
    assert int(_listed_by(frame, "isic2016", "isic2019").sum()) == 1212
    assert int(_listed_by(frame, "isic2016_train", "isic2019").sum()) == 859
    assert int(_listed_by(frame, "isic2016_test", "isic2019").sum()) == 353
    assert int(_listed_by(frame, "isic2016", "isic2017").sum()) == 1054
    assert int(_listed_by(frame, "isic2018", "isic2019").sum()) == 10015
    assert int(_listed_by(frame, "isic2017", "isic2019").sum()) == 2150
    assert int((frame["sources"] == "isic2020").sum()) == 33126
    assert frame["sources"].str.startswith("isic2016_train;isic2017_train;isic2019").sum() == 746


@pytest.mark.needs_shared
def test_real_label_conflicts_are_the_known_genuine_ones(combined_real: Combined) -> None:
    """The saved releases disagree on exactly 5 (image, column) pairs; vocabulary differences
    (SK vs BKL, akiec vs AK/SCC, torso vs anterior torso) must not appear as conflicts."""
    conflicts = combined_real.conflicts
    assert tuple(conflicts.columns) == CONFLICT_FRAME_COLUMNS
    found = {(row.isic_id, row.column): row.values for row in conflicts.itertuples()}
    assert found == EXPECTED_REAL_CONFLICTS
    kept = dict(zip(zip(conflicts["isic_id"], conflicts["column"], strict=True), conflicts["kept"], strict=True))
    assert kept[("ISIC_0000077", "benign_malignant")] == "benign", "first in catalog order is kept"


@pytest.mark.needs_shared
def test_finer_labels_win_across_years(combined_real: Combined) -> None:
    """HAM akiec is split by 2019 into AK 130 / SCC 197 (docs/ISIC_SOURCES.md 1.2): the split is kept;
    2017 seborrheic keratosis beats 2019's coarser benign keratosis; HAM 'trunk' fills 2019's gap."""
    frame = combined_real.frame
    ham = frame[frame["sources"].str.contains("isic2018")]
    assert int((ham["diagnosis"] == "actinic keratosis").sum()) == 130
    assert int((ham["diagnosis"] == "squamous cell carcinoma").sum()) == 197
    assert int((ham["diagnosis"] == vocab.AKIEC).sum()) == 0
    assert ham.loc[ham["diagnosis"] == "squamous cell carcinoma", "benign_malignant"].eq("malignant").all()
    assert int((ham["anatom_site_general"] == "torso").sum()) == 1404
    from_2017 = frame[frame["sources"].str.contains("isic2017")]
    assert int((from_2017["diagnosis"] == "seborrheic keratosis").sum()) == 296
    assert int((from_2017["diagnosis"] == "benign keratosis").sum()) == 0


@pytest.mark.needs_shared
def test_gaps_filled_from_later_sources(combined_real: Combined) -> None:
    """2016 has only benign/malignant; the same image's age and site come from 2017/2019."""
    row = combined_real.frame.set_index("isic_id").loc["ISIC_0000000"]
    assert row["sources"] == "isic2016_train;isic2017_train;isic2019"
    assert row["benign_malignant"] == "benign"
    assert row["diagnosis"] == "nevus"
    assert row["age_approx"] == 55
    assert row["anatom_site_general"] == "anterior torso"
    assert row["copyright_license"] == "CC-0", "the first release's licence is kept"


# ---------------------------------------------------------------------------------------------
# Rules, on tiny frames
# ---------------------------------------------------------------------------------------------


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """A harmonized-shaped frame from partial rows ("" for absent strings, NA for absent ages)."""
    data: dict[str, pd.Series] = {}
    for column in BASE_COLUMNS:
        if column == "age_approx":
            data[column] = pd.Series([row.get(column, pd.NA) for row in rows], dtype="Int64")
        else:
            data[column] = pd.Series([str(row.get(column, "")) for row in rows], dtype="str")
    return pd.DataFrame(data)


def test_first_non_empty_in_catalog_order_and_sources_order() -> None:
    later_listed_first = frame(
        [{"isic_id": "ISIC_0000002", "sex": "male"}, {"isic_id": "ISIC_0000001", "age_approx": 40}]
    )
    earlier = frame([{"isic_id": "ISIC_0000001", "benign_malignant": "benign", "sex": "female"}])
    result = combine_sources([("zeta", earlier), ("alpha", later_listed_first)]).frame.set_index("isic_id")
    assert result.loc["ISIC_0000001", "sources"] == "zeta;alpha", "catalog order, not alphabetical"
    assert result.loc["ISIC_0000001", "sex"] == "female"
    assert result.loc["ISIC_0000001", "age_approx"] == 40, "gap filled from the later source"
    assert result.loc["ISIC_0000002", "sources"] == "alpha"
    assert result.loc["ISIC_0000002", "benign_malignant"] == ""
    assert str(result["age_approx"].dtype) == "Int64"


def test_conflicts_list_every_source_and_keep_the_first() -> None:
    a = frame(
        [{"isic_id": "ISIC_0000001", "benign_malignant": "benign", "age_approx": 50, "lesion_id": "IL_1"}]
    )
    b = frame(
        [{"isic_id": "ISIC_0000001", "benign_malignant": "malignant", "age_approx": 55, "lesion_id": "IL_1"}]
    )
    c = frame([{"isic_id": "ISIC_0000001", "benign_malignant": "malignant"}])
    result = combine_sources([("isic2016", a), ("isic2019", b), ("archive", c)])
    conflicts = result.conflicts.set_index("column")
    assert (
        conflicts.loc["benign_malignant", "values"]
        == "isic2016=benign; isic2019=malignant; archive=malignant"
    )
    assert conflicts.loc["benign_malignant", "kept"] == "benign"
    assert conflicts.loc["age_approx", "values"] == "isic2016=50; isic2019=55"
    assert "lesion_id" not in conflicts.index, "equal values are no conflict"
    assert result.frame.loc[0, "benign_malignant"] == "benign"


@pytest.mark.parametrize(
    ("column", "coarse", "fine"),
    [
        ("diagnosis", "benign keratosis", "seborrheic keratosis"),
        ("diagnosis", vocab.AKIEC, "squamous cell carcinoma"),
        ("diagnosis", "unknown", "nevus"),
        ("anatom_site_general", "torso", "anterior torso"),
        ("anatom_site_general", "lower extremity", "palms/soles"),
        ("benign_malignant", "indeterminate", "malignant"),
    ],
)
def test_granularity_is_not_a_conflict_and_finer_is_kept(column: str, coarse: str, fine: str) -> None:
    first = frame([{"isic_id": "ISIC_0000001", column: coarse}])
    second = frame([{"isic_id": "ISIC_0000001", column: fine}])
    result = combine_sources([("a", first), ("b", second)])
    assert result.conflicts.empty
    assert result.frame.loc[0, column] == fine
    literal = combine_sources([("a", first), ("b", second)], prefer_finer=False)
    assert literal.frame.loc[0, column] == coarse


def test_sibling_values_are_a_conflict() -> None:
    """anterior vs posterior torso refine the same coarse value but contradict each other."""
    sources = [
        ("a", frame([{"isic_id": "ISIC_0000001", "anatom_site_general": "torso"}])),
        ("b", frame([{"isic_id": "ISIC_0000001", "anatom_site_general": "anterior torso"}])),
        ("c", frame([{"isic_id": "ISIC_0000001", "anatom_site_general": "posterior torso"}])),
    ]
    result = combine_sources(sources)
    assert result.conflicts["values"].tolist() == ["a=torso; b=anterior torso; c=posterior torso"]
    assert result.frame.loc[0, "anatom_site_general"] == "torso"


def test_extra_columns_survive_and_duplicate_ids_are_rejected() -> None:
    with_extra = frame([{"isic_id": "ISIC_0000001"}]).assign(dataset=["rosendahl"])
    plain = frame([{"isic_id": "ISIC_0000002"}])
    result = combine_sources([("ham", with_extra), ("other", plain)]).frame.set_index("isic_id")
    assert result.loc["ISIC_0000001", "dataset"] == "rosendahl"
    assert result.loc["ISIC_0000002", "dataset"] == ""
    twice = frame([{"isic_id": "ISIC_0000001"}, {"isic_id": "ISIC_0000001"}])
    with pytest.raises(ValueError, match="source 'bad': isic_id ISIC_0000001 appears more than once"):
        combine_sources([("bad", twice)])


def test_empty_input() -> None:
    result = combine_sources([])
    assert list(result.frame.columns) == ["isic_id", "sources"]
    assert result.conflicts.empty


def test_seventy_thousand_overlapping_rows_combine_with_exactly_the_real_conflicts() -> None:
    """70k+ rows of overlapping releases (mostly agreeing, some coarser, 1% genuinely conflicting,
    like the real overlaps): granularity is no conflict, flipped labels are. Its speed is measured
    by bench/bench_core.py."""
    n = 40_000
    numbers = np.arange(n)
    ids = np.array([f"ISIC_{i:07d}" for i in numbers], dtype=object)
    sites = np.array(vocab.SITES_2019, dtype=object)

    def source(selected: np.ndarray, coarse_torso: bool, flip: bool) -> pd.DataFrame:
        site = sites[selected % len(sites)]
        if coarse_torso:
            site = np.where(np.char.endswith(site.astype(str), "torso"), "torso", site).astype(object)
        label = np.where(selected % 7 == 0, "malignant", "benign").astype(object)
        if flip:
            label = np.where(selected % 100 == 1, "malignant", label).astype(object)
        columns = {name: pd.Series([""] * len(selected), dtype="str") for name in BASE_COLUMNS}
        columns.update(
            isic_id=pd.Series(ids[selected], dtype="str"),
            benign_malignant=pd.Series(label, dtype="str"),
            anatom_site_general=pd.Series(site, dtype="str"),
            age_approx=pd.Series((selected % 18) * 5, dtype="Int64"),
            lesion_id=pd.Series([f"IL_{i:07d}" for i in selected // 2], dtype="str"),
        )
        return pd.DataFrame(columns)

    sources = [
        ("old", source(numbers[: n // 2], coarse_torso=True, flip=False)),
        ("mid", source(numbers[n // 4 : 3 * n // 4], coarse_torso=False, flip=True)),
        ("new", source(numbers[n // 2 :], coarse_torso=False, flip=False)),
    ]
    assert sum(len(f) for _, f in sources) >= 60_000
    result = combine_sources(sources)
    assert len(result.frame) == n
    assert set(result.conflicts["column"]) == {"benign_malignant"}
    flipped = numbers[n // 4 : 3 * n // 4]  # "mid" overlaps "old" or "new" everywhere
    assert len(result.conflicts) == int(((flipped % 100 == 1) & (flipped % 7 != 0)).sum())
