"""Harmonizing every ISIC format: published counts on the real CSVs, and clear errors on bad input.

The real-file tests use the ``isic_reference`` fixture (skipped where the CSVs are absent); the error
tests write tiny CSVs to ``tmp_path`` so they run everywhere.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from isic_assets.core.merge import vocab
from isic_assets.core.merge.harmonize import (
    BASE_COLUMNS,
    Harmonized,
    HarmonizeError,
    harmonize,
    harmonize_isic2016,
    harmonize_isic2017,
    harmonize_isic2018,
    harmonize_isic2019,
    harmonize_isic2020,
    harmonize_isic_archive,
)

GT_2016_TRAIN = "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
GT_2016_TEST = "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
GT_2017_TRAIN = "ISIC-2017_Training_Part3_GroundTruth.csv"
META_2017_TRAIN = "ISIC-2017_Training_Data_metadata.csv"
GT_2017_VAL = "ISIC-2017_Validation_Part3_GroundTruth.csv"
HAM = "HAM10000_metadata.csv"
HAM_8COL = "ham10000_dataverse_8col/HAM10000_metadata"
GT_2019 = "ISIC_2019_Training_GroundTruth.csv"
META_2019 = "ISIC_2019_Training_Metadata.csv"
GT_2020_V1 = "ISIC_2020_Training_GroundTruth.csv"
GT_2020_V2 = "ISIC_2020_Training_GroundTruth_v2.csv"
DUPLICATES_2020 = "ISIC_2020_Training_Duplicates.csv"
KAGGLE_TRAIN = "kaggle_siim_isic_2020/train.csv"

HAM_DX_TO_2018 = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "akiec": "AKIEC",
    "bkl": "BKL",
    "df": "DF",
    "vasc": "VASC",
}


def ham_ground_truth_csv(ham_metadata: Path) -> bytes:
    """The official 2018 one-hot GT is not saved (docs/ISIC_SOURCES.md 4.3); HAM ``dx`` holds the same labels."""
    classes = list(vocab.ISIC2018_CLASSES)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["image", *classes])
    with ham_metadata.open(newline="") as handle:
        for row in csv.DictReader(handle):
            label = HAM_DX_TO_2018[row["dx"]]
            writer.writerow([row["image_id"], *("1.0" if name == label else "0.0" for name in classes)])
    return out.getvalue().encode()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def assert_unified_shape(result: Harmonized) -> None:
    frame = result.frame
    assert tuple(frame.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert frame["isic_id"].is_unique
    assert str(frame["age_approx"].dtype) == "Int64"
    for column in frame.columns:
        if column != "age_approx":
            assert pd.api.types.is_string_dtype(frame[column].dtype), column
            assert not frame[column].isna().any(), column


# ---------------------------------------------------------------------------------------------
# Real files: the published counts come out exactly
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isic2019(isic_reference: Path) -> Harmonized:
    return harmonize_isic2019(isic_reference / GT_2019, isic_reference / META_2019)


@pytest.fixture(scope="module")
def isic2020_v2(isic_reference: Path) -> Harmonized:
    return harmonize_isic2020(isic_reference / GT_2020_V2, isic_reference / DUPLICATES_2020)


@pytest.fixture(scope="module")
def isic2020_v1(isic_reference: Path) -> Harmonized:
    return harmonize_isic2020(isic_reference / GT_2020_V1)


@pytest.mark.needs_shared
@pytest.mark.parametrize(
    ("name", "benign", "malignant"), [(GT_2016_TRAIN, 727, 173), (GT_2016_TEST, 304, 75)]
)
def test_isic2016_counts(isic_reference: Path, name: str, benign: int, malignant: int) -> None:
    """Train writes benign/malignant, test writes 0.0/1.0 (docs/ISIC_SOURCES.md 1.2); both give the counts."""
    result = harmonize_isic2016(isic_reference / name)
    assert_unified_shape(result)
    assert result.frame["benign_malignant"].value_counts().to_dict() == {
        "benign": benign,
        "malignant": malignant,
    }
    assert (result.frame["diagnosis"] == "").all(), "2016 publishes no diagnosis"
    assert set(result.frame["copyright_license"]) == {"CC-0"}


@pytest.mark.needs_shared
def test_isic2017_training_counts_and_unknown_metadata(isic_reference: Path) -> None:
    """2017 metadata writes 'unknown' for 256 ages and 229 sexes: they must become missing, not labels."""
    result = harmonize_isic2017(isic_reference / GT_2017_TRAIN, isic_reference / META_2017_TRAIN)
    assert_unified_shape(result)
    frame = result.frame
    assert frame["diagnosis"].value_counts().to_dict() == {
        "nevus": 1372,
        "melanoma": 374,
        "seborrheic keratosis": 254,
    }
    assert frame["benign_malignant"].value_counts().to_dict() == {"benign": 1626, "malignant": 374}
    assert int(frame["age_approx"].isna().sum()) == 256
    assert int((frame["sex"] == "").sum()) == 229
    assert set(frame["sex"]) == {"male", "female", ""}
    assert set(frame["copyright_license"]) == {"CC-0"}


@pytest.mark.needs_shared
def test_isic2017_validation_counts(isic_reference: Path) -> None:
    result = harmonize_isic2017(isic_reference / GT_2017_VAL)
    counts = result.frame["diagnosis"].value_counts().to_dict()
    assert counts == {"melanoma": 30, "seborrheic keratosis": 42, "nevus": 78}
    assert result.frame["age_approx"].isna().all()


@pytest.mark.needs_shared
def test_ham10000_as_2018(isic_reference: Path) -> None:
    """HAM10000: 10,015 images of 7,470 lesions; dx counts; dx_type and sites mapped (docs/ISIC_SOURCES.md 1.2)."""
    result = harmonize_isic2018(ham_ground_truth_csv(isic_reference / HAM), isic_reference / HAM)
    assert_unified_shape(result)
    frame = result.frame
    assert len(frame) == 10015
    assert frame["lesion_id"].nunique() == 7470
    assert frame["diagnosis"].value_counts().to_dict() == {
        "nevus": 6705,
        "melanoma": 1113,
        "benign keratosis": 1099,
        "basal cell carcinoma": 514,
        vocab.AKIEC: 327,
        "vascular lesion": 142,
        "dermatofibroma": 115,
    }
    assert frame["diagnosis_confirm_type"].value_counts().to_dict() == {
        "histopathology": 5340,
        "serial imaging showing no change": 3704,
        "single image expert consensus": 902,
        "confocal microscopy with consensus dermoscopy": 69,
    }
    assert frame.loc[frame["diagnosis"] == vocab.AKIEC, "benign_malignant"].eq("indeterminate").all()
    assert set(frame["anatom_site_general"]) <= set(vocab.UNIFIED_SITES) | {""}
    assert int((frame["sex"] == "").sum()) == 57, "HAM writes sex 'unknown' 57 times"
    assert frame["age_approx"].dropna().isin(range(0, 90, 5)).all(), "HAM ages 80.0 -> 80"
    assert set(frame["copyright_license"]) == {"CC-BY-NC"}


@pytest.mark.needs_shared
def test_ham10000_8_column_dataverse_file(isic_reference: Path) -> None:
    """The Dataverse copy adds a ``dataset`` column; everything else must equal the 7-column result."""
    ground_truth = ham_ground_truth_csv(isic_reference / HAM)
    seven = harmonize_isic2018(ground_truth, isic_reference / HAM).frame
    eight = harmonize_isic2018(ground_truth, isic_reference / HAM_8COL).frame
    assert list(eight.columns) == [*BASE_COLUMNS, "dataset"]
    pd.testing.assert_frame_equal(eight[list(BASE_COLUMNS)], seven)
    assert eight["dataset"].value_counts().to_dict() == {
        "vidir_molemax": 3954,
        "vidir_modern": 3363,
        "rosendahl": 2259,
        "vienna_dias": 439,
    }


@pytest.mark.needs_shared
def test_isic2019_counts(isic2019: Harmonized) -> None:
    """25,331 rows, one class each; 2,074 _downsampled names stripped; published missing counts."""
    assert_unified_shape(isic2019)
    frame = isic2019.frame
    assert len(frame) == 25331
    assert frame["diagnosis"].value_counts().to_dict() == {
        "nevus": 12875,
        "melanoma": 4522,
        "basal cell carcinoma": 3323,
        "benign keratosis": 2624,
        "actinic keratosis": 867,
        "squamous cell carcinoma": 628,
        "vascular lesion": 253,
        "dermatofibroma": 239,
    }
    assert int(frame["original_name"].str.endswith("_downsampled").sum()) == 2074
    assert not frame["isic_id"].str.contains("downsampled").any()
    assert "2,074 ids had the _downsampled suffix stripped" in isic2019.notes
    assert int(frame["age_approx"].isna().sum()) == 437
    assert int((frame["anatom_site_general"] == "").sum()) == 2631
    assert int((frame["sex"] == "").sum()) == 384
    assert int((frame["lesion_id"] == "").sum()) == 2084
    assert frame.loc[frame["diagnosis"] == "actinic keratosis", "benign_malignant"].eq("indeterminate").all()
    assert (
        frame.loc[frame["diagnosis"] == "squamous cell carcinoma", "benign_malignant"].eq("malignant").all()
    )


@pytest.mark.needs_shared
def test_isic2020_v2_counts(isic2020_v2: Harmonized) -> None:
    """2020: 584 malignant of 33,126; 'unknown' diagnosis is a label (27,124), not a missing value."""
    assert_unified_shape(isic2020_v2)
    frame = isic2020_v2.frame
    assert len(frame) == 33126
    assert int((frame["benign_malignant"] == "malignant").sum()) == 584
    assert frame["patient_id"].nunique() == 2056
    assert frame["lesion_id"].nunique() == 32701
    assert int((frame["diagnosis"] == "unknown").sum()) == 27124
    assert int((frame["diagnosis"] == "").sum()) == 0
    assert int((frame["sex"] == "").sum()) == 65
    assert int(frame["age_approx"].isna().sum()) == 68
    assert int((frame["anatom_site_general"] == "").sum()) == 527
    assert len(isic2020_v2.duplicate_pairs) == 425
    assert all(a.startswith("ISIC_") and b.startswith("ISIC_") for a, b in isic2020_v2.duplicate_pairs)


@pytest.mark.needs_shared
def test_isic2020_v1_equals_v2_except_lesion_id(isic2020_v1: Harmonized, isic2020_v2: Harmonized) -> None:
    assert (isic2020_v1.frame["lesion_id"] == "").all()
    pd.testing.assert_frame_equal(
        isic2020_v1.frame.drop(columns="lesion_id"), isic2020_v2.frame.drop(columns="lesion_id")
    )


@pytest.mark.needs_shared
def test_kaggle_train_csv_equals_v1(isic_reference: Path, isic2020_v1: Harmonized) -> None:
    """Kaggle writes ages as 45.0 and uses LF; harmonized it must be the v1 frame value for value."""
    kaggle = harmonize_isic2020(isic_reference / KAGGLE_TRAIN)
    pd.testing.assert_frame_equal(kaggle.frame, isic2020_v1.frame)


@pytest.mark.needs_shared
def test_dispatch_by_catalog_format(isic_reference: Path, isic2019: Harmonized) -> None:
    """``harmonize`` routes on the catalog format; non-metadata roles such as ``images`` are ignored."""
    result = harmonize(
        "isic2019",
        {
            "ground_truth": isic_reference / GT_2019,
            "metadata": isic_reference / META_2019,
            "images": isic_reference / "not-read.zip",
        },
    )
    pd.testing.assert_frame_equal(result.frame, isic2019.frame)


# ---------------------------------------------------------------------------------------------
# Encodings and containers (inline files)
# ---------------------------------------------------------------------------------------------


def test_crlf_bom_and_missing_final_newline(tmp_path: Path) -> None:
    """Third-party copies differ in line endings and final newline, and a BOM is tolerated as a
    precaution (docs/ISIC_SOURCES.md 4.2); all must read."""
    text = "\ufeffimage_id,melanoma,seborrheic_keratosis\r\nISIC_0000000,1.0,0.0\r\nISIC_0000001,0.0,0.0"
    result = harmonize_isic2017(write(tmp_path, "gt.csv", text.encode("utf-8")))
    assert result.frame["isic_id"].tolist() == ["ISIC_0000000", "ISIC_0000001"]
    assert result.frame["diagnosis"].tolist() == ["melanoma", "nevus"]


def test_blank_line_does_not_shift_reported_line(tmp_path: Path) -> None:
    """Line numbers are file lines: a blank line before the bad row must be counted."""
    path = write(tmp_path, "gt.csv", "ISIC_0000000,benign\n\nISIC_0000001,maybe\n")
    with pytest.raises(HarmonizeError, match="line 3"):
        harmonize_isic2016(path)


def test_2018_ground_truth_zip_and_bytes(tmp_path: Path) -> None:
    """The official 2018 GT is a zip holding one CSV (docs/ISIC_SOURCES.md 1.2); path, bytes and stream work."""
    csv_text = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
    zip_path = tmp_path / "ISIC2018_Task3_Training_GroundTruth.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr(
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv", csv_text
        )
        archive.writestr("ISIC2018_Task3_Training_GroundTruth/LICENSE.txt", "CC-BY-NC")
    from_zip = harmonize_isic2018(zip_path).frame
    from_bytes = harmonize_isic2018(csv_text.encode()).frame
    from_stream = harmonize_isic2018(io.BytesIO(zip_path.read_bytes())).frame
    assert from_zip["diagnosis"].tolist() == ["nevus"]
    pd.testing.assert_frame_equal(from_zip, from_bytes)
    pd.testing.assert_frame_equal(from_zip, from_stream)


def test_zip_with_two_csvs_is_an_error(tmp_path: Path) -> None:
    zip_path = tmp_path / "gt.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("a.csv", "image,MEL\n")
        archive.writestr("b.csv", "image,MEL\n")
    with pytest.raises(HarmonizeError, match=r"gt\.zip.*2 CSV files.*expected exactly one"):
        harmonize_isic2018(zip_path)


def test_2020_unknown_diagnosis_kept_but_unknown_sex_missing(tmp_path: Path) -> None:
    """'unknown' is a 2020 diagnosis label (docs/ISIC_SOURCES.md 1.2) but a missing value anywhere else."""
    text = (
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_2637011,IP_7279968,unknown,45.0,torso,unknown,benign,0\n"
    )
    frame = harmonize_isic2020(write(tmp_path, "train.csv", text)).frame
    assert frame.loc[0, "diagnosis"] == "unknown"
    assert frame.loc[0, "sex"] == ""
    assert frame.loc[0, "age_approx"] == 45
    assert frame.loc[0, "anatom_site_general"] == "torso"


def test_2018_lesion_groupings_with_any_image_column(tmp_path: Path) -> None:
    """The groupings header is unverified (docs/ISIC_SOURCES.md 1.2): image + lesion_id columns are enough."""
    gt = write(tmp_path, "gt.csv", "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0,1,0,0,0,0,0\n")
    groups = write(
        tmp_path, "groups.csv", "image_id,lesion_id,diagnosis_confirm_type\nISIC_0024306,HAM_0000550,histo\n"
    )
    frame = harmonize_isic2018(gt, lesion_groupings=groups).frame
    assert frame.loc[0, "lesion_id"] == "HAM_0000550"
    assert frame.loc[0, "diagnosis_confirm_type"] == "histopathology"


# ---------------------------------------------------------------------------------------------
# Errors: each names the file, the line and the value
# ---------------------------------------------------------------------------------------------


def test_2019_row_with_two_classes(tmp_path: Path) -> None:
    gt = write(
        tmp_path,
        "ISIC_2019_Training_GroundTruth.csv",
        "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\r\n"
        "ISIC_0000000,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\r\n"
        "ISIC_0000001,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\r\n",
    )
    meta = write(tmp_path, "meta.csv", "image,age_approx,anatom_site_general,lesion_id,sex\n")
    with pytest.raises(HarmonizeError) as caught:
        harmonize_isic2019(gt, meta)
    message = str(caught.value)
    assert "ISIC_2019_Training_GroundTruth.csv" in message
    assert "line 3" in message
    assert "MEL=1.0, NV=1.0" in message
    assert caught.value.line == 3


def test_2016_label_maybe(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ISBI2016_ISIC_Part3_Training_GroundTruth.csv", "ISIC_0000000,benign\nISIC_0000001,maybe\n"
    )
    with pytest.raises(
        HarmonizeError, match=r"ISBI2016_ISIC_Part3_Training_GroundTruth\.csv: line 2: .*'maybe'"
    ):
        harmonize_isic2016(path)


def test_2020_target_disagrees_with_benign_malignant(tmp_path: Path) -> None:
    text = (
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0\n"
        "ISIC_0000002,IP_0000001,male,45,torso,melanoma,benign,1\n"
    )
    with pytest.raises(HarmonizeError) as caught:
        harmonize_isic2020(write(tmp_path, "gt2020.csv", text))
    assert "gt2020.csv: line 3" in str(caught.value)
    assert "target=1, benign_malignant=benign" in str(caught.value)


def test_duplicate_id_in_one_file_names_both_lines(tmp_path: Path) -> None:
    """ISIC_X and ISIC_X_downsampled are the same image: two rows for it in one file is an error."""
    path = write(
        tmp_path,
        "gt.csv",
        "image_id,melanoma,seborrheic_keratosis\n"
        "ISIC_0000007,0.0,0.0\nISIC_0000008,0.0,0.0\nISIC_0000007_downsampled,1.0,0.0\n",
    )
    with pytest.raises(HarmonizeError) as caught:
        harmonize_isic2017(path)
    message = str(caught.value)
    assert "gt.csv: lines 2 and 4" in message
    assert "ISIC_0000007_downsampled" in message


def test_malformed_id(tmp_path: Path) -> None:
    path = write(tmp_path, "gt.csv", "ISIC_0000000,benign\nISIC_12,malignant\n")
    with pytest.raises(HarmonizeError, match=r"gt\.csv: line 2: .*'ISIC_12', expected ISIC_ \+ 7 digits"):
        harmonize_isic2016(path)


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "gt.csv", "image_id,melanoma\nISIC_0000000,1.0\n")
    with pytest.raises(HarmonizeError) as caught:
        harmonize_isic2017(path)
    assert "gt.csv: line 1: missing required column 'seborrheic_keratosis'" in str(caught.value)
    assert caught.value.column == "seborrheic_keratosis"


def test_2017_both_labels_set(tmp_path: Path) -> None:
    path = write(tmp_path, "gt.csv", "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0,1.0\n")
    with pytest.raises(HarmonizeError, match=r"gt\.csv: line 2: ISIC_0000000: .*both 1\.0"):
        harmonize_isic2017(path)


def test_one_hot_value_not_binary(tmp_path: Path) -> None:
    gt = write(tmp_path, "gt.csv", "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0.0,0.7,0,0,0,0,0\n")
    with pytest.raises(
        HarmonizeError, match=r"gt\.csv: line 2: column 'NV': found '0\.7', expected 0\.0 or 1\.0"
    ):
        harmonize_isic2018(gt)


def test_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "gt.csv", "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0\n")
    with pytest.raises(HarmonizeError, match=r"gt\.csv: line 2: found 2 fields .* expected 3"):
        harmonize_isic2017(path)


def test_bad_age(tmp_path: Path) -> None:
    gt = write(tmp_path, "gt.csv", "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0,0.0\n")
    meta = write(tmp_path, "meta.csv", "image_id,age_approximate,sex\nISIC_0000000,forty,male\n")
    with pytest.raises(HarmonizeError, match=r"meta\.csv: line 2: column 'age_approximate': found 'forty'"):
        harmonize_isic2017(gt, meta)


def test_2017_metadata_id_not_in_ground_truth(tmp_path: Path) -> None:
    """A metadata row without a label would be dropped silently; it is an error instead."""
    gt = write(tmp_path, "gt.csv", "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0,0.0\n")
    meta = write(
        tmp_path, "meta.csv", "image_id,age_approximate,sex\nISIC_0000000,40,male\nISIC_0000009,40,male\n"
    )
    with pytest.raises(HarmonizeError, match=r"ISIC_0000009 \(line 3\)"):
        harmonize_isic2017(gt, meta)


def test_2019_ground_truth_and_metadata_ids_must_match(tmp_path: Path) -> None:
    gt = write(
        tmp_path,
        "gt.csv",
        "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
        "ISIC_0000000,0,1,0,0,0,0,0,0,0\nISIC_0000001,0,1,0,0,0,0,0,0,0\n",
    )
    meta = write(
        tmp_path,
        "meta.csv",
        "image,age_approx,anatom_site_general,lesion_id,sex\nISIC_0000000,55,,,female\nISIC_0000005,30,,,male\n",
    )
    with pytest.raises(HarmonizeError) as caught:
        harmonize_isic2019(gt, meta)
    message = str(caught.value)
    assert "ISIC_0000005 (line 3)" in message
    assert "ISIC_0000001 (line 3)" in message


def test_2019_site_outside_vocabulary(tmp_path: Path) -> None:
    gt = write(
        tmp_path, "gt.csv", "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\nISIC_0000000,0,1,0,0,0,0,0,0,0\n"
    )
    meta = write(
        tmp_path,
        "meta.csv",
        "image,age_approx,anatom_site_general,lesion_id,sex\nISIC_0000000,55,torso,,female\n",
    )
    with pytest.raises(
        HarmonizeError, match=r"meta\.csv: line 2: column 'anatom_site_general': found 'torso'"
    ):
        harmonize_isic2019(gt, meta)


def test_2018_ham_dx_must_agree_with_ground_truth(tmp_path: Path) -> None:
    gt = write(tmp_path, "gt.csv", "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0027419,1.0,0.0,0,0,0,0,0\n")
    ham = write(
        tmp_path,
        "HAM10000_metadata.csv",
        "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n",
    )
    with pytest.raises(HarmonizeError, match=r"HAM10000_metadata\.csv: line 2: column 'dx': found 'bkl'"):
        harmonize_isic2018(gt, ham)


def test_2018_lesion_groupings_unknown_header(tmp_path: Path) -> None:
    gt = write(tmp_path, "gt.csv", "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0,1,0,0,0,0,0\n")
    groups = write(tmp_path, "groups.csv", "picture,lesion\nISIC_0024306,HAM_0000550\n")
    with pytest.raises(HarmonizeError, match=r"groups\.csv: line 1: found header \['picture', 'lesion'\]"):
        harmonize_isic2018(gt, lesion_groupings=groups)


def test_2020_duplicate_pair_with_unknown_id(tmp_path: Path) -> None:
    gt = write(
        tmp_path,
        "gt.csv",
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0\n",
    )
    dup = write(tmp_path, "dup.csv", "image_name_1,image_name_2\nISIC_0000001,ISIC_0000002\n")
    with pytest.raises(
        HarmonizeError, match=r"dup\.csv: line 2: column 'image_name_2': found 'ISIC_0000002'"
    ):
        harmonize_isic2020(gt, dup)


# ---------------------------------------------------------------------------------------------
# The ISIC Archive export, current and legacy schema
# ---------------------------------------------------------------------------------------------

ARCHIVE_CURRENT = (
    "isic_id,attribution,copyright_license,patient_id,age_approx,sex,lesion_id,anatom_site_1,anatom_site_2,"
    "anatom_site_3,diagnosis_confirm_type,diagnosis_1,diagnosis_2,diagnosis_3,diagnosis_4,image_type\n"
    "ISIC_0000001,Anonymous,CC-0,IP_0000001,55,female,IL_0000001,Trunk,Posterior trunk,Upper back,"
    "histopathology,Malignant,Malignant melanocytic proliferations (Melanoma),Melanoma Invasive,"
    '"Melanoma Invasive, Nodular",dermoscopic\n'
    '"ISIC_0000002","Hospital Clinic, Barcelona",CC-BY-NC,,,male,,Trunk,,,,Benign,'
    "Benign melanocytic proliferations,Lentigo simplex,,dermoscopic\n"
    "ISIC_0000003,Anonymous,CC-BY,,85,,,Upper extremity,Hand,Palm of hand,,Indeterminate,"
    'Indeterminate epidermal proliferations,Solar or actinic keratosis,"Actinic keratosis, Bowenoid",'
    "clinical: close-up\n"
    "ISIC_0000004,Anonymous,CC-BY,,,,,Trunk:Anterior trunk:Anterior chest,,,,Benign,,,,dermoscopic\n"
)


def test_archive_current_schema(tmp_path: Path) -> None:
    """benign_malignant from diagnosis_1; deepest mapped diagnosis node; deepest placeable site node."""
    result = harmonize_isic_archive(write(tmp_path, "metadata.csv", ARCHIVE_CURRENT))
    assert_unified_shape(result)
    frame = result.frame.set_index("isic_id")
    assert frame["benign_malignant"].tolist() == ["malignant", "benign", "indeterminate", "benign"]
    assert frame["diagnosis"].tolist() == ["melanoma", "lentigo simplex", "actinic keratosis", "benign"]
    assert frame["anatom_site_general"].tolist() == [
        "posterior torso",
        "torso",
        "palms/soles",
        "anterior torso",
    ]
    assert frame.loc["ISIC_0000002", "attribution"] == "Hospital Clinic, Barcelona"
    assert frame["copyright_license"].tolist() == ["CC-0", "CC-BY-NC", "CC-BY", "CC-BY"]
    assert frame.loc["ISIC_0000003", "age_approx"] == 85
    assert "diagnosis_4" in frame.columns and "image_type" in frame.columns


def test_archive_legacy_schema_indeterminate_leans(tmp_path: Path) -> None:
    """Legacy indeterminate/benign|malignant -> indeterminate; the published lean stays visible."""
    text = (
        "isic_id,attribution,copyright_license,age_approx,anatom_site_general,benign_malignant,diagnosis,sex\n"
        "ISIC_0000001,Anonymous,CC-0,55,anterior torso,indeterminate/malignant,melanoma,female\n"
        "ISIC_0000002,Anonymous,CC-0,,,indeterminate/benign,nevus,unknown\n"
        "ISIC_0000003,Anonymous,CC-0,40,lateral torso,benign,lentigo NOS,male\n"
    )
    frame = harmonize_isic_archive(write(tmp_path, "metadata.csv", text)).frame
    assert frame["benign_malignant"].tolist() == ["indeterminate", "indeterminate", "benign"]
    assert frame["legacy_benign_malignant"].tolist() == [
        "indeterminate/malignant",
        "indeterminate/benign",
        "benign",
    ]
    assert frame["diagnosis"].tolist() == ["melanoma", "nevus", "lentigo NOS"]
    assert frame["sex"].tolist() == ["female", "", "male"]


def test_archive_bad_licence_and_bad_diagnosis_1(tmp_path: Path) -> None:
    bad_licence = "isic_id,attribution,copyright_license\nISIC_0000001,Anonymous,CC-BY-SA\n"
    with pytest.raises(HarmonizeError, match=r"line 2: column 'copyright_license': found 'CC-BY-SA'"):
        harmonize_isic_archive(write(tmp_path, "a.csv", bad_licence))
    bad_level = (
        "isic_id,attribution,copyright_license,diagnosis_1\nISIC_0000001,Anonymous,CC-0,Probably fine\n"
    )
    with pytest.raises(HarmonizeError, match=r"b\.csv: line 2: column 'diagnosis_1': found 'Probably fine'"):
        harmonize_isic_archive(write(tmp_path, "b.csv", bad_level))


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def test_dispatch_errors(tmp_path: Path) -> None:
    ham = write(tmp_path, "HAM10000_metadata.csv", "lesion_id,image_id,dx,dx_type,age,sex,localization\n")
    with pytest.raises(HarmonizeError, match="unknown ISIC format 'isic2021'"):
        harmonize("isic2021", {})
    with pytest.raises(HarmonizeError, match=r"missing required 'ground_truth'.*ground truth is required"):
        harmonize("isic2018", {"metadata": ham})
    with pytest.raises(HarmonizeError, match="does not use a 'duplicates' file"):
        harmonize("isic2016", {"ground_truth": ham, "duplicates": ham})


def test_dispatch_archive_metadata_stream() -> None:
    """The caller reads metadata.csv out of the archive zip and passes the bytes as ``metadata``."""
    result = harmonize("isic_archive_zip", {"metadata": io.BytesIO(ARCHIVE_CURRENT.encode())})
    assert result.frame["isic_id"].tolist() == [
        "ISIC_0000001",
        "ISIC_0000002",
        "ISIC_0000003",
        "ISIC_0000004",
    ]


# ---------------------------------------------------------------------------------------------
# Vocabulary decisions
# ---------------------------------------------------------------------------------------------


def test_vocab_decisions() -> None:
    """AK is Indeterminate in the ISIC hierarchy; AKIEC mixes AK and Bowen's, so it stays indeterminate."""
    assert vocab.DIAGNOSIS_BENIGN_MALIGNANT["actinic keratosis"] == "indeterminate"
    assert vocab.DIAGNOSIS_BENIGN_MALIGNANT[vocab.AKIEC] == "indeterminate"
    for malignant in ("melanoma", "basal cell carcinoma", "squamous cell carcinoma"):
        assert vocab.DIAGNOSIS_BENIGN_MALIGNANT[malignant] == "malignant"
    assert vocab.LEGACY_BENIGN_MALIGNANT["indeterminate/malignant"] == "indeterminate"
    assert len(vocab.HAM10000_LOCALIZATION) == 15
    assert set(vocab.HAM10000_LOCALIZATION.values()) <= set(vocab.UNIFIED_SITES) | {""}
    assert vocab.RELEASE_LICENSES == {
        "isic2016": "CC-0",
        "isic2017": "CC-0",
        "isic2018": "CC-BY-NC",
        "isic2019": "CC-BY-NC",
        "isic2020": "CC-BY-NC",
    }


def test_vocab_granularity_rules() -> None:
    assert vocab.compatible("diagnosis", "seborrheic keratosis", "benign keratosis")
    assert vocab.refines("diagnosis", vocab.AKIEC, "squamous cell carcinoma")
    assert vocab.refines("diagnosis", "unknown", "melanoma")
    assert not vocab.refines("diagnosis", "melanoma", "unknown")
    assert vocab.compatible("anatom_site_general", "torso", "anterior torso")
    assert not vocab.compatible("anatom_site_general", "anterior torso", "posterior torso")
    assert not vocab.compatible("benign_malignant", "benign", "malignant")
    assert not vocab.compatible("diagnosis", "nevus", "melanoma")


def test_vocab_tables_render_for_readme() -> None:
    rows = vocab.mapping_rows()
    assert ("anatom_site_general", "isic2018 (HAM10000 localization)", "back", "posterior torso") in {
        row[:4] for row in rows
    }
    assert all(row.reference for row in rows), "every mapping cites its source"
    markdown = vocab.render_markdown()
    assert "`actinic keratosis / intraepithelial carcinoma`" in markdown
    assert markdown.count("\n") > len(rows)


def test_vocab_markdown_is_stable_across_hash_seeds() -> None:
    """docs/HARMONIZATION.md embeds render_markdown(); set iteration order must not leak into it (it once did)."""
    repo = Path(__file__).resolve().parents[1]
    script = "from isic_assets.core.merge.vocab import render_markdown; print(render_markdown())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=repo,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(repo)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
