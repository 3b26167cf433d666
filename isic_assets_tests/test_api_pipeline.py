"""The live ISIC Archive as a source, end to end through Dagster, against the loopback fake API.

The fake follows the documented record shape (absent keys for missing values, cursor pages, signed
content URLs that expire), so this is the path a user's `format: isic_api` catalog entry takes:
raw_zips pages and downloads, the merge reads the folder like an Archive export, and the splits
carry every image's licence and attribution into DATASET_CARD.md.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from isic_assets.core import layout
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets_tests.fake_isic_api import FakeIsicApi, sample_images


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("api")
    with FakeIsicApi(tmp_path / "server", sample_images(), max_page_size=5) as fake:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(f"sources:\n  archive_live:\n    format: isic_api\n    api_url: {fake.api_url}\n")
        data_dir = tmp_path / "data"
        settings = IsicSettings(data_dir=str(data_dir), sources="archive_live", catalog=str(catalog))
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks], instance=instance, resources={"isic": settings},
                run_config={"ops": {
                    # one public image of eleven has no diagnosis at all: 9% unlabelled, allowed here
                    "merged_metadata_missing_data": {"config": {"max_missing_label_pct": 20.0}},
                    "balanced_splits": {"config": {"strategy": "none", "train": 0.34, "validation": 0.33,
                                                   "test": 0.33}},

                }},
                raise_on_error=False,
            )
            content_before = len(fake.content_requests())
            again = dg.materialize([*defs.assets], instance=instance, resources={"isic": settings},
                                   selection=["raw_zips"], raise_on_error=False)
            yield data_dir, result, again, (content_before, len(fake.content_requests()))


def test_api_source_downloads_and_merges(api_run):
    data_dir, result, _, _ = api_run
    steps_failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    # Eleven images in whole groups leave validation without a malignant image: the split check says
    # so, correctly (blocking: nothing is downstream of it). Every asset step must succeed.
    assert set(steps_failed) <= {"balanced_splits_split_class_balance"}, steps_failed
    frame = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    public = [img for img in sample_images() if img.public]
    assert sorted(frame["isic_id"]) == sorted(img.isic_id for img in public)
    by_id = frame.set_index("isic_id")
    assert by_id.loc["ISIC_0000002", "benign_malignant"] == "malignant"
    assert by_id.loc["ISIC_0000002", "anatom_site_general"] == "posterior torso"
    assert by_id.loc["ISIC_0000003", "benign_malignant"] == "indeterminate"
    assert by_id.loc["ISIC_0000006", "benign_malignant"] == ""
    assert by_id.loc["ISIC_0000009", "image"].endswith(".png")
    for img in public:
        assert by_id.loc[img.isic_id, "copyright_license"] == img.copyright_license
        assert by_id.loc[img.isic_id, "attribution"] == img.attribution


def test_rerun_fetches_no_image_content(api_run):
    """Images already present with the right size are skipped: no signed URL is fetched again."""
    _, _, again, (before, after) = api_run
    assert again.success
    assert before > 0
    assert after == before


def test_dataset_card_licence_counts_match_the_split_images(api_run):
    data_dir, _, _, _ = api_run
    out = data_dir / layout.SPLITS_DIR
    card = (out / "DATASET_CARD.md").read_text()
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    meta = pd.read_csv(data_dir / layout.MERGED / "metadata.csv", dtype=str, keep_default_na=False)
    licences = meta.set_index("isic_id").loc[manifest["isic_id"], "copyright_license"].value_counts()
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in card.splitlines() if line.startswith("| CC-"))}
    assert set(rows) == set(licences.index)
    for licence, count in licences.items():
        assert int(rows[licence][4]) == count, (licence, rows[licence])  # the "total" column
        assert (out / "licenses" / f"{licence}.txt").is_file()
    assert "Anonymous" in card
