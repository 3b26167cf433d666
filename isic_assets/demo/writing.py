"""Rendering the pictures and writing the mirror's files, zips and MIRROR.json atomically."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open, atomic_write_json, remove_stale_temporaries
from . import synthetic
from .plan import ZIP_DATE_TIME, Picture, SourcePlan

# 2: MIRROR.json also records the expected outcome of every asset check.
# 4: the demo_evaluation sources (2016 test and 2017 validation shaped).
GENERATOR_VERSION = "4"
MIRROR_FILE = "MIRROR.json"

# Rendering and writing
# --------------------------------------------------------------------------------------------------


def _pixels(picture: Picture, seed: int) -> np.ndarray:
    return synthetic.synth_dermoscopy(
        synthetic.picture_rng(seed, picture.name), picture.width, picture.height
    )


def render_picture(picture: Picture, seed: int) -> bytes:
    """The bytes of one picture; depends only on the recipe and the seed."""
    rng = synthetic.picture_rng(seed, picture.name)
    kind = picture.kind
    if kind in ("jpeg", "exif6", "png"):
        pixels = synthetic.synth_dermoscopy(rng, picture.width, picture.height)
        if kind == "png":
            return synthetic.encode_png(pixels)
        return synthetic.encode_jpeg(pixels, picture.quality, exif_orientation=6 if kind == "exif6" else None)
    if kind == "downsampled":
        small = synthetic.downsample(_pixels(picture.base, seed), picture.width, picture.height)
        return synthetic.encode_jpeg(small, picture.quality)
    if kind == "near_duplicate":
        similar = synthetic.near_duplicate(rng, _pixels(picture.base, seed), picture.width, picture.height)
        return synthetic.encode_jpeg(similar, picture.quality)
    if kind == "truncated":
        return synthetic.truncate(render_picture(picture.base, seed))
    if kind == "garbage":
        return synthetic.garbage(rng, picture.width)
    if kind == "superpixels":
        return synthetic.synth_superpixels(rng, picture.width, picture.height)
    raise ValueError(f"unknown picture kind {kind!r}")


def _render_all(pictures: Iterable[Picture], seed: int) -> dict[Picture, bytes]:
    """Render each distinct picture once, in threads (cv2, numpy and Pillow release the GIL).

    Thread order cannot change any byte: each picture has its own Generator.
    """
    unique = list(dict.fromkeys(pictures))
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rendered = list(pool.map(lambda picture: render_picture(picture, seed), unique))
    return dict(zip(unique, rendered, strict=True))


def _zip_info(name: str) -> zipfile.ZipInfo:
    """Member header with fixed time, owner system and permissions: no trace of the machine or clock."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.create_system = 3
    info.external_attr = 0o644 << 16
    # Images are stored (they do not deflate, and storing keeps generating and reading cheap); text
    # members are deflated, so readers meet both methods.
    stored = name.lower().endswith((".jpg", ".jpeg", ".png"))
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    return info


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a deterministic zip atomically, members in the given order."""
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        for name, data in members:
            archive.writestr(_zip_info(name), data, compresslevel=6)


def _write_plan_files(dest: Path, plans: list[SourcePlan], rendered: dict[Picture, bytes]) -> None:
    for plan in plans:
        for rel, content in plan.files.items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path.parent)
            if isinstance(content, bytes):
                with atomic_open(path, "wb") as handle:
                    handle.write(content)
            else:
                write_zip(path, ((name, rendered[d] if isinstance(d, Picture) else d) for name, d in content))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_files(dest: Path, rel_paths: Iterable[str]) -> dict[str, dict]:
    return {
        rel: {"size": (dest / rel).stat().st_size, "sha256": sha256_file(dest / rel)}
        for rel in sorted(rel_paths)
    }


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _current_description(dest: Path, kind: str, seed: int, params: dict) -> dict | None:
    """MIRROR.json if it describes this very mirror and every file still has its recorded size.

    Sizes only (no hashing): the fast path must cost a few stat calls, and a truncated or replaced
    download almost always changes the size.
    """
    try:
        description = json.loads((dest / MIRROR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted = {"generator_version": GENERATOR_VERSION, "kind": kind, "seed": seed, "params": params}
    if not isinstance(description, dict) or any(description.get(k) != v for k, v in wanted.items()):
        return None
    for rel, info in description.get("files", {}).items():
        try:
            if (dest / rel).stat().st_size != info["size"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return description


def _finish(dest: Path, kind: str, seed: int, params: dict, rel_paths: Iterable[str], expected: dict) -> dict:
    description = {
        "generator": "isic_assets.demo",
        "generator_version": GENERATOR_VERSION,
        "kind": kind,
        "seed": seed,
        "params": params,
        "files": _describe_files(dest, rel_paths),
        "expected": expected,
    }
    atomic_write_json(dest / MIRROR_FILE, description)
    # Return what a later fast path would read back, so both paths give equal dicts.
    return json.loads((dest / MIRROR_FILE).read_text(encoding="utf-8"))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed
