"""ISIC 2024 (SLICE-3D) shaped mirrors: the small ``demo_isic2024`` source and benchmark mirrors of any size.

Both write the Kaggle layout (``train-image.hdf5`` with one dataset per ``isic_id`` holding the JPEG
bytes, ``train-metadata.csv`` with the real 55-column header, docs/ISIC_SOURCES.md 1.6); the
benchmark can also write the ISIC challenge layout (images zip with its own metadata.csv, ground
truth ``isic_id,malignant``, supplement). Tiles are small JPEGs, each its own synthetic skin patch
and lesion: no two are the same picture, let alone the same bytes (the real set has no duplicate
tile). Everything is written streaming, one image at a time: the generator's
memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import multiprocessing
import os
import random
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.atomic import TMP_PREFIX, atomic_open

HEADER_2024: tuple[str, ...] = (
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
    "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C",
    "tbp_lv_Cext", "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2",
    "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL",
    "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple",
    "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color",
    "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis",
    "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z", "attribution", "copyright_license",
    "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
    "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
)
GROUND_TRUTH_HEADER = ("isic_id", "malignant")
#: Columns of the challenge supplement. Its real header is not published anywhere we could read
#: (docs/ISIC_SOURCES.md 1.6); this is the best-supported guess: the label-leaking columns.
SUPPLEMENT_COLUMNS = ("isic_id", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
                      "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm",
                      "tbp_lv_dnn_lesion_confidence")

FULL_IMAGES = 401_059
FULL_PATIENTS = 1_042
FULL_MALIGNANT = 393
IMAGE_TYPE = "TBP tile: close-up"

KAGGLE_IMAGES = "train-image.hdf5"
KAGGLE_METADATA = "train-metadata.csv"
CHALLENGE_IMAGES = "ISIC_2024_Training_Input.zip"
CHALLENGE_GROUND_TRUTH = "ISIC_2024_Training_GroundTruth.csv"
CHALLENGE_SUPPLEMENT = "ISIC_2024_Training_Supplement.csv"
CHALLENGE_FOLDER = "ISIC_2024_Training_Input"

_SITES = (("posterior torso", "Torso Back", "Torso Back Top Third"),
          ("lower extremity", "Left Leg", "Left Leg - Lower"),
          ("anterior torso", "Torso Front", "Torso Front Top Half"),
          ("upper extremity", "Right Arm", "Right Arm - Upper"),
          ("head/neck", "Head & Neck", "Head & Neck"),
          ("", "Unknown", "Unknown"))
_SITE_WEIGHTS = (30, 26, 22, 18, 3, 1)
_ATTRIBUTIONS = (
    ("Memorial Sloan Kettering Cancer Center", "CC-BY"),
    ("Department of Dermatology, Hospital Clínic de Barcelona", "CC-BY-NC"),
    ("University Hospital of Basel", "CC-BY-NC"),
    ("Frazer Institute, The University of Queensland, Dermatology Research Centre", "CC-BY"),
    ("ACEMID MIA", "CC-BY"),
    ("ViDIR Group, Department of Dermatology, Medical University of Vienna", "CC-BY-NC"),
)
_MALIGNANT_IDDX = (
    ("Malignant::Malignant adnexal epithelial proliferations - Follicular::Basal cell carcinoma::"
     "Basal cell carcinoma, Nodular"),
    "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma in situ",
    "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive",
    "Malignant::Malignant epidermal proliferations::Squamous cell carcinoma in situ",
)
_BIOPSIED_BENIGN_IDDX = (
    "Benign::Benign melanocytic proliferations::Nevus::Nevus, NOS, Junctional",
    "Benign::Benign epidermal proliferations::Seborrheic keratosis",
    "Indeterminate::Indeterminate epidermal proliferations::Solar or actinic keratosis",
)

_TILE = 112
_SHAPE = 56  # the lesion's shape is drawn at half size and smoothly upsampled: a quarter of the work
_FIELD = 5  # coarse grid of the skin's own shading, upsampled to the tile
_NOISE_BANK = 61  # sensor-noise frames shared round-robin (a prime: it never lines up with other cycles)


# --------------------------------------------------------------------------------------------------
# Tiles


_GRID = np.mgrid[0:_SHAPE, 0:_SHAPE].astype(np.float32) / _SHAPE


@functools.lru_cache(maxsize=2)
def _noise_bank(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 2024, 1 << 40])  # no tile index reaches it
    return [rng.normal(0, 5, size=(_TILE, _TILE, 3)).astype(np.float32) for _ in range(_NOISE_BANK)]


def _tile(rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """One skin patch with one lesion, in the flat light of a total-body photograph, all its own.

    Every tile draws its own skin tone, uneven shading (a coarse random field, smoothly upsampled)
    and lesion (position, size, elongation, angle, an irregular border, colour, darker core), so no
    two tiles are the same picture: near-duplicate search on a mirror of these finds only what is
    planted, as on the real release (which has no duplicate tile). Sensor noise comes from a small
    bank of frames, scaled per tile: drawing it afresh was most of the cost of a tile.
    """
    import cv2

    size = (_TILE, _TILE)
    yy, xx = _GRID
    skin = rng.uniform((165, 115, 90), (240, 195, 170)).astype(np.float32)
    field = rng.normal(0.0, 0.07, size=(_FIELD, _FIELD)).astype(np.float32)
    shade = 1.0 + cv2.resize(field, size, interpolation=cv2.INTER_CUBIC)
    # Python floats, not numpy float64 scalars: those would turn the float32 planes into float64.
    cx, cy = (float(x) for x in rng.uniform(0.25, 0.75, size=2))
    rx, ry = (float(x) for x in rng.uniform(0.06, 0.24, size=2))
    angle = float(rng.uniform(0, math.pi))
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
    theta = np.arctan2(v, u)
    lobes = 1.0 + sum(float(rng.uniform(0, 0.18)) * np.cos(k * theta + float(rng.uniform(0, 2 * math.pi)))
                      for k in (2, 3, 5))
    radius = np.sqrt(u * u + v * v) / lobes
    blob = np.clip((1.0 - radius) * float(rng.uniform(2.0, 6.0)), 0, 1)
    core = np.clip(1.0 - radius / float(rng.uniform(0.3, 0.7)), 0, 1)
    blob = cv2.resize(blob, size, interpolation=cv2.INTER_LINEAR)[..., None]
    darker = 1.0 - 0.35 * cv2.resize(core, size, interpolation=cv2.INTER_LINEAR)[..., None]
    lesion = rng.uniform((60, 35, 20), (160, 110, 90)).astype(np.float32)
    picture = (skin * shade[..., None]) * (1 - blob) + lesion * blob * darker
    picture += noise * np.float32(rng.uniform(0.6, 1.6))
    return np.clip(picture, 0, 255).astype(np.uint8)


_CHUNK = 1024  # tiles per task when several processes make them


def _tile_chunk(task: tuple[int, int, int]) -> list[bytes]:
    seed, start, stop = task
    bank = _noise_bank(seed)
    out = []
    for index in range(start, stop):
        picture = _tile(np.random.default_rng([seed, 2024, index]), bank[index % _NOISE_BANK])
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def tile_jpegs(count: int, seed: int = 0, workers: int = 1) -> Iterator[bytes]:
    """``count`` distinct small JPEG tiles (about 3-5 KB each), in order, made a chunk at a time.

    Tile ``i`` depends only on ``(seed, i)``, so a mirror of any size begins with the same tiles,
    whatever ``workers`` (forked processes making chunks in parallel; the order is kept).
    """
    tasks = ((seed, start, min(start + _CHUNK, count)) for start in range(0, count, _CHUNK))
    if workers <= 1 or count <= _CHUNK:
        for task in tasks:
            yield from _tile_chunk(task)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for chunk in pool.imap(_tile_chunk, tasks):
            yield from chunk


# --------------------------------------------------------------------------------------------------
# Metadata rows


def isic_ids(count: int, seed: int) -> list[str]:
    """``count`` distinct random ISIC ids in ascending order (the real file is sorted by id)."""
    rng = random.Random(seed * 7919 + 2024)
    return [f"ISIC_{n:07d}" for n in sorted(rng.sample(range(10**7), count))]


def scaled(count: int) -> tuple[int, int]:
    """Patients and malignant images for a mirror of ``count`` images, proportional to the full set."""
    patients = max(1, min(count, round(FULL_PATIENTS * count / FULL_IMAGES)))
    malignant = max(1, round(FULL_MALIGNANT * count / FULL_IMAGES)) if count >= 2 else 0
    return patients, malignant


def _number(rng: random.Random, low: float, high: float) -> str:
    return repr(round(rng.uniform(low, high), 6))


def metadata_rows(ids: Sequence[str], patients: int, malignant: int, seed: int) -> Iterator[list[str]]:
    """One ``train-metadata.csv`` row per id: a plausible value in every one of the 55 columns."""
    rng = random.Random(seed * 104729 + 55)
    bad = set(rng.sample(range(len(ids)), malignant))
    patient_ids = [f"IP_{rng.randrange(10**7):07d}" for _ in range(patients)]
    people = {p: (rng.choice(("male", "female", "")), 5 * rng.randrange(6, 18)) for p in patient_ids}
    for index, isic_id in enumerate(ids):
        person = index * patients // len(ids)
        patient = patient_ids[person]
        sex, age = people[patient]
        site, location_simple, location = rng.choices(_SITES, weights=_SITE_WEIGHTS)[0]
        attribution, license_ = _ATTRIBUTIONS[person % len(_ATTRIBUTIONS)]
        is_bad = index in bad
        biopsied = is_bad or rng.random() < 0.003
        if is_bad:
            iddx_full = rng.choice(_MALIGNANT_IDDX)
        elif biopsied:
            iddx_full = rng.choice(_BIOPSIED_BENIGN_IDDX)
        else:
            iddx_full = "Benign"
        levels = iddx_full.split("::") + [""] * 5
        lesion_id = f"IL_{rng.randrange(10**7):07d}" if biopsied or rng.random() < 0.05 else ""
        measurements = {f"tbp_lv_{name}": _number(rng, 0, 60) for name in (
            "A", "Aext", "B", "Bext", "C", "Cext", "H", "Hext", "L", "Lext", "areaMM2", "area_perim_ratio",
            "color_std_mean", "deltaA", "deltaB", "deltaL", "deltaLB", "deltaLBnorm", "eccentricity",
            "minorAxisMM", "nevi_confidence", "norm_border", "norm_color", "perimeterMM", "radial_color_std_max",
            "stdL", "stdLExt", "symm_2axis", "x", "y", "z")}
        values = {
            "isic_id": isic_id, "target": "1" if is_bad else "0", "patient_id": patient,
            "age_approx": "" if rng.random() < 0.007 else f"{age}.0", "sex": sex, "anatom_site_general": site,
            "clin_size_long_diam_mm": _number(rng, 1, 12), "image_type": IMAGE_TYPE,
            "tbp_tile_type": rng.choice(("3D: XP", "3D: XP", "3D: white")),
            **measurements,
            "tbp_lv_location": location, "tbp_lv_location_simple": location_simple,
            "tbp_lv_symm_2axis_angle": str(rng.randrange(0, 180, 5)),
            "attribution": attribution, "copyright_license": license_, "lesion_id": lesion_id,
            "iddx_full": iddx_full, "iddx_1": levels[0], "iddx_2": levels[1], "iddx_3": levels[2],
            "iddx_4": levels[3], "iddx_5": levels[4],
            "mel_mitotic_index": "<1/mm^2" if "Melanoma Invasive" in iddx_full else "",
            "mel_thick_mm": _number(rng, 0.1, 2) if "Melanoma Invasive" in iddx_full else "",
            "tbp_lv_dnn_lesion_confidence": _number(rng, 0, 100),
        }
        yield [values[name] for name in HEADER_2024]


# --------------------------------------------------------------------------------------------------
# Writers


def _csv_text(header: Sequence[str], rows: Iterator[Sequence[str]], handle: io.TextIOBase) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def write_hdf5(path: Path, datasets: Iterator[tuple[str, object]]) -> int:
    """Write ``(key, value)`` datasets one at a time to ``path`` (atomically); return how many.

    ``value`` is bytes (stored as a scalar ``|S``, as the Kaggle file does), or a numpy value or
    array stored as given (for the ``|V`` and uint8 variants).
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    count = 0
    try:
        with h5py.File(tmp, "w") as handle:
            for key, value in datasets:
                handle.create_dataset(key, data=np.bytes_(value) if isinstance(value, bytes) else value)
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def generate_isic2024_mirror(dest: Path, n_images: int, seed: int = 0, layout: str = "kaggle") -> dict:
    """Write an ISIC-2024-shaped source of ``n_images`` tiles under ``dest``; return its facts.

    ``layout`` is ``kaggle`` (train-image.hdf5 + train-metadata.csv) or ``challenge`` (images zip
    with its metadata.csv, ground truth, supplement). Patients and malignant images scale with the
    size (1,042 and 393 at 401,059). Images and rows are streamed: memory stays flat at any size.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if layout not in ("kaggle", "challenge"):
        raise ValueError(f"layout must be 'kaggle' or 'challenge', got {layout!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = isic_ids(n_images, seed)
    patients, malignant = scaled(n_images)
    files: dict[str, str] = {}
    if layout == "kaggle":
        write_hdf5(dest / KAGGLE_IMAGES, zip(ids, tile_jpegs(n_images, seed, workers=os.cpu_count() or 1),
                                                strict=True))
        with atomic_open(dest / KAGGLE_METADATA, "w") as handle:
            _csv_text(HEADER_2024, metadata_rows(ids, patients, malignant, seed), handle)
        files = {"images": KAGGLE_IMAGES, "metadata": KAGGLE_METADATA}
    else:
        _write_challenge(dest, ids, patients, malignant, seed)
        files = {"images": CHALLENGE_IMAGES, "ground_truth": CHALLENGE_GROUND_TRUTH, "metadata": CHALLENGE_SUPPLEMENT}
    return {"layout": layout, "images": n_images, "patients": patients, "malignant": malignant, "files": files}


def _write_challenge(dest: Path, ids: list[str], patients: int, malignant: int, seed: int) -> None:
    """The challenge layout: zip (JPEGs + metadata.csv without the label columns), ground truth, supplement."""
    supplement_at = [HEADER_2024.index(name) for name in SUPPLEMENT_COLUMNS]
    embedded = [i for i, name in enumerate(HEADER_2024) if name not in SUPPLEMENT_COLUMNS[1:] and name != "target"]
    target_at = HEADER_2024.index("target")
    embedded_path = dest / f"{TMP_PREFIX}embedded-metadata.csv"
    with atomic_open(dest / CHALLENGE_GROUND_TRUTH, "w") as truth, \
            atomic_open(dest / CHALLENGE_SUPPLEMENT, "w") as supplement, \
            embedded_path.open("w", newline="") as embedded_text, \
            atomic_open(dest / CHALLENGE_IMAGES, "wb") as raw, \
            zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as archive:
        truth_writer = csv.writer(truth, lineterminator="\n")
        truth_writer.writerow(GROUND_TRUTH_HEADER)
        supplement_writer = csv.writer(supplement, lineterminator="\n")
        supplement_writer.writerow(SUPPLEMENT_COLUMNS)
        embedded_writer = csv.writer(embedded_text, lineterminator="\n")
        embedded_writer.writerow([HEADER_2024[i] for i in embedded])
        tiles = tile_jpegs(len(ids), seed, workers=os.cpu_count() or 1)
        for row, data in zip(metadata_rows(ids, patients, malignant, seed), tiles, strict=True):
            truth_writer.writerow([row[0], f"{float(row[target_at]):.1f}"])
            supplement_writer.writerow([row[i] for i in supplement_at])
            embedded_writer.writerow([row[i] for i in embedded])
            archive.writestr(f"{CHALLENGE_FOLDER}/{row[0]}.jpg", data)
        # The embedded CSV goes in last, from a side file, as in a zip made by walking a folder.
        embedded_text.flush()
        archive.write(embedded_path, f"{CHALLENGE_FOLDER}/metadata.csv")
    embedded_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The demo_isic2024 source of the demo mirror

DEMO_FOLDER = "isic2024"
DEMO_IMAGES = 240
#: Far more malignant and fewer patients than the real ratio (1 in 1,020): a few hundred tiles at
#: that ratio would hold no malignant image at all, and splits need some of each class.
DEMO_PATIENTS = 40
DEMO_MALIGNANT = 12
DEMO_NOT_AN_ID_KEY = "ISIC_00240"  # five digits: an id cut short
_NOT_A_JPEG = b"Demo mirror: this dataset holds text, not a JPEG.\n"


def write_demo_source(dest: Path, seed: int = 0) -> tuple[list[str], dict]:
    """Write ``isic2024/train-image.hdf5`` and ``isic2024/train-metadata.csv`` under ``dest``.

    Quirks, each recorded in the returned expected facts: a key that is not an ISIC id (holding a
    good tile), a dataset that holds text instead of a JPEG (its row exists), a metadata row with no
    dataset, and the three byte layouts a reader must accept (``|S`` scalars mostly, one ``|V``
    scalar, one uint8 array). Returns the relative paths written and the facts.
    """
    folder = Path(dest) / DEMO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    ids = isic_ids(DEMO_IMAGES, seed=1)  # ids never depend on the pixel seed
    rows = list(metadata_rows(ids, DEMO_PATIENTS, DEMO_MALIGNANT, seed=1))
    not_a_jpeg, without_image, as_void, as_array = ids[7], ids[-1], ids[3], ids[5]

    def datasets() -> Iterator[tuple[str, object]]:
        tiles = tile_jpegs(DEMO_IMAGES + 1, seed)
        for isic_id, data in zip(ids, tiles, strict=False):
            if isic_id == without_image:
                continue
            if isic_id == not_a_jpeg:
                yield isic_id, _NOT_A_JPEG
            elif isic_id == as_void:
                yield isic_id, np.void(data)
            elif isic_id == as_array:
                yield isic_id, np.frombuffer(data, dtype=np.uint8)
            else:
                yield isic_id, data
        yield DEMO_NOT_AN_ID_KEY, next(tiles)

    write_hdf5(folder / KAGGLE_IMAGES, datasets())
    with atomic_open(folder / KAGGLE_METADATA, "w") as handle:
        _csv_text(HEADER_2024, iter(rows), handle)
    target = HEADER_2024.index("target")
    kept = [row for row in rows if row[0] not in (not_a_jpeg, without_image)]
    expected = {
        "rows": len(rows),
        "hdf5_datasets": DEMO_IMAGES,  # every id but the one without image, plus the bad key
        "not_isic_id_keys": [DEMO_NOT_AN_ID_KEY],
        "not_a_jpeg_ids": [not_a_jpeg],
        "rows_without_image": [without_image],
        "kept": len(kept),
        "kept_malignant": sum(row[target] == "1" for row in kept),
        "patients": len({row[HEADER_2024.index("patient_id")] for row in kept}),
        "image_type": IMAGE_TYPE,
    }
    return [f"{DEMO_FOLDER}/{KAGGLE_IMAGES}", f"{DEMO_FOLDER}/{KAGGLE_METADATA}"], expected
