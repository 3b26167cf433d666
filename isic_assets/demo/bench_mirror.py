"""The benchmark mirror: one large 2019-format source for throughput benchmarks."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open, remove_stale_temporaries
from . import synthetic
from .plan import (
    _ATTRIBUTION_2019,
    _BM_2019,
    _LICENSE_CC_BY_NC,
    _SITES_2019,
    CRLF,
    HEADER_2019_GT,
    HEADER_2019_META,
    PATH_2019_GT,
    PATH_2019_META,
    PATH_2019_ZIP,
    _csv_bytes,
    _one_hot,
)
from .writing import MIRROR_FILE, _check_seed, _current_description, _finish, write_zip

# Benchmark mirror
# --------------------------------------------------------------------------------------------------

_BENCH_BASES = 16
_BENCH_CLASSES = ("NV",) * 12 + ("BKL",) * 3 + ("MEL", "BCC", "AK", "DF", "VASC")
_BLOCK = 8
_DIGIT_BASE = 32


def _stamp(base: np.ndarray, number: int, digits: int) -> np.ndarray:
    """Copy of ``base`` with ``number`` written as flat 8x8 blocks, one grey level per base-32 digit.

    A flat block is one JPEG block whose DC level survives quantisation, so different numbers always
    encode to different bytes while the picture barely changes.
    """
    stamped = base.copy()
    for position in range(digits):
        number, digit = divmod(number, _DIGIT_BASE)
        x = position * _BLOCK
        stamped[:_BLOCK, x : x + _BLOCK] = 16 + 7 * digit
    return stamped


def _stamp_digits(n_images: int, size: tuple[int, int]) -> int:
    """How many stamp blocks make ``n_images`` distinct images; fails early if they do not fit."""
    digits = 1
    while _DIGIT_BASE**digits * _BENCH_BASES < n_images:
        digits += 1
    if digits * _BLOCK > size[0] or size[1] < _BLOCK:
        raise ValueError(f"size {size} is too small to stamp {n_images} distinct images")
    return digits


def _bench_images(
    n_images: int, seed: int, size: tuple[int, int], digits: int
) -> Iterable[tuple[str, bytes]]:
    bases = [
        synthetic.synth_dermoscopy(synthetic.picture_rng(seed, f"bench:{k}"), size[0], size[1])
        for k in range(_BENCH_BASES)
    ]
    for index in range(n_images):
        picture = _stamp(bases[index % _BENCH_BASES], index // _BENCH_BASES, digits)
        yield f"ISIC_{index:07d}", synthetic.encode_jpeg(picture)


def _bench_tables(n_images: int, seed: int) -> tuple[bytes, bytes, Counter]:
    """2019-format ground truth and metadata with random classes, lesions and some missing values."""
    rng = random.Random(seed)
    gt_rows, meta_rows, labels = [], [], Counter()
    lesion = ""
    for index in range(n_images):
        isic_id = f"ISIC_{index:07d}"
        cls = rng.choice(_BENCH_CLASSES)
        labels[_BM_2019[cls]] += 1
        if index % 3 == 0:
            lesion = "" if rng.random() < 0.1 else f"BCN_{rng.randrange(10**7):07d}"
        age = "" if rng.random() < 0.02 else 5 * rng.randrange(2, 18)
        sex = "" if rng.random() < 0.02 else rng.choice(("male", "female"))
        site = "" if rng.random() < 0.1 else rng.choice(_SITES_2019)
        gt_rows.append(_one_hot(HEADER_2019_GT, isic_id, cls))
        meta_rows.append((isic_id, age, site, lesion, sex))
    gt = _csv_bytes(HEADER_2019_GT, gt_rows, CRLF)
    return gt, _csv_bytes(HEADER_2019_META, meta_rows, CRLF), labels


def generate_bench_mirror(dest: Path, n_images: int, seed: int = 0, size: tuple[int, int] = (96, 72)) -> dict:
    """Write a one-source (2019 format) mirror of ``n_images`` small distinct JPEGs; return its description.

    For throughput benchmarks: 16 synthetic base pictures are reused, each copy stamped so its bytes
    differ, which makes tens of thousands of images in seconds. Same idempotent fast path as the demo.
    """
    dest = Path(dest)
    seed = _check_seed(seed)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    size = (int(size[0]), int(size[1]))
    digits = _stamp_digits(n_images, size)
    params = {"n_images": n_images, "size": list(size)}
    current = _current_description(dest, "bench", seed, params)
    if current is not None:
        return current
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MIRROR_FILE).unlink(missing_ok=True)
    remove_stale_temporaries(dest)
    folder = "ISIC_2019_Training_Input"
    members = (
        (f"{folder}/{isic_id}.jpg", data) for isic_id, data in _bench_images(n_images, seed, size, digits)
    )
    extras = [(f"{folder}/ATTRIBUTION.txt", _ATTRIBUTION_2019), (f"{folder}/LICENSE.txt", _LICENSE_CC_BY_NC)]
    (dest / "isic2019").mkdir(exist_ok=True)
    write_zip(dest / PATH_2019_ZIP, itertools.chain(extras, members))  # streamed, not held in memory
    gt, metadata, labels = _bench_tables(n_images, seed)
    with atomic_open(dest / PATH_2019_GT, "wb") as handle:
        handle.write(gt)
    with atomic_open(dest / PATH_2019_META, "wb") as handle:
        handle.write(metadata)
    expected = {
        "sources": {
            "isic2019": {
                "image_members": n_images,
                "non_image_members": len(extras),
                "rows": n_images,
                "label_counts": dict(sorted(labels.items())),
            }
        }
    }
    return _finish(dest, "bench", seed, params, [PATH_2019_ZIP, PATH_2019_GT, PATH_2019_META], expected)
