"""The demo mirror stands in for 60 GB of real ISIC data: it must be deterministic, in the real
formats, and really contain every quirk its MIRROR.json promises, or the pipeline tests built on it
prove nothing.

The mirror is generated once per session (a few seconds); every check reads the files back from disk
rather than trusting the generator's own bookkeeping.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isic_assets.core.ids import isic_id_from_member, normalize_isic_id
from isic_assets.demo import evaluation_sets as eval_demo
from isic_assets.demo import generate as gen
from isic_assets.demo import generate_bench_mirror, generate_demo_mirror, synth_dermoscopy
from isic_assets.demo.__main__ import main as cli_main
from isic_assets.demo.synthetic import picture_rng

CATALOG = ("isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "archive")
ZIPS = {
    "isic2016": [gen.PATH_2016_ZIP],
    "isic2017": [gen.PATH_2017_ZIP],
    "isic2018": [gen.PATH_2018_ZIP, gen.PATH_2018_GT_ZIP],
    "isic2019": [gen.PATH_2019_ZIP],
    "isic2020": [gen.PATH_2020_ZIP],
    "archive": [gen.PATH_ARCHIVE_ZIP],
}
META_2017 = "ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv"
GT_2018 = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"


@pytest.fixture(scope="session")
def demo(generated_demo_mirror: Path) -> tuple[Path, dict]:
    """The session's mirror (generated from scratch once, conftest.py); read here, never written."""
    return generated_demo_mirror, generate_demo_mirror(generated_demo_mirror, seed=0)


@pytest.fixture(scope="session")
def members(demo: tuple[Path, dict]) -> dict[str, dict[str, dict]]:
    """Per source, per image member name: id, sha256, whether Pillow decodes it, and its size."""
    dest, _ = demo
    found: dict[str, dict[str, dict]] = {}
    for source, paths in ZIPS.items():
        found[source] = {}
        for rel in paths:
            with zipfile.ZipFile(dest / rel) as archive:
                for name in archive.namelist():
                    isic_id = isic_id_from_member(name)
                    if isic_id:
                        data = archive.read(name)
                        found[source][name] = {"id": isic_id, "sha": hashlib.sha256(data).hexdigest(),
                                               "data": data, **_decode(data)}  # fmt: skip
    return found


def _decode(data: bytes) -> dict:
    """Full decode (at 1/8 scale for JPEG, the DCT does the work); a truncated file raises on load."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            orientation = image.getexif().get(0x0112)
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
        return {"ok": True, "size": size, "orientation": orientation}
    except OSError:
        return {"ok": False, "size": None, "orientation": None}


def _csv_rows(data: bytes, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return (rows[0], rows[1:]) if header else (None, rows)


def _read(dest: Path, rel: str, member: str | None = None) -> bytes:
    if member is None:
        return (dest / rel).read_bytes()
    with zipfile.ZipFile(dest / rel) as archive:
        return archive.read(member)


# ---- determinism and the fast path --------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(demo, tmp_path):
    """Downstream tests hard-code the expected counts; they hold only if generation is reproducible."""
    _, first = demo
    second = generate_demo_mirror(tmp_path / "again", seed=0)
    assert second["files"] == first["files"]
    assert second["expected"] == first["expected"]


def test_seed_changes_bytes_but_never_the_layout():
    """--seed must give fresh pixels while ids, labels and quirks (the expected counts) stay put."""
    plan = gen.build_demo_plan()
    assert [p.listings for p in plan] == [p.listings for p in gen.build_demo_plan()]
    pictures = [e.picture for p in plan for e in p.listings if e.picture is not None][::60]
    for picture in pictures:
        assert gen.render_picture(picture, 0) != gen.render_picture(picture, 1), picture


def test_different_seed_gives_different_mirror_hashes(tmp_path):
    """Compared on the (fast) bench mirror: same seed same sha256s, another seed other sha256s."""
    a = generate_bench_mirror(tmp_path / "a", 40, seed=0)
    b = generate_bench_mirror(tmp_path / "b", 40, seed=0)
    c = generate_bench_mirror(tmp_path / "c", 40, seed=7)
    zip_sha = [d["files"][gen.PATH_2019_ZIP]["sha256"] for d in (a, b, c)]
    assert zip_sha[0] == zip_sha[1] != zip_sha[2]


def test_fast_path_rewrites_nothing(demo):
    """Every asset run calls the generator; a complete mirror must cost a few stat calls, not a rebuild."""
    dest, description = demo
    paths = [dest / rel for rel in description["files"]] + [dest / gen.MIRROR_FILE]
    before = {p: p.stat().st_mtime_ns for p in paths}
    again = generate_demo_mirror(dest, seed=0)
    assert again == description
    assert {p: p.stat().st_mtime_ns for p in paths} == before


def test_damaged_file_or_other_seed_regenerates(tmp_path):
    """A truncated download in the mirror folder must not be served as if it were complete."""
    dest = tmp_path / "bench"
    description = generate_bench_mirror(dest, 30)
    target = dest / gen.PATH_2019_GT
    target.write_bytes(target.read_bytes()[:100])
    repaired = generate_bench_mirror(dest, 30)
    assert target.stat().st_size == description["files"][gen.PATH_2019_GT]["size"]
    assert repaired == description
    assert generate_bench_mirror(dest, 30, seed=3)["seed"] == 3


def test_mirror_json_hashes_match_files(demo):
    dest, description = demo
    assert set(description["files"]) == {rel for paths in ZIPS.values() for rel in paths} | {
        gen.PATH_2016_GT, gen.PATH_2017_GT, gen.PATH_2018_GT_ZIP, gen.PATH_2018_HAM, gen.PATH_2019_GT,
        gen.PATH_2019_META, gen.PATH_2020_GT, gen.PATH_2020_DUPLICATES,
        "isic2024/train-image.hdf5", "isic2024/train-metadata.csv",
        eval_demo.PATH_2016_TEST_ZIP, eval_demo.PATH_2016_TEST_GT,
        eval_demo.PATH_2017_VAL_ZIP, eval_demo.PATH_2017_VAL_GT,
    }  # fmt: skip
    for rel, info in description["files"].items():
        data = (dest / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (info["size"], info["sha256"]), rel
    assert not list(dest.rglob(".tmp-*")), "atomic writes must leave no temporaries"


# ---- formats ------------------------------------------------------------------------------------


def test_zips_are_valid_and_member_counts_match_expected(demo, members):
    dest, description = demo
    for source, paths in ZIPS.items():
        others = 0
        for rel in paths:
            with zipfile.ZipFile(dest / rel) as archive:
                assert archive.testzip() is None
                names = archive.namelist()
                assert len(names) == len(set(names))
                assert {i.date_time for i in archive.infolist()} == {gen.ZIP_DATE_TIME}
                others += sum(1 for n in names if not isic_id_from_member(n))
        facts = description["expected"]["sources"][source]
        assert (len(members[source]), others) == (facts["image_members"], facts["non_image_members"]), source


def test_zip_layouts_follow_the_real_ones(demo):
    """One top folder named after the zip (2020: train/), archive exports flat plus licences."""
    dest, _ = demo
    tops = {
        gen.PATH_2016_ZIP: "ISBI2016_ISIC_Part3_Training_Data/",
        gen.PATH_2017_ZIP: "ISIC-2017_Training_Data/",
        gen.PATH_2018_ZIP: "ISIC2018_Task3_Training_Input/",
        gen.PATH_2018_GT_ZIP: "ISIC2018_Task3_Training_GroundTruth/",
        gen.PATH_2019_ZIP: "ISIC_2019_Training_Input/",
        gen.PATH_2020_ZIP: "train/",
    }
    for rel, top in tops.items():
        assert all(n.startswith(top) for n in zipfile.ZipFile(dest / rel).namelist()), rel
    names = set(zipfile.ZipFile(dest / gen.PATH_2017_ZIP).namelist())
    jpgs = [n for n in names if n.endswith(".jpg")]
    assert all(n[:-4] + "_superpixels.png" in names for n in jpgs) and META_2017 in names
    for rel in (gen.PATH_2018_ZIP, gen.PATH_2019_ZIP):
        assert {n.rsplit("/", 1)[1] for n in zipfile.ZipFile(dest / rel).namelist()} >= {
            "ATTRIBUTION.txt",
            "LICENSE.txt",
        }
    archive = set(zipfile.ZipFile(dest / gen.PATH_ARCHIVE_ZIP).namelist())
    assert {
        "metadata.csv",
        "attribution.txt",
        "licenses/CC-0.txt",
        "licenses/CC-BY.txt",
        "licenses/CC-BY-NC.txt",
    } <= archive
    assert all("/" not in n for n in archive if isic_id_from_member(n))


# (file, member inside a zip or None, header, line ending): the constants are checked against the
# real files in test_headers_and_line_endings_match_the_real_files.
CSV_FILES = [
    (gen.PATH_2017_GT, None, gen.HEADER_2017_GT, b"\n"),
    (gen.PATH_2017_ZIP, META_2017, gen.HEADER_2017_META, b"\n"),
    (gen.PATH_2018_GT_ZIP, GT_2018, gen.HEADER_2018_GT, b"\r\n"),
    (gen.PATH_2018_HAM, None, gen.HEADER_HAM, b"\n"),
    (gen.PATH_2019_GT, None, gen.HEADER_2019_GT, b"\r\n"),
    (gen.PATH_2019_META, None, gen.HEADER_2019_META, b"\r\n"),
    (gen.PATH_2020_GT, None, gen.HEADER_2020_GT, b"\r\n"),
    (gen.PATH_2020_DUPLICATES, None, gen.HEADER_2020_DUPLICATES, b"\r\n"),
]
REAL_FILE = {
    gen.PATH_2017_GT: "ISIC-2017_Training_Part3_GroundTruth.csv",
    gen.PATH_2017_ZIP: "ISIC-2017_Training_Data_metadata.csv",
    gen.PATH_2018_HAM: "HAM10000_metadata.csv",
    gen.PATH_2019_GT: "ISIC_2019_Training_GroundTruth.csv",
    gen.PATH_2019_META: "ISIC_2019_Training_Metadata.csv",
    gen.PATH_2020_GT: "ISIC_2020_Training_GroundTruth_v2.csv",
    gen.PATH_2020_DUPLICATES: "ISIC_2020_Training_Duplicates.csv",
}


@pytest.mark.parametrize(("rel", "member", "header", "newline"), CSV_FILES, ids=lambda v: str(v)[:40])
def test_csv_headers_and_line_endings(demo, rel, member, header, newline):
    dest, _ = demo
    data = _read(dest, rel, member)
    first_line = data.split(b"\n", 1)[0] + b"\n"
    assert first_line == ",".join(header).encode() + newline
    assert data.endswith(newline)
    assert data.count(b"\r\n") == (data.count(b"\n") if newline == b"\r\n" else 0)
    parsed_header, rows = _csv_rows(data)
    assert rows and all(len(row) == len(parsed_header) for row in rows)


@pytest.mark.needs_shared
def test_headers_and_line_endings_match_the_real_files(demo, isic_reference):
    """The saved real CSVs are the authority for headers and line endings (docs/ISIC_SOURCES.md 1.2)."""
    dest, _ = demo
    for rel, member, _, _ in CSV_FILES:
        if rel not in REAL_FILE:
            continue  # the real 2018 GT CSV was never seen
        real = (isic_reference / REAL_FILE[rel]).read_bytes()
        ours = _read(dest, rel, member)
        assert ours.split(b"\n", 1)[0] == real.split(b"\n", 1)[0], rel
    real_2016 = (isic_reference / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").read_bytes()
    ours_2016 = (dest / gen.PATH_2016_GT).read_bytes()
    row = re.compile(rb"^ISIC_[0-9]{7},(benign|malignant)\r$")
    for data in (real_2016, ours_2016):
        lines = data.split(b"\n")
        assert lines[-1] == b"" and all(row.match(line) for line in lines[:-1])


def test_2016_ground_truth_has_no_header(demo):
    dest, _ = demo
    _, rows = _csv_rows((dest / gen.PATH_2016_GT).read_bytes(), header=False)
    assert all(re.fullmatch(r"ISIC_\d{7}", r[0]) and r[1] in ("benign", "malignant") for r in rows)


def test_one_hot_ground_truths_have_exactly_one_class(demo):
    dest, _ = demo
    for data in (_read(dest, gen.PATH_2018_GT_ZIP, GT_2018), _read(dest, gen.PATH_2019_GT)):
        header, rows = _csv_rows(data)
        for row in rows:
            assert sorted(row[1:]) == ["0.0"] * (len(header) - 2) + ["1.0"], row
    _, rows = _csv_rows(_read(dest, gen.PATH_2019_GT))
    assert {row[-1] for row in rows} == {"0.0"}, "UNK is all zero in the training set"


def test_archive_metadata_uses_the_current_schema(demo):
    """isic-cli's metadata.csv: 3 fixed columns then the sorted union of keys; no legacy fields."""
    dest, _ = demo
    data = _read(dest, gen.PATH_ARCHIVE_ZIP, "metadata.csv")
    header, rows = _csv_rows(data)
    assert header[:3] == ["isic_id", "attribution", "copyright_license"]
    assert header[3:] == sorted(header[3:])
    assert {"benign_malignant", "diagnosis", "anatom_site_general"}.isdisjoint(header)
    assert {"diagnosis_1", "anatom_site_1", "pixels_x", "pixels_y", "patient_id", "lesion_id"} <= set(header)
    table = [dict(zip(header, row, strict=True)) for row in rows]
    assert {r["diagnosis_1"] for r in table} == {"Benign", "Indeterminate", "Malignant", ""}
    assert {r["anatom_site_1"] for r in table} <= {"Head and neck", "Trunk", "Upper extremity", "Lower extremity",
                                                    "Anogenital region", ""}  # fmt: skip
    assert {r["copyright_license"] for r in table} == {"CC-0", "CC-BY", "CC-BY-NC"}
    assert "Hospital Clínic de Barcelona" in {r["attribution"] for r in table}
    assert data.endswith(b"\r\n"), "csv.DictWriter writes CRLF"
    attribution = _read(dest, gen.PATH_ARCHIVE_ZIP, "attribution.txt").decode("utf-8").split("\n\n")
    assert attribution[-1] == "Anonymous" and len(attribution) == len({r["attribution"] for r in table})


# ---- quirks -------------------------------------------------------------------------------------


def test_corrupt_members_fail_to_decode_and_everything_else_decodes(demo, members):
    _, description = demo
    expected = description["expected"]
    failing = {info["id"] for source in members.values() for info in source.values() if not info["ok"]}
    assert failing == set(expected["corrupt_ids"])
    truncated = expected["sources"]["isic2020"]["corrupt_ids"]
    garbage = expected["sources"]["isic2019"]["corrupt_ids"]
    assert len(truncated) == len(garbage) == 1
    data = members["isic2020"][f"train/{truncated[0]}.jpg"]["data"]
    assert data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(data)).size, "header intact, body cut"
    with pytest.raises(OSError):
        Image.open(io.BytesIO(members["isic2019"][f"ISIC_2019_Training_Input/{garbage[0]}.jpg"]["data"]))


def test_byte_identical_pairs_are_really_identical(demo, members):
    """One pair inside 2020, one 2020 photo republished in the archive under a new id."""
    _, description = demo
    pairs = description["expected"]["byte_identical_pairs"]
    assert sorted(tuple(p["sources"]) for p in pairs) == [("archive", "isic2020"), ("isic2020", "isic2020")]
    sha_by_id = defaultdict(set)
    for source in members.values():
        for info in source.values():
            sha_by_id[info["id"]].add(info["sha"])
    for pair in pairs:
        a, b = pair["ids"]
        assert sha_by_id[a] == sha_by_id[b] == {pair["sha256"]}


def test_duplicates_list_pairs_same_patient_same_target_mostly_reencoded(demo, members):
    dest, description = demo
    _, rows = _csv_rows(_read(dest, gen.PATH_2020_DUPLICATES))
    assert rows == description["expected"]["duplicate_pairs"] and len(rows) == 8
    header, gt = _csv_rows(_read(dest, gen.PATH_2020_GT))
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in gt}
    identical = 0
    for a, b in rows:
        assert by_id[a]["patient_id"] == by_id[b]["patient_id"] and by_id[a]["target"] == by_id[b]["target"]
        sha_a, sha_b = (members["isic2020"][f"train/{i}.jpg"]["sha"] for i in (a, b))
        identical += sha_a == sha_b
    assert identical == 1
    assert {by_id[a]["target"] for a, _ in rows} == {"0", "1"}, "a melanoma pair tests label keeping"


def test_older_ids_reappear_in_2019_some_downsampled(demo, members):
    """2019 re-published 2016/2017/HAM photos; some 2016 ones as smaller ``_downsampled`` files."""
    _, description = demo
    by_source = {s: {info["id"]: (name, info) for name, info in m.items()} for s, m in members.items()}
    ids_2019 = set(by_source["isic2019"])
    assert set(by_source["isic2017"]) <= ids_2019 and set(by_source["isic2018"]) <= ids_2019
    for isic_id, (_, info) in by_source["isic2018"].items():
        assert by_source["isic2019"][isic_id][1]["sha"] == info["sha"] and info["size"] == (600, 450)
    downsampled = description["expected"]["sources"]["isic2019"]["downsampled_ids"]
    from_2016 = [i for i in downsampled if i in by_source["isic2016"]]
    assert len(from_2016) >= 5 and len(downsampled) > len(from_2016), "MSK-only downsampled names too"
    for isic_id in downsampled:
        assert by_source["isic2019"][isic_id][0].endswith(f"{isic_id}_downsampled.jpg")
    for isic_id in from_2016:
        old, new = by_source["isic2016"][isic_id][1], by_source["isic2019"][isic_id][1]
        assert new["size"][0] < old["size"][0] and new["sha"] != old["sha"]


def test_exactly_one_label_conflict(demo):
    dest, description = demo
    conflict = description["expected"]["label_conflict_id"]
    assert description["expected"]["label_conflicts"] == [
        {"isic_id": conflict, "labels": {"isic2016": "benign", "isic2019": "malignant"}}
    ]
    assert [conflict, "benign"] in _csv_rows((dest / gen.PATH_2016_GT).read_bytes(), header=False)[1]
    assert _one_hot_row(dest, conflict)["MEL"] == "1.0"


def _one_hot_row(dest: Path, isic_id: str) -> dict:
    header, rows = _csv_rows(_read(dest, gen.PATH_2019_GT))
    return next(dict(zip(header, r, strict=True)) for r in rows if normalize_isic_id(r[0]) == isic_id)


def test_row_without_image_and_image_without_row(demo, members):
    dest, description = demo
    sources = description["expected"]["sources"]
    (missing,) = sources["isic2019"]["ids_missing_image"]
    assert _one_hot_row(dest, missing) and missing not in {i["id"] for i in members["isic2019"].values()}
    (orphan,) = sources["isic2016"]["ids_without_gt_row"]
    gt_ids = {r[0] for r in _csv_rows((dest / gen.PATH_2016_GT).read_bytes(), header=False)[1]}
    assert orphan in {i["id"] for i in members["isic2016"].values()} and orphan not in gt_ids


def test_missing_values_spelled_like_each_year(demo):
    """'unknown' (2017, HAM sex/site), empty (2019, 2020, HAM age); 2020 'unknown' diagnosis is a label."""
    dest, _ = demo
    header, rows = _csv_rows(_read(dest, gen.PATH_2017_ZIP, META_2017))
    assert any(r[1] == "unknown" for r in rows) and any(r[2] == "unknown" for r in rows)
    assert "" not in {v for r in rows for v in r}
    header, rows = _csv_rows(_read(dest, gen.PATH_2018_HAM))
    ham = [dict(zip(header, r, strict=True)) for r in rows]
    assert any(r["age"] == "" for r in ham) and all(re.fullmatch(r"\d+\.0|", r["age"]) for r in ham)
    assert any(r["sex"] == "unknown" for r in ham) and any(r["localization"] == "unknown" for r in ham)
    _, rows = _csv_rows(_read(dest, gen.PATH_2019_META))
    assert all(any(r[i] == "" for r in rows) for i in range(1, 5)) and "unknown" not in {
        v for r in rows for v in r
    }
    header, rows = _csv_rows(_read(dest, gen.PATH_2020_GT))
    table = [dict(zip(header, r, strict=True)) for r in rows]
    for column in ("sex", "age_approx", "anatom_site_general_challenge"):
        assert any(r[column] == "" for r in table), column
    unknown = [r for r in table if r["diagnosis"] == "unknown"]
    assert len(unknown) > len(table) / 2 and {r["benign_malignant"] for r in unknown} == {"benign"}


def test_patients_and_lesions_have_several_images(demo):
    dest, _ = demo
    _, rows = _csv_rows(_read(dest, gen.PATH_2020_GT))
    per_patient = Counter(r[1] for r in rows)
    assert min(per_patient.values()) == 1 and max(per_patient.values()) == 8
    assert all(re.fullmatch(r"IP_\d{7}", p) for p in per_patient)
    _, rows = _csv_rows(_read(dest, gen.PATH_2018_HAM))
    assert set(Counter(r[0] for r in rows).values()) == {1, 2, 3}
    _, rows = _csv_rows(_read(dest, gen.PATH_2019_META))
    prefixes = Counter(r[3].split("_")[0] if r[3] else "" for r in rows)
    assert set(prefixes) == {"BCN", "HAM", "MSK4", ""}


def test_special_images_exif_png_and_large(demo, members):
    _, description = demo
    archive = description["expected"]["sources"]["archive"]
    (rotated,) = archive["exif_orientation"]
    infos = {i["id"]: (name, i) for name, i in members["archive"].items()}
    assert infos[rotated][1]["orientation"] == 6
    (png,) = archive["png_ids"]
    assert infos[png][0] == f"{png}.png" and infos[png][1]["data"][:8] == b"\x89PNG\r\n\x1a\n"
    sizes = Counter(i["size"] for i in members["isic2020"].values() if i["ok"])
    assert sizes[(4000, 3000)] == 3
    usual = {(4000, 3000), (1024, 682), (1024, 1024), (1872, 1053)}
    assert sum(n for size, n in sizes.items() if size not in usual) == 1, "one smaller re-export"


def test_ids_stay_in_each_years_range(demo, members):
    """2016-2019 ids are below ISIC_0074000; 2020 starts at ISIC_2000000; archive ids never collide."""
    numbers = {s: {int(i["id"][5:]) for i in m.values()} for s, m in members.items()}
    assert max(n for s in CATALOG[:4] for n in numbers[s]) < 74_000
    assert min(numbers["isic2020"]) >= 2_000_000
    challenge = set().union(*(numbers[s] for s in CATALOG[:5]))
    shared = numbers["archive"] & challenge
    assert shared == set(), "republished photos get new archive ids"


# ---- counts -------------------------------------------------------------------------------------


def _labels_from_files(dest: Path) -> dict[str, dict[str, str]]:
    """benign_malignant per source and id, parsed from the files with the brief's mapping."""
    one_hot_bm = {"MEL": "malignant", "BCC": "malignant", "SCC": "malignant", "AK": "indeterminate",
                  "AKIEC": "indeterminate"}  # fmt: skip
    labels: dict[str, dict[str, str]] = {}
    _, rows = _csv_rows((dest / gen.PATH_2016_GT).read_bytes(), header=False)
    labels["isic2016"] = {r[0]: r[1] for r in rows}
    _, rows = _csv_rows(_read(dest, gen.PATH_2017_GT))
    labels["isic2017"] = {r[0]: "malignant" if r[1] == "1.0" else "benign" for r in rows}
    for source, data in (("isic2018", _read(dest, gen.PATH_2018_GT_ZIP, GT_2018)),
                         ("isic2019", _read(dest, gen.PATH_2019_GT))):  # fmt: skip
        header, rows = _csv_rows(data)
        labels[source] = {
            normalize_isic_id(r[0]): one_hot_bm.get(header[r.index("1.0")], "benign") for r in rows
        }
    header, rows = _csv_rows(_read(dest, gen.PATH_2020_GT))
    labels["isic2020"] = {r[0]: r[header.index("benign_malignant")] for r in rows}
    header, rows = _csv_rows(_read(dest, gen.PATH_ARCHIVE_ZIP, "metadata.csv"))
    labels["archive"] = {r[0]: r[header.index("diagnosis_1")].lower() for r in rows}
    return labels


def _merge_counts(dest: Path, members: dict) -> tuple[int, Counter]:
    """An independent miniature merge over the files: same id, same bytes, listed pair -> one image."""
    labels = _labels_from_files(dest)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    first_with_sha: dict[str, str] = {}
    for source in CATALOG:
        for info in members[source].values():
            if info["ok"]:
                parent.setdefault(info["id"], info["id"])
                other = first_with_sha.setdefault(info["sha"], info["id"])
                parent[find(info["id"])] = find(other)
    for a, b in _csv_rows(_read(dest, gen.PATH_2020_DUPLICATES))[1]:
        if a in parent and b in parent:
            parent[find(b)] = find(a)
    groups = defaultdict(set)
    for isic_id in parent:
        groups[find(isic_id)].add(isic_id)
    counts = Counter()
    for ids in groups.values():
        label = next((labels[s][i] for s in CATALOG for i in sorted(ids) if labels[s].get(i)), "")
        counts[label] += 1
    return len(groups), counts


def test_expected_merge_counts_recomputed_from_the_files(demo, members):
    dest, description = demo
    merged = description["expected"]["merged"]
    kept, counts = _merge_counts(dest, members)
    assert kept == merged["kept_images"]
    assert {k: counts.get(k, 0) for k in merged["benign_malignant"]} == merged["benign_malignant"]
    assert sum(merged["benign_malignant"].values()) == kept
    assert merged["ids_with_readable_image"] - kept == merged["dropped_as_duplicates"] == 9


def test_class_balance_is_as_skewed_as_the_real_data(demo):
    _, description = demo
    counts = description["expected"]["merged"]["benign_malignant"]
    assert counts["benign"] / counts["malignant"] >= 10
    assert counts["indeterminate"] > 0 and counts[""] > 0
    labels_2020 = description["expected"]["sources"]["isic2020"]["label_counts"]
    assert 20 <= labels_2020["benign"] / labels_2020["malignant"] <= 50


def test_sizes_and_counts_within_the_stated_ranges(demo, members):
    _, description = demo
    total = sum(info["size"] for info in description["files"].values())
    assert total < 80_000_000
    assert 550 <= description["expected"]["unique_image_ids"] <= 650
    assert {i["size"] for i in members["isic2018"].values()} == {(600, 450)}
    assert (1024, 1024) in {i["size"] for i in members["isic2019"].values()}
    assert {i["size"] for i in members["isic2016"].values()} == {(1022, 767), (1504, 1129)}


# ---- synthesis and the benchmark mirror ---------------------------------------------------------


def test_synth_dermoscopy_looks_like_skin_with_a_dark_lesion():
    image = synth_dermoscopy(picture_rng(0, "look"), 320, 240, vignette=False)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    luminance = image.astype(float).mean(axis=2)
    skin = image[luminance > np.percentile(luminance, 70)].mean(axis=0)
    lesion = image[luminance < np.percentile(luminance, 5)].mean(axis=0)
    assert skin[0] > skin[1] > skin[2], "skin is red > green > blue"
    assert lesion.mean() < 0.6 * skin.mean() and lesion[0] > lesion[2], "the lesion is dark brown"
    again = synth_dermoscopy(picture_rng(0, "look"), 320, 240, vignette=False)
    assert np.array_equal(image, again)
    corners = synth_dermoscopy(picture_rng(0, "look"), 320, 240, vignette=True)[[0, -1], [0, -1]]
    assert corners.max() < 40, "the dermoscope ring darkens the corners"


def test_bench_mirror_has_n_distinct_images_with_rows(tmp_path):
    description = generate_bench_mirror(tmp_path, 600, seed=0, size=(64, 48))
    with zipfile.ZipFile(tmp_path / gen.PATH_2019_ZIP) as archive:
        images = [n for n in archive.namelist() if isic_id_from_member(n)]
        hashes = {hashlib.sha256(archive.read(n)).hexdigest() for n in images}
        assert Image.open(io.BytesIO(archive.read(images[-1]))).size == (64, 48)
    assert len(images) == len(hashes) == 600
    header, rows = _csv_rows((tmp_path / gen.PATH_2019_GT).read_bytes())
    assert tuple(header) == gen.HEADER_2019_GT
    assert sorted(r[0] for r in rows) == sorted(isic_id_from_member(n) for n in images)
    assert description["expected"]["sources"]["isic2019"]["image_members"] == 600


def test_cli_writes_a_mirror_and_rejects_bad_sizes(tmp_path, capsys):
    assert cli_main(["bench", str(tmp_path / "b"), "--images", "20", "--size", "48x40"]) == 0
    assert (tmp_path / "b" / gen.MIRROR_FILE).is_file()
    assert "3 files" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["bench", str(tmp_path / "c"), "--images", "5", "--size", "big"])
    assert cli_main(["bench", str(tmp_path / "d"), "--images", "5000", "--size", "8x8"]) == 2
