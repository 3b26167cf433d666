"""The declared augmentation pipeline: seeded, validated up front, and safe to write offline copies."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from isic_assets.core.transform.augment import (
    DEFAULT_AUGMENTATIONS,
    AugmentationSpecError,
    augment_file,
    augment_image,
    build_augmentation,
)
from isic_assets.core.transform.image_ops import ImageDecodeError, encode_jpeg


def _picture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_same_seed_gives_the_same_array_and_other_seeds_differ() -> None:
    """Oversampled copies must be reproducible run to run, yet differ from one another."""
    picture = _picture()
    first = augment_image(picture, seed=11)
    assert np.array_equal(first, augment_image(picture, seed=11))
    others = [augment_image(picture, seed=s) for s in (12, 13, 14)]
    assert all(not np.array_equal(first, other) for other in others)
    assert first.shape == picture.shape and first.dtype == np.uint8


def test_every_default_transform_is_actually_applied_somewhere() -> None:
    """A pipeline that silently does nothing would still be 'deterministic'; prove it changes pixels."""
    picture = _picture(1)
    changed = [not np.array_equal(augment_image(picture, seed=s), picture) for s in range(16)]
    assert sum(changed) >= 14  # all five p=0.5 transforms skipped: 1 in 32


def test_transforms_fire_independently_of_each_other() -> None:
    """albumentations 2.0.8 gives every child of Compose(seed=s) the same seed, so two p=0.5 flips
    would always fire together (only 'none' and 'both' outcomes); all four combinations must occur."""
    picture = _picture(5)
    spec = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
    outcomes = {"none": picture, "h": picture[:, ::-1], "v": picture[::-1], "hv": picture[::-1, ::-1]}
    seen = set()
    for seed in range(32):
        out = augment_image(picture, spec, seed=seed)
        seen.update(name for name, expected in outcomes.items() if np.array_equal(out, expected))
    assert seen == set(outcomes)


def test_a_spec_that_went_through_json_builds_the_same_pipeline() -> None:
    """Specs live in Dagster config (JSON): tuples become lists and must mean the same thing."""
    picture = _picture(2)
    from_json = json.loads(json.dumps(DEFAULT_AUGMENTATIONS))
    assert np.array_equal(augment_image(picture, from_json, seed=5), augment_image(picture, None, seed=5))


def test_a_custom_spec_is_honoured() -> None:
    """Training code can declare its own list: a certain horizontal flip is exactly a mirror."""
    picture = _picture(3)
    flipped = augment_image(picture, [{"name": "HorizontalFlip", "p": 1.0}], seed=0)
    assert np.array_equal(flipped, picture[:, ::-1])


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            [{"name": "NoSuchTransform", "p": 0.5}],
            r"entry 0 \(NoSuchTransform\): unknown albumentations transform",
        ),
        (
            [{"name": "HorizontalFlip", "p": 0.5, "angle": 3}],
            r"entry 0 \(HorizontalFlip\): unknown parameter",
        ),
        (
            [{"name": "HorizontalFlip"}, {"name": "Affine", "rotate": "lots"}],
            r"entry 1 \(Affine\): invalid parameters",
        ),
        ([{"name": "VerticalFlip", "p": 2.0}], r"entry 0 \(VerticalFlip\): invalid parameters"),
        ([{"p": 0.5}], r"entry 0: expected a dict with a 'name'"),
        ([{"name": "Compose"}], r"unknown albumentations transform 'Compose'"),
        ({"name": "HorizontalFlip"}, r"must be a list of dicts"),
    ],
)
def test_a_bad_spec_fails_at_build_time_naming_the_entry(spec: object, message: str) -> None:
    """A typo in the augmentation config must fail before any image is touched, and say where."""
    with pytest.raises(AugmentationSpecError, match=message):
        build_augmentation(spec)  # type: ignore[arg-type]
    assert issubclass(AugmentationSpecError, ValueError)


def test_building_does_not_mutate_the_default_spec() -> None:
    """DEFAULT_AUGMENTATIONS is shared by every caller; building from it must leave it as it was."""
    before = copy.deepcopy(DEFAULT_AUGMENTATIONS)
    build_augmentation(seed=3)
    assert before == DEFAULT_AUGMENTATIONS


def test_augment_file_writes_a_reproducible_jpeg_atomically(tmp_path: Path) -> None:
    """Offline copies for oversampling: same seed -> same bytes, a decodable JPEG, no temporaries."""
    src = tmp_path / "ISIC_0000001.jpg"
    src.write_bytes(encode_jpeg(_picture(4)))
    first = augment_file(src, tmp_path / "copies" / "a.jpg", seed=9)
    second = augment_file(src, tmp_path / "copies" / "b.jpg", seed=9)
    other = augment_file(src, tmp_path / "copies" / "c.jpg", seed=10)
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()
    assert simplejpeg.decode_jpeg(first.read_bytes()).shape == (64, 64, 3)
    assert sorted(p.name for p in (tmp_path / "copies").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]


def test_augment_file_names_the_file_it_cannot_decode(tmp_path: Path) -> None:
    """A corrupt source must fail with its path in the message and leave no output behind."""
    src = tmp_path / "ISIC_0000002.jpg"
    src.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ImageDecodeError, match=r"ISIC_0000002.jpg"):
        augment_file(src, tmp_path / "out.jpg", seed=1)
    with pytest.raises(ImageDecodeError, match=r"missing.jpg"):
        augment_file(tmp_path / "missing.jpg", tmp_path / "out.jpg", seed=1)
    assert not (tmp_path / "out.jpg").exists()
