"""Benchmark of near_duplicates: precision and recall on planted copies, then the search at 100k and 400k.

Run from the repository root::

    .venv/bin/python bench/bench_near_duplicates.py            # a few minutes on 2 vCPUs
    .venv/bin/python bench/bench_near_duplicates.py --quick    # fewer images, a smoke run

Quality: ``--images`` look-alike synthetic lesions (isic_assets/demo/synthetic.py: skin, a brown blob,
hairs, a dermoscope ring on half of them), each brought to the transformed form (256x256 JPEG q90).
A random ``--copies`` of them get a planted copy under a new id: cropped by up to 10% (a random
window), resized to 50-90%, brightness and contrast changed within 10%, re-encoded at quality 60-95,
then transformed like the rest. ``find_near_duplicates`` runs over all of them with the defaults;
recall is the share of planted pairs found, and every other pair reported is false. Hashing time per
image is measured for this module's DCT hash and, where installed, imagehash's ``phash``.

Scale: hashing 400k real images would take longer than the search itself, so the search runs on
synthetic hashes: each bit drawn independently with the per-bit frequencies measured on the real
hashes above. Real hashes are more clustered than that (look-alike pictures share bit patterns), so
the candidate counts there are a lower bound; the confirmation cost is given per candidate to scale
them. Each size runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from isic_assets.core.splits import image_signature
from isic_assets.core.splits import near_duplicates as nd
from isic_assets.demo.synthetic import encode_jpeg, picture_rng, synth_dermoscopy

SIDE = 256


def _transformed(rgb: np.ndarray) -> bytes:
    return encode_jpeg(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA), 90)


def _planted_copy(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    keep_w, keep_h = 1 - rng.uniform(0, 0.10), 1 - rng.uniform(0, 0.10)
    cw, ch = int(w * keep_w), int(h * keep_h)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = rgb[y0 : y0 + ch, x0 : x0 + cw]
    scale = rng.uniform(0.5, 0.9)
    out = cv2.resize(out, (int(cw * scale), int(ch * scale)), interpolation=cv2.INTER_AREA)
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255
    out = np.clip(out.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)
    quality = int(rng.integers(60, 96))
    return cv2.imdecode(np.frombuffer(encode_jpeg(out, quality), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def quality(n_images: int, n_copies: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        rows, planted = [], set()
        copied = set(rng.choice(n_images, n_copies, replace=False).tolist())
        for i in range(n_images):
            rgb = synth_dermoscopy(picture_rng(seed, f"lesion{i}"), 480, 360)
            rows.append(_write(root, f"ISIC_{i:07d}", _transformed(rgb)))
            if i in copied:
                new = f"ISIC_{n_images + i:07d}"
                rows.append(_write(root, new, _transformed(_planted_copy(rng, rgb))))
                planted.add((f"ISIC_{i:07d}", new))
        images = pd.DataFrame(rows)
        paths = [root / p for p in images["image"]]
        own_ms = _per_image_ms(lambda p: image_signature.phash(image_signature.grey(p)), paths)
        lib_ms = _imagehash_ms(paths)
        hashes = np.array([image_signature.phash(image_signature.grey(p)) for p in paths], dtype=np.uint64)
        started = time.perf_counter()
        report = nd.find_near_duplicates(images, root, root / "_state")
        seconds = time.perf_counter() - started
        confirm_ms = _confirm_ms(paths, rng)
    found = set(zip(report.pairs["isic_id_a"], report.pairs["isic_id_b"], strict=True))
    true_found = len(found & planted)
    bits = ((hashes[:, None] >> np.arange(63, -1, -1, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    return {
        "images": len(images), "planted": len(planted), "found": true_found,
        "false_pairs": len(found - planted), "recall": true_found / len(planted),
        "precision": true_found / len(found) if found else 1.0,
        "false_per_10k_images": len(found - planted) / len(images) * 10_000,
        "candidates": report.candidates, "run_seconds": round(seconds, 1),
        "hash_ms_own": own_ms, "hash_ms_imagehash": lib_ms, "confirm_ms_per_candidate": confirm_ms,
        "bit_frequencies": bits.tolist(),
    }


def _write(root: Path, isic_id: str, data: bytes) -> dict:
    name = f"images/{isic_id}.jpg"
    (root / name).write_bytes(data)
    return {"isic_id": isic_id, "image": name, "sha256": isic_id}


def _per_image_ms(fn, paths: list[Path]) -> float:
    sample = paths[:300]
    started = time.perf_counter()
    for path in sample:
        fn(path)
    return round((time.perf_counter() - started) / len(sample) * 1000, 2)


def _imagehash_ms(paths: list[Path]) -> float | None:
    try:
        import imagehash
        from PIL import Image
    except ImportError:
        return None

    def one(path: Path) -> None:
        with Image.open(path) as image:
            imagehash.phash(image)

    return _per_image_ms(one, paths)


def _confirm_ms(paths: list[Path], rng: np.random.Generator) -> float:
    pairs = rng.choice(len(paths), (100, 2))
    started = time.perf_counter()
    for a, b in pairs:
        nd.consistent_matches(paths[a], paths[b])
    return round((time.perf_counter() - started) / len(pairs) * 1000, 2)


def scale(n: int, bit_frequencies: list[float], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    hashes = np.zeros(n, dtype=np.uint64)
    for bit, frequency in enumerate(bit_frequencies):  # bit by bit: the input costs 3 MB, not the RSS
        hashes |= (rng.random(n) < frequency).astype(np.uint64) << np.uint64(63 - bit)
    started = time.perf_counter()
    left, _, _ = nd.candidate_pairs(hashes, nd.DEFAULT_MAX_DISTANCE)
    seconds = time.perf_counter() - started
    return {"n": n, "search_seconds": round(seconds, 1), "candidates": len(left),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bits", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale:
        print(json.dumps(scale(args.scale, json.loads(args.bits), args.seed)))
        return
    n_images, n_copies = (400, 40) if args.quick else (args.images, args.copies)
    result = quality(n_images, n_copies, args.seed)
    print("| images | planted copies | found | recall | false pairs | false pairs per 10k images | precision |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['images']} | {result['planted']} | {result['found']} | {result['recall']:.1%} | "
          f"{result['false_pairs']} | {result['false_per_10k_images']:.1f} | {result['precision']:.1%} |")
    print()
    print(f"hash per image: {result['hash_ms_own']} ms (this module), imagehash phash: "
          f"{result['hash_ms_imagehash']} ms; confirmation: {result['confirm_ms_per_candidate']} ms per candidate; "
          f"candidates: {result['candidates']}; whole run {result['run_seconds']} s")
    print()
    print("| images | candidate search | candidates | peak RSS |")
    print("|---:|---:|---:|---:|")
    for n in ((20_000,) if args.quick else (100_000, 400_000)):
        done = subprocess.run([sys.executable, __file__, "--scale", str(n), "--bits",
                               json.dumps(result["bit_frequencies"])], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout)
        print(f"| {row['n']:,} | {row['search_seconds']} s | {row['candidates']:,} | {row['peak_rss_mb']} MB |")


if __name__ == "__main__":
    main()
