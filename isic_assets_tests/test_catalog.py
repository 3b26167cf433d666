"""The catalog is what users write by hand: every mistake must name the source and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from isic_assets.core.sources.catalog import FORMATS, CatalogError, load_catalog, parse_catalog


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_builtin_catalog_has_demo_and_every_challenge_year():
    catalog = load_catalog()
    challenges = ["isic2016", "isic2017", "isic2018", "isic2019", "isic2020"]
    assert [s.name for s in catalog.select("challenges")] == challenges
    assert {s.format for s in catalog.select("demo")} >= {"isic2016", "isic2019", "isic2020", "isic_archive_zip"}


def test_real_sources_try_the_current_bucket_first_then_the_old_one():
    """The challenge files moved buckets on 2025-09-19 (docs/ISIC_SOURCES.md 1.1); both are kept."""
    source = load_catalog().sources["isic2019"]
    urls = source.files["images"].urls
    assert urls[0] == "https://isic-archive.s3.amazonaws.com/challenges/2019/ISIC_2019_Training_Input.zip"
    assert urls[1] == "https://isic-challenge-data.s3.amazonaws.com/2019/ISIC_2019_Training_Input.zip"
    assert source.files["images"].filename == "ISIC_2019_Training_Input.zip"


def test_selection_expands_groups_and_keeps_catalog_order():
    """Catalog order decides gap filling, so the spelling of ISIC_SOURCES must not change it."""
    catalog = load_catalog()
    names = [s.name for s in catalog.select("isic2020, isic2016")]
    assert names == ["isic2016", "isic2020"]


def test_unknown_selection_lists_known_names():
    with pytest.raises(CatalogError, match=r"unknown source 'isic2021'.*demo"):
        load_catalog().select("isic2021")


def test_user_catalog_adds_sources(tmp_path):
    path = _write(tmp_path, """
sources:
  my_2019_mirror:
    format: isic2019
    files:
      images: https://host/ISIC_2019_Training_Input.zip
      ground_truth: https://host/ISIC_2019_Training_GroundTruth.csv
      metadata: https://host/ISIC_2019_Training_Metadata.csv
    sha256: {images: "%s"}
""" % ("ab" * 32))
    catalog = load_catalog(path)
    source = catalog.select("my_2019_mirror")[0]
    assert source.files["images"].sha256 == "ab" * 32
    assert source.files["metadata"].urls == ("https://host/ISIC_2019_Training_Metadata.csv",)
    assert "isic2016" in catalog.sources  # built-ins stay


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("format: isic2031\n    files: {images: https://h/a.zip}", "source 'bad'.*unknown format 'isic2031'"),
        ("format: isic2019\n    files: {images: https://h/a.zip, ground_truth: https://h/b.csv}",
         "source 'bad'.*needs the role\\(s\\) \\['metadata'\\]"),
        ("format: isic2016\n    files: {images: ftp://h/a.zip, ground_truth: https://h/b.csv}",
         "source 'bad'.*'ftp://h/a.zip' is not a usable URL"),
        ("format: isic2016\n    files: {images: https://h/a.zip, ground_truth: /local/b.csv}",
         "source 'bad'.*'/local/b.csv' is not a usable URL"),
        ("format: isic2016\n    files: {images: https://h/a.zip, ground_truth: https://h/b.csv, masks: https://h/m.zip}",
         "source 'bad'.*has no role\\(s\\) \\['masks'\\]"),
        ("format: isic2016\n    files: {images: https://h/a.zip, ground_truth: https://h/b.csv}\n"
         "    sha256: {images: xyz}",
         "source 'bad'.*64 hex digits"),
    ],
)
def test_catalog_errors_name_the_source(tmp_path, body, message):
    path = _write(tmp_path, f"sources:\n  bad:\n    {body}\n")
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_user_source_cannot_shadow_a_builtin(tmp_path):
    path = _write(tmp_path, "sources:\n  isic2019:\n    format: isic2016\n    files: {images: https://h/a.zip, "
                            "ground_truth: https://h/b.csv}\n")
    with pytest.raises(CatalogError, match=r"'isic2019' is already defined"):
        load_catalog(path)


def test_file_urls_and_mirror_lists_are_accepted():
    catalog = parse_catalog({"sources": {"local": {"format": "isic_archive_zip", "files": {
        "archive": ["file:///srv/isic/export.zip", "https://backup/export.zip"]}}}}, origin="test")
    assert catalog.sources["local"].files["archive"].filename == "export.zip"


def test_demo_placeholder_must_be_filled():
    source = load_catalog().sources["demo_isic2016"]
    assert source.placeholders == {"demo_mirror"}
    filled = source.with_substitutions({"demo_mirror": "http://127.0.0.1:8123/"})
    assert filled.files["images"].urls[0] == "http://127.0.0.1:8123/isic2016/ISBI2016_ISIC_Part3_Training_Data.zip"
    with pytest.raises(CatalogError, match=r"placeholder"):
        source.with_substitutions({})


def test_formats_match_the_documented_list():
    assert set(FORMATS) == {"isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "isic2024", "isic_archive_zip",
                            "isic_api"}


def test_api_source_shape(tmp_path):
    """issue 6: the live Archive as a source, searched by query and collections."""
    path = _write(tmp_path, """
sources:
  melanoma_2024:
    format: isic_api
    query: 'diagnosis_3:"Melanoma Invasive" AND age_approx:[20 TO 80]'
    collections: [70, 249]
    limit: 0
""")
    source = load_catalog(path).select("melanoma_2024")[0]
    assert source.api is not None
    assert source.api.collections == (70, 249)
    assert source.api.api_url == "https://api.isic-archive.com/api/v2/"
    assert source.files == {}


@pytest.mark.parametrize(("body", "message"), [
    ("collections: [seventy]", "collections"),
    ("limit: -1", "limit"),
    ("files: {images: https://h/a.zip}", "format isic_api takes"),
    ("api_url: notaurl", "not a usable URL"),
])
def test_api_source_errors(tmp_path, body, message):
    path = _write(tmp_path, f"sources:\n  bad:\n    format: isic_api\n    {body}\n")
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)
