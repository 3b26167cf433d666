"""EDA figures, tables and report built from the merged tables alone."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
from matplotlib.figure import Figure

from isic_assets.core.eda import figures as eda
from isic_assets.core.eda import tables as eda_tables
from isic_assets.core.eda.figures import (
    FIGURE_TITLES,
    REPORT_NAME,
    TABLE_TITLES,
    EdaResult,
    benign_malignant_ratio,
    build_figures,
    build_tables,
    make_eda,
    markdown_gallery,
    render_png,
)
from isic_assets.core.eda.report import THUMBNAIL_MAX_CHARS

EXPECTED_FILES = {f"{name}.png" for name in FIGURE_TITLES} | {REPORT_NAME}

# 15 distinct site values (HAM10000 `localization` has 15): the site figure must stay readable.
SITES = [
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity",
    "neck", "scalp", "trunk", "unknown", "upper extremity",
]
CLASS_SIZES = {"benign": 250, "malignant": 60, "indeterminate": 20, "": 30}
SOURCES = {  # source: (rows, the image sizes it publishes)
    "isic2016": (120, [(1024, 768), (600, 450)]),
    "isic2019": (150, [(1024, 1024), (600, 450), (767, 576)]),
    "isic2020": (90, [(6000, 4000), (1872, 1053)]),
}


def _metadata(seed: int = 0) -> pd.DataFrame:
    """360 rows shaped like merged_data/metadata.parquet: typed ages and sizes, "" for missing text."""
    rng = np.random.default_rng(seed)
    n = sum(size for size, _ in SOURCES.values())
    labels = rng.permutation(np.repeat(list(CLASS_SIZES), list(CLASS_SIZES.values())))
    sources, widths, heights = [], [], []
    for name, (rows, sizes) in SOURCES.items():
        picks = rng.integers(0, len(sizes), rows)
        sources += [name] * rows
        widths += [sizes[i][0] for i in picks]
        heights += [sizes[i][1] for i in picks]
    ages = pd.array(rng.integers(1, 18, n) * 5, dtype="Int64")
    ages[rng.random(n) < 0.15] = pd.NA
    sites = rng.choice([*SITES, ""], n)
    sites[:16] = [*SITES, ""]  # every value present whatever the seed
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    return pd.DataFrame({
        "isic_id": ids,
        "source": sources,
        "sources": sources,
        "benign_malignant": labels,
        "diagnosis": np.where(labels == "malignant", "melanoma", ""),
        "age_approx": ages,
        "sex": rng.choice(["male", "female", ""], n, p=[0.45, 0.45, 0.10]),
        "anatom_site_general": sites,
        "patient_id": [f"IP_{i % 97:07d}" for i in range(n)],
        "lesion_id": "",
        "image": [f"images/{i}.jpg" for i in ids],  # no such files: EDA must not need them
        "width": np.array(widths, dtype="int64"),
        "height": np.array(heights, dtype="int64"),
    })


def _duplicates() -> pd.DataFrame:
    reasons = ["identical_content"] * 5 + ["same_id_other_source"] * 3 + ["listed_duplicate"] * 2
    return pd.DataFrame({
        "isic_id": [f"ISIC_900{i:04d}" for i in range(len(reasons))],
        "kept_isic_id": "ISIC_0000001",
        "reason": reasons,
        "source": "isic2019",
        "member": "ISIC_2019_Training_Input/x.jpg",
        "sha256": "0" * 64,
    })


def _quarantine() -> pd.DataFrame:
    reasons = ["missing_image"] * 4 + ["decode_error"]
    return pd.DataFrame({
        "isic_id": [f"ISIC_800{i:04d}" for i in range(len(reasons))],
        "source": "isic2016;isic2017",
        "member": "",
        "reason": reasons,
        "detail": "",
        "id_kept_from_other_source": False,
    })


def _texts(figure: Figure) -> list[str]:
    """Every visible string of a figure: titles, labels, tick labels and annotations."""
    found = [t.get_text() for t in figure.texts]
    for ax in figure.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        found += [t.get_text() for t in ax.texts]
        found += [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
    return found


def _assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with PIL.Image.open(path) as image:
        width, height = image.size
    assert 400 <= width <= 3000 and 250 <= height <= 3000


@pytest.fixture(scope="module")
def opened_paths() -> list[object]:
    """Files the shared run opened with Pillow (anything but the in-memory PNGs it makes itself)."""
    return []


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, opened_paths: list[object]) -> EdaResult:
    """One run on the realistic frame, shared by the read-only tests (a run renders 8 figures)."""
    real_open = PIL.Image.open

    def watching_open(fp: object, *args: object, **kwargs: object) -> PIL.Image.Image:
        if not isinstance(fp, io.BytesIO):
            opened_paths.append(fp)
        return real_open(fp, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PIL.Image, "open", watching_open)
        return make_eda(_metadata(), _duplicates(), _quarantine(), tmp_path_factory.mktemp("eda"))


@pytest.fixture(scope="module")
def figures() -> dict[str, Figure]:
    return build_figures(_metadata(), _duplicates(), _quarantine())


def test_writes_every_figure_as_a_png_and_the_report(result: EdaResult) -> None:
    """The asset promises a fixed set of files; each figure must be a real, sizeable PNG."""
    out_dir = result.report.parent
    assert {p.name for p in out_dir.iterdir()} == EXPECTED_FILES
    assert set(result.figures) == set(FIGURE_TITLES)
    for name, path in result.figures.items():
        assert path == out_dir / f"{name}.png"
        _assert_png(path)
    assert result.report == out_dir / REPORT_NAME and result.report.stat().st_size > 0


def test_rerun_replaces_the_files_under_the_same_names(result: EdaResult, tmp_path: Path) -> None:
    """Stable names let a re-materialization overwrite the old picture instead of piling up files."""
    before = {p.name: p.read_bytes() for p in result.report.parent.iterdir()}
    for name, data in before.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "sex.png").write_bytes(b"stale half-written figure")
    (tmp_path / ".tmp-leftover.png").write_bytes(b"from a killed run")

    again = make_eda(_metadata(), _duplicates(), _quarantine(), tmp_path)

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(after) == EXPECTED_FILES
    assert again.figures == {name: tmp_path / path.name for name, path in result.figures.items()}
    _assert_png(again.figures["sex"])
    assert after == before  # same data, same bytes: nothing time- or order-dependent leaks in


def test_report_is_self_contained_and_shows_the_key_numbers(result: EdaResult) -> None:
    """The report is mailed and archived alone, so it must carry its figures and numbers inline."""
    page = result.report.read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(FIGURE_TITLES)
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in result.figures.values()}
    assert not re.search(r"https?://|<script|<link|src=\"(?!data:)", page)
    for title in [*FIGURE_TITLES.values(), *TABLE_TITLES.values()]:
        assert title in page
    for label, count in [("benign", 250), ("malignant", 60), ("indeterminate", 20), ("unlabelled", 30)]:
        assert f'<td>{label}</td><td class="num">{count}</td>' in page
    assert '<td>identical_content</td><td class="num">5</td>' in page
    assert '<td>missing_image</td><td class="num">4</td>' in page
    assert "<th>metadata rows</th><td>360</td>" in page


def test_tables_count_what_the_metadata_holds() -> None:
    """The tables are the numbers a reader quotes; they must match a hand count of the input."""
    metadata = _metadata()
    original = metadata.copy()
    tables = build_tables(metadata, _duplicates(), _quarantine())

    pd.testing.assert_frame_equal(metadata, original)  # the caller's frame is left alone
    classes = tables["class_counts"].set_index("class")["count"].to_dict()
    assert classes == {"benign": 250, "malignant": 60, "indeterminate": 20, "unlabelled": 30}
    per_source = tables["source_by_class"].set_index("source")
    assert per_source["total"].to_dict() == {name: rows for name, (rows, _) in SOURCES.items()}
    assert int(per_source["malignant"].sum()) == 60
    sites = tables["anatomical_site_by_class"]
    assert set(sites["anatom_site_general"]) == {*SITES, eda_tables.MISSING}
    assert sites["anatom_site_general"].iloc[-1] == eda_tables.MISSING
    assert sites["total"].iloc[:-1].is_monotonic_decreasing
    missing = tables["missing_values"].set_index("column")["missing_percent"]
    assert missing["sex"] == pytest.approx(100 * (metadata["sex"] == "").mean(), abs=0.01)
    assert missing["age_approx"] == pytest.approx(100 * metadata["age_approx"].isna().mean(), abs=0.01)
    assert missing["lesion_id"] == 100 and missing["isic_id"] == 0
    assert tables["duplicates_by_reason"].values.tolist() == [
        ["identical_content", 5], ["same_id_other_source", 3], ["listed_duplicate", 2]]
    assert tables["quarantine_by_reason"].values.tolist() == [["missing_image", 4], ["decode_error", 1]]


def test_csv_strings_and_typed_frame_give_the_same_tables(tmp_path: Path) -> None:
    """metadata.csv read as strings ("" for missing) and metadata.parquet must tell the same story."""
    typed = _metadata()
    typed.to_csv(tmp_path / "metadata.csv", index=False)
    as_text = pd.read_csv(tmp_path / "metadata.csv", dtype=str, keep_default_na=False)
    from_text = build_tables(as_text, _duplicates(), _quarantine())
    for name, table in build_tables(typed, _duplicates(), _quarantine()).items():
        pd.testing.assert_frame_equal(from_text[name], table, check_dtype=False, obj=name)


def test_thumbnails_are_small_decodable_pngs(result: EdaResult) -> None:
    """Thumbnails go into Dagster's event log, so each must stay small and still be a PNG."""
    assert set(result.thumbnails) == set(FIGURE_TITLES)
    for name, encoded in result.thumbnails.items():
        assert len(encoded) <= THUMBNAIL_MAX_CHARS, name
        with PIL.Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
            assert image.format == "PNG"
            assert 150 <= max(image.size) <= 600


def test_markdown_gallery_embeds_every_thumbnail_with_its_path(result: EdaResult) -> None:
    """The asset page shows the figures inline and tells where the full-size files are."""
    markdown = markdown_gallery(result)
    for name, encoded in result.thumbnails.items():
        assert f"![{name}](data:image/png;base64,{encoded})" in markdown
        assert str(result.figures[name]) in markdown
    assert str(result.report) in markdown


def test_class_title_states_the_benign_to_malignant_ratio(figures: dict[str, Figure]) -> None:
    """The imbalance is the first thing a modeller needs; it belongs in the class figure's title."""
    assert "benign:malignant = 4.2 : 1" in figures["class_distribution"].axes[0].get_title()  # 250/60
    texts = _texts(figures["class_distribution"])
    assert "250\n(69.4%)" in texts and "30\n(8.3%)" in texts  # counts on bars, unlabelled included
    assert benign_malignant_ratio(10, 40) == "1 : 4.0"
    assert benign_malignant_ratio(10, 0) == "n/a (no malignant images)"


def test_fifteen_site_values_all_get_a_labelled_bar(figures: dict[str, Figure], result: EdaResult) -> None:
    """With 15 sites no tick label may be thinned out, and each bar carries its total."""
    table = result.tables["anatomical_site_by_class"]
    left = figures["anatomical_site"].axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == table["anatom_site_general"].tolist()
    assert {f"{n:,}" for n in table["total"]} <= {t.get_text() for t in left.texts}


def _degenerate(case: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    metadata, duplicates, quarantine = _metadata(), _duplicates(), _quarantine()
    if case == "all_ages_missing":
        metadata = metadata.assign(age_approx=pd.array([pd.NA] * len(metadata), dtype="Int64"))
    elif case == "empty_tables_with_columns":
        duplicates, quarantine = duplicates.iloc[:0], quarantine.iloc[:0]
    elif case == "empty_tables_without_columns":
        duplicates, quarantine = pd.DataFrame(), pd.DataFrame()
    elif case == "no_metadata_rows":
        metadata = metadata.iloc[:0]
    elif case == "no_sizes_recorded":
        metadata = metadata.drop(columns=["width", "height"])
    elif case == "nothing_at_all":
        metadata, duplicates, quarantine = pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    return metadata, duplicates, quarantine


@pytest.mark.parametrize(
    ("case", "figure_name"),
    [
        ("all_ages_missing", "age_distribution"),
        ("empty_tables_with_columns", "duplicates_quarantine"),
        ("empty_tables_without_columns", "duplicates_quarantine"),
        ("no_metadata_rows", "class_distribution"),
        ("no_metadata_rows", "anatomical_site"),
        ("no_metadata_rows", "classes_per_source"),
        ("no_metadata_rows", "missing_values"),
        ("no_metadata_rows", "age_distribution"),
        ("no_sizes_recorded", "image_dimensions"),
        ("nothing_at_all", "missing_values"),
        ("nothing_at_all", "sex"),
    ],
)
def test_an_empty_panel_says_no_data(case: str, figure_name: str) -> None:
    """A first demo run or a filtered selection can lack ages or duplicates: say so, do not crash."""
    figure = build_figures(*_degenerate(case))[figure_name]
    assert any(text.startswith("no data") for text in _texts(figure))
    with PIL.Image.open(io.BytesIO(render_png(figure))) as image:
        assert image.format == "PNG"


def test_degenerate_inputs_still_write_every_file(tmp_path: Path) -> None:
    """No malignant, no ages, no sizes, nothing dropped: the asset still writes its whole folder."""
    metadata = _metadata()
    metadata = metadata[metadata["benign_malignant"] != "malignant"]
    metadata = metadata.assign(age_approx="", width="", height="")  # as read from a CSV with blanks
    duplicates, quarantine = pd.DataFrame(), _quarantine().iloc[:0]

    result = make_eda(metadata, duplicates, quarantine, tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES
    for path in result.figures.values():
        _assert_png(path)
    assert result.tables["class_counts"].set_index("class").loc["malignant", "count"] == 0
    assert result.tables["duplicates_by_reason"].empty and result.tables["dimensions_by_source"].empty
    title = build_figures(metadata, duplicates, quarantine)["class_distribution"].axes[0].get_title()
    assert "n/a (no malignant images)" in title


def test_dimensions_come_from_the_metadata_not_the_image_files(result: EdaResult,
                                                               opened_paths: list[object]) -> None:
    """EDA must never decode images again: sizes were recorded by the single read at merge time."""
    assert opened_paths == []  # and the metadata's image paths do not even exist
    dims = result.tables["dimensions_by_source"].set_index("source")
    assert dims.loc["isic2020", "max_width"] == 6000 and dims.loc["isic2016", "min_height"] == 450
    assert dims["images"].sum() == 360


def test_dimension_scatter_caps_the_points_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tens of thousands of distinct sizes would make the scatter slow and unreadable: sample them."""
    monkeypatch.setattr(eda, "MAX_SCATTER_POINTS", 50)
    metadata = _metadata()
    metadata["width"] = np.arange(len(metadata)) + 300  # every row its own size
    figure = build_figures(metadata, _duplicates(), _quarantine())["image_dimensions"]
    ax = figure.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 50
    assert "weighted sample of 50 sizes shown" in ax.get_title()
    assert ax.get_legend() is not None


@pytest.mark.needs_shared
def test_real_2020_ground_truth_counts(isic_reference: Path, tmp_path: Path) -> None:
    """On the published 2020 ground truth the tables must give the published 32,542 / 584."""
    truth = pd.read_csv(isic_reference / "ISIC_2020_Training_GroundTruth_v2.csv", dtype=str,
                        keep_default_na=False)
    rng = np.random.default_rng(1)
    sizes = np.array([(6000, 4000), (1024, 768), (1872, 1053), (640, 480)])[rng.integers(0, 4, len(truth))]
    metadata = pd.DataFrame({
        "isic_id": truth["image_name"],
        "source": rng.choice(["isic2020", "isic2020_mirror"], len(truth), p=[0.9, 0.1]),
        "benign_malignant": truth["benign_malignant"],
        "diagnosis": truth["diagnosis"],
        "age_approx": truth["age_approx"],
        "sex": truth["sex"],
        "anatom_site_general": truth["anatom_site_general_challenge"],
        "patient_id": truth["patient_id"],
        "lesion_id": truth["lesion_id"],
        "width": sizes[:, 0],
        "height": sizes[:, 1],
    })

    result = make_eda(metadata, _duplicates().iloc[:0], _quarantine().iloc[:0], tmp_path)

    counts = result.tables["class_counts"].set_index("class")["count"].to_dict()
    assert counts == {"benign": 32542, "malignant": 584, "indeterminate": 0, "unlabelled": 0}
    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES
    assert "32,542" in result.report.read_text(encoding="utf-8")


def test_column_subset_with_chunked_facts_writes_the_same_report(tmp_path: Path) -> None:
    """The asset reads EDA_COLUMNS only and sums the missing shares and the fingerprint chunk by chunk
    (chunks of 7 rows here): the report must be byte-identical to one made from the whole table."""
    from isic_assets.core import layout

    csv = tmp_path / "metadata.csv"
    _metadata().assign(extra=lambda f: np.where(np.arange(len(f)) % 3 == 0, "", "x")).to_csv(csv, index=False)
    whole = make_eda(layout.read_table(csv), _duplicates(), _quarantine(), tmp_path / "whole")
    facts = eda_tables.MetadataFacts.from_chunks(layout.read_table_chunks(csv, rows=7), layout.table_columns(csv))
    narrow = layout.read_table(csv, columns=eda_tables.EDA_COLUMNS)
    assert "extra" not in narrow.columns and len(narrow.columns) < len(layout.table_columns(csv))
    subset = make_eda(narrow, _duplicates(), _quarantine(), tmp_path / "subset", facts=facts)
    assert subset.inputs == whole.inputs
    for name, table in whole.tables.items():
        pd.testing.assert_frame_equal(subset.tables[name], table, obj=name)
    assert (tmp_path / "subset" / REPORT_NAME).read_bytes() == (tmp_path / "whole" / REPORT_NAME).read_bytes()
    assert subset.tables["missing_values"].set_index("column")["missing_percent"]["extra"] == pytest.approx(
        100 * 120 / 360, abs=0.001)


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 1 << 20])
def test_text_fingerprint_read_in_pieces_equals_the_whole_text_fingerprint(tmp_path: Path,
                                                                            chunk_chars: int) -> None:
    """The EDA's data version hashes metadata.csv a piece at a time; it must be the digest of the
    whole text as read_text gives it: CRLF and CR made newlines (also when cut between two pieces),
    non-ASCII text encoded once."""
    from isic_assets.defs.metadata import fingerprint

    path = tmp_path / "metadata.csv"
    path.write_bytes("isic_id,note\r\nISIC_1,\"a\rb\"\r\nISIC_2,Ã©lan ü\nISIC_3,\r\r\n".encode())
    assert eda_tables.text_fingerprint(path, chunk_chars) == fingerprint([path.read_text()])
    path.write_bytes(b"")
    assert eda_tables.text_fingerprint(path, chunk_chars) == fingerprint([path.read_text()])
