"""Benchmark of near_duplicates: per-edit recall and precision on planted copies, then the search at scale.

Run from the repository root::

    .venv/bin/python bench/bench_near_duplicates.py                       # ~10 minutes on 2 vCPUs
    .venv/bin/python bench/bench_near_duplicates.py --quick               # fewer images, a smoke run
    .venv/bin/python bench/bench_near_duplicates.py --sizes 100000 200000 # the search at those sizes

Quality: ``--images`` look-alike synthetic lesions (isic_assets/demo/synthetic.py: skin, a brown blob,
hairs, a dermoscope ring on half of them), each brought to the transformed form (256x256 JPEG q90).
For each edit kind, ``--copies`` randomly chosen lesions (each used once) get a planted copy under a
new id, edited and then transformed like the rest:

- ``reencode``: JPEG quality 60-95;
- ``resize``: 50-90% of the side;
- ``crop``: a random window keeping 90-100% of each side (the transform stretches it back to square);
- ``colour``: contrast x0.9-1.1 and brightness +-10% of the range;
- ``all``: all four, in that order (crop, resize, colour, re-encode).

``find_near_duplicates`` runs over all of them with its defaults; recall is the share of planted
pairs found (per kind and overall), and every other pair reported is false.

Scale: synthesising and hashing 100k lesions takes longer than the time available for a run, so the
search (key index, fine filter) runs on synthetic signatures: each bit of each window's key and
256-bit hash drawn independently with that bit's frequency measured on the real signatures above.
Real signatures of look-alike lesions cluster more than that, so the candidate counts at scale are
a lower bound; the bench also prints the candidate rate per pair measured on the real look-alikes,
which scales with n^2, and the confirmation cost per candidate, to extrapolate from. Each size runs
in a fresh process so its peak RSS is its own.
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
EDITS = ("reencode", "resize", "crop", "colour", "all")


def _transformed(rgb: np.ndarray) -> bytes:
    return encode_jpeg(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA), 90)


def planted_copy(rng: np.random.Generator, rgb: np.ndarray, edit: str) -> np.ndarray:
    """``rgb`` edited as ``edit`` (one of ``EDITS``), as a re-exported copy would be."""
    out = rgb
    if edit in ("crop", "all"):
        h, w = out.shape[:2]
        cw, ch = int(w * (1 - rng.uniform(0, 0.10))), int(h * (1 - rng.uniform(0, 0.10)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = out[y0 : y0 + ch, x0 : x0 + cw]
    if edit in ("resize", "all"):
        scale = rng.uniform(0.5, 0.9)
        out = cv2.resize(out, (int(out.shape[1] * scale), int(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    if edit in ("colour", "all"):
        contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255
        out = np.clip(out.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)
    if edit in ("reencode", "all"):
        quality = int(rng.integers(60, 96))
        out = cv2.imdecode(np.frombuffer(encode_jpeg(out, quality), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(out)


def quality(n_images: int, n_copies: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        rows, planted = [], {}
        chosen = rng.choice(n_images, n_copies * len(EDITS), replace=False).tolist()
        edit_of = {base: EDITS[k // n_copies] for k, base in enumerate(chosen)}
        for i in range(n_images):
            rgb = synth_dermoscopy(picture_rng(seed, f"lesion{i}"), 480, 360)
            rows.append(_write(root, f"ISIC_{i:07d}", _transformed(rgb)))
            if i in edit_of:
                new = f"ISIC_{n_images + i:07d}"
                rows.append(_write(root, new, _transformed(planted_copy(rng, rgb, edit_of[i]))))
                planted[(f"ISIC_{i:07d}", new)] = edit_of[i]
        images = pd.DataFrame(rows)
        paths = [root / p for p in images["image"]]
        hash_ms = _per_image_ms(lambda p: image_signature.view_signatures(image_signature.grey(p)), paths)
        started = time.perf_counter()
        report = nd.find_near_duplicates(images, root, root / "_state")
        seconds = time.perf_counter() - started
        scores = _candidate_scores(root / "_state" / nd.CHECKS_STATE, images, planted)
        keys, fine = _signatures(paths)
        confirm_ms = _confirm_ms(paths, rng)
    found = set(zip(report.pairs["isic_id_a"], report.pairs["isic_id_b"], strict=True))
    per_edit = {edit: {"planted": sum(1 for e in planted.values() if e == edit),
                       "found": sum(1 for p, e in planted.items() if e == edit and p in found)} for edit in EDITS}
    true_found = len(found & planted.keys())
    n = len(images)
    return {
        "images": n, "planted": len(planted), "found": true_found, "per_edit": per_edit,
        "false_pairs": sorted(found - planted.keys()), "recall": true_found / len(planted),
        "precision": true_found / len(found) if found else 1.0,
        "false_per_10k_images": len(found - planted.keys()) / n * 10_000,
        "candidates": report.candidates, "candidate_rate_per_pair": report.candidates / (n * (n - 1) / 2),
        "run_seconds": round(seconds, 1), "scores": scores, "hash_ms": hash_ms, "confirm_ms_per_candidate": confirm_ms,
        "key_bit_frequencies": _bit_frequencies(keys).tolist(),
        "fine_bit_frequencies": np.unpackbits(fine, axis=2).mean(axis=0).tolist(),
    }


def _candidate_scores(checks: Path, images: pd.DataFrame, planted: dict) -> dict:
    """The confirmation scores of every candidate, planted copies apart from the rest."""
    id_of = dict(zip(images["sha256"], images["isic_id"], strict=True))
    planted_scores, other_scores = [], []
    for line in checks.read_text().splitlines():
        record = json.loads(line)
        a, b, _ = record["pair"].split(":")
        pair = tuple(sorted((id_of[a], id_of[b])))
        (planted_scores if pair in planted else other_scores).append(record["similarity"])
    return {"planted_candidates": len(planted_scores), "planted_min": min(planted_scores, default=None),
            "other_candidates": len(other_scores), "other_max": max(other_scores, default=None)}


def _write(root: Path, isic_id: str, data: bytes) -> dict:
    name = f"images/{isic_id}.jpg"
    (root / name).write_bytes(data)
    return {"isic_id": isic_id, "image": name, "sha256": isic_id}


def _signatures(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [image_signature.view_signatures(image_signature.grey(p)) for p in paths]
    return np.stack([k for k, _ in pairs]), np.stack([f for _, f in pairs])


def _bit_frequencies(keys: np.ndarray) -> np.ndarray:
    """Per window and bit (63 first), the share of images with that key bit set."""
    return ((keys[:, :, None] >> np.arange(63, -1, -1, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)


def _per_image_ms(fn, paths: list[Path]) -> float:
    sample = paths[:300]
    started = time.perf_counter()
    for path in sample:
        fn(path)
    return round((time.perf_counter() - started) / len(sample) * 1000, 2)


def _confirm_ms(paths: list[Path], rng: np.random.Generator) -> float:
    pairs = rng.choice(len(paths), (100, 2))
    started = time.perf_counter()
    for a, b in pairs:
        nd.similarity(image_signature.grey(paths[a]), image_signature.grey(paths[b]), int(rng.integers(16)))
    return round((time.perf_counter() - started) / len(pairs) * 1000, 2)


def scale(n: int, frequencies: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    key_freq = np.array(frequencies["key"])  # views x 64
    fine_freq = np.array(frequencies["fine"])  # views x 256
    views = len(key_freq)
    keys = np.zeros((n, views), dtype=np.uint64)
    fine = np.empty((n, views, image_signature.FINE_BYTES), dtype=np.uint8)
    for lo in range(0, n, 2_000):  # in slices: the random draws stay small beside the signatures
        hi = min(n, lo + 2_000)
        for bit in range(64):
            keys[lo:hi] |= (rng.random((hi - lo, views)) < key_freq[:, bit]).astype(np.uint64) << np.uint64(63 - bit)
        fine[lo:hi] = np.packbits(rng.random((hi - lo, views, 256)) < fine_freq, axis=2)
    started = time.perf_counter()
    found = nd.view_candidates(keys, fine, nd.DEFAULT_MAX_DISTANCE, nd.DEFAULT_MAX_FINE_DISTANCE)
    seconds = time.perf_counter() - started
    return {"n": n, "search_seconds": round(seconds, 1), "candidates": len(found),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=60, help="planted copies per edit kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 400_000])
    parser.add_argument("--keep-frequencies", type=Path, help="also write the measured bit frequencies here "
                        "(to rerun one scale size alone: --scale N --frequencies FILE)")
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frequencies", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale:
        print(json.dumps(scale(args.scale, json.loads(Path(args.frequencies).read_text()), args.seed)))
        return
    n_images, n_copies = (400, 10) if args.quick else (args.images, args.copies)
    result = quality(n_images, n_copies, args.seed)
    print("| edit | planted | found | recall |")
    print("|---|---:|---:|---:|")
    for edit, row in result["per_edit"].items():
        print(f"| {edit} | {row['planted']} | {row['found']} | {row['found'] / row['planted']:.1%} |")
    print()
    print("| images | planted copies | found | recall | false pairs | false pairs per 10k images | precision |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['images']} | {result['planted']} | {result['found']} | {result['recall']:.1%} | "
          f"{len(result['false_pairs'])} | {result['false_per_10k_images']:.1f} | {result['precision']:.1%} |")
    print()
    if result["false_pairs"]:
        print("false pairs:", result["false_pairs"])
    scores = result["scores"]
    print(f"confirmation scores: planted copies that became candidates: {scores['planted_candidates']}, lowest "
          f"{scores['planted_min']}; other candidates: {scores['other_candidates']}, highest {scores['other_max']}")
    print(f"signatures per image: {result['hash_ms']} ms; confirmation: {result['confirm_ms_per_candidate']} ms "
          f"per candidate; candidates: {result['candidates']} ({result['candidate_rate_per_pair']:.2e} per pair "
          f"of images); whole run {result['run_seconds']} s")
    print()
    if args.keep_frequencies:
        args.keep_frequencies.write_text(json.dumps({"key": result["key_bit_frequencies"],
                                                     "fine": result["fine_bit_frequencies"]}))
    sizes = (20_000,) if args.quick else args.sizes
    if not sizes:
        return
    print("| images | candidate search | candidates | peak RSS |")
    print("|---:|---:|---:|---:|")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as frequencies:
        json.dump({"key": result["key_bit_frequencies"], "fine": result["fine_bit_frequencies"]}, frequencies)
        frequencies.flush()
        for n in sizes:
            done = subprocess.run([sys.executable, __file__, "--scale", str(n), "--frequencies", frequencies.name],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout)
            print(f"| {row['n']:,} | {row['search_seconds']} s | {row['candidates']:,} | {row['peak_rss_mb']} MB |",
                  flush=True)


if __name__ == "__main__":
    main()
