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

Scale: synthesising and hashing 400k lesions takes longer than the time available for a run, so the
search (``near_dup_search.search``) runs on resampled descriptors: each image takes the window
signatures of a random real look-alike above and flips every bit (the same bits in every window)
with probability ``--flip`` (0.2: two images of one base then differ by about 82 of 256 bits, as
look-alikes do, so no resampled pair is a copy). The bit frequencies of the real signatures, which
make look-alikes crowd the buckets, stay much as they were; the bench prints the cross-image bucket
entries read per pair on the real and on the resampled signatures. Windows are produced chunk by
chunk, as the store is read in the real step, and each size runs in a fresh process so its peak RSS
is its own.
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

from isic_assets.core.splits import image_signature, near_dup_quick_check, near_dup_search, near_dup_store
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
        hash_ms = _hash_ms(images, root)
        started = time.perf_counter()
        report = nd.find_near_duplicates(images, root, root / "_state")
        seconds = time.perf_counter() - started
        scores = _candidate_scores(root / "_state" / nd.CHECKS_STATE, images, planted)
        keys, fine, thumbs = _signatures(images, root)
        quick = _quick_margin(keys, fine, thumbs, images, planted)
        confirm_ms = _confirm_ms(paths, rng)
        quick_us = _quick_us(thumbs, rng)
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
        "search_candidates": report.candidates_found, "bucket_reads": report.bucket_reads,
        "cross_reads_per_pair": _cross_reads(fine) / (n * n), "quick_us_per_pair": quick_us,
        "run_seconds": round(seconds, 1), "scores": scores, "quick": quick,
        "hash_ms": hash_ms, "confirm_ms_per_candidate": confirm_ms,
        "signatures": (keys, fine, thumbs),
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


def _items(images: pd.DataFrame, root: Path) -> list[tuple[str, str, str]]:
    return [(i, str(root / p), s) for i, p, s in images[["isic_id", "image", "sha256"]].itertuples(index=False)]


def _signatures(images: pd.DataFrame, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    records, _ = near_dup_store.hash_batch(_items(images, root))
    return records["keys"].astype(np.uint64), records["fine"], records["thumb"]


def _hash_ms(images: pd.DataFrame, root: Path) -> float:
    """Reading and hashing an image as the step does (one process), per image."""
    sample = _items(images.iloc[:500], root)
    started = time.perf_counter()
    near_dup_store.hash_batch(sample)
    return round((time.perf_counter() - started) / len(sample) * 1000, 3)


def _quick_margin(keys: np.ndarray, fine: np.ndarray, thumbs: np.ndarray, images: pd.DataFrame,
                  planted: dict) -> dict:
    """The quick check's scores of the search's candidates: planted copies' lowest against the others' highest."""
    found, _ = near_dup_search.search(keys[:, 0], fine[:, 0], lambda lo, hi: (keys[lo:hi], fine[lo:hi]),
                                      max_distance=nd.DEFAULT_MAX_DISTANCE,
                                      max_fine_distance=nd.DEFAULT_MAX_FINE_DISTANCE)
    scores = near_dup_quick_check.scores(thumbs[found["other"].to_numpy()], thumbs[found["query"].to_numpy()],
                                         found["view"].to_numpy())
    ids = images["isic_id"].to_numpy()
    is_planted = np.array([tuple(sorted((ids[a], ids[b]))) in planted
                           for a, b in zip(found["query"], found["other"], strict=True)], dtype=bool)
    return {"planted": int(is_planted.sum()), "planted_min": float(scores[is_planted].min(initial=np.inf)),
            "others": int((~is_planted).sum()), "others_max": float(scores[~is_planted].max(initial=-np.inf)),
            "others_passing": int((scores[~is_planted] >= near_dup_quick_check.MIN_QUICK).sum())}


def _cross_reads(fine: np.ndarray) -> int:
    """Bucket entries the search reads between different images (an image's windows meeting its own
    whole picture are left out: they grow with n, not n^2)."""
    total = 0
    for table in near_dup_search.table_bits():
        whole = near_dup_search._codes(fine[:, 0], table)
        counts = np.bincount(whole, minlength=1 << near_dup_search.TABLE_BITS)
        windows = near_dup_search._codes(fine, table)
        total += int(counts[windows].sum() - (windows == whole[:, None]).sum())
    return total


def _quick_us(thumbs: np.ndarray, rng: np.random.Generator) -> float:
    pairs = rng.choice(len(thumbs), (20_000, 2))
    views = rng.integers(len(image_signature.VIEWS), size=len(pairs))
    started = time.perf_counter()
    near_dup_quick_check.scores(thumbs[pairs[:, 0]], thumbs[pairs[:, 1]], views)
    return round((time.perf_counter() - started) / len(pairs) * 1e6, 1)


def _confirm_ms(paths: list[Path], rng: np.random.Generator) -> float:
    pairs = rng.choice(len(paths), (100, 2))
    started = time.perf_counter()
    for a, b in pairs:
        nd.similarity(image_signature.grey(paths[a]), image_signature.grey(paths[b]), int(rng.integers(16)))
    return round((time.perf_counter() - started) / len(pairs) * 1000, 2)


def scale(n: int, signatures: Path, flip: float, seed: int) -> dict:
    """The search on ``n`` resampled descriptors (see the module doc)."""
    real = np.load(signatures)
    keys0, fine0 = real["keys"], real["fine"]
    chunk = 2_000
    base = np.random.default_rng(seed).integers(len(keys0), size=n)

    def windows(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        draw = np.random.default_rng((seed, lo))  # each chunk from its own seed: reading it again gives the same
        fine_flip = np.packbits(draw.random((hi - lo, 256)) < flip, axis=1)
        key_flip = np.packbits(draw.random((hi - lo, 64)) < flip, axis=1).view(">u8")[:, 0].astype(np.uint64)
        return keys0[base[lo:hi]] ^ key_flip[:, None], fine0[base[lo:hi]] ^ fine_flip[:, None, :]

    whole_keys = np.empty(n, dtype=np.uint64)
    whole_fine = np.empty((n, image_signature.FINE_BYTES), dtype=np.uint8)
    for lo in range(0, n, chunk):
        keys, fine = windows(lo, min(n, lo + chunk))
        whole_keys[lo : lo + len(keys)], whole_fine[lo : lo + len(keys)] = keys[:, 0], fine[:, 0]
    started = time.perf_counter()
    found, reads = near_dup_search.search(whole_keys, whole_fine, windows, max_distance=nd.DEFAULT_MAX_DISTANCE,
                                          max_fine_distance=nd.DEFAULT_MAX_FINE_DISTANCE, chunk_images=chunk)
    seconds = time.perf_counter() - started
    return {"n": n, "search_seconds": round(seconds, 1), "reads": reads, "candidates": len(found),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=60, help="planted copies per edit kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 400_000])
    parser.add_argument("--flip", type=float, default=0.2, help="bit flip probability of resampled descriptors")
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--signatures", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale:
        print(json.dumps(scale(args.scale, Path(args.signatures), args.flip, args.seed)))
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
    quick = result["quick"]
    print(f"quick check (from {near_dup_quick_check.MIN_QUICK}): planted copies among the search's candidates: "
          f"{quick['planted']}, lowest {quick['planted_min']:.3f}; other candidates: {quick['others']}, highest "
          f"{quick['others_max']:.3f}, {quick['others_passing']} passing")
    pairs = result["images"] * (result["images"] - 1) / 2
    print(f"reading and hashing an image: {result['hash_ms']} ms; "
          f"quick check: {result['quick_us_per_pair']} us per pair; "
          f"confirmation: {result['confirm_ms_per_candidate']} ms per candidate")
    print(f"search: {result['bucket_reads']:,} bucket entries read ({result['cross_reads_per_pair']:.2e} x n^2 "
          f"between different images), {result['search_candidates']} candidates "
          f"({result['search_candidates'] / pairs:.2e} per pair), {result['candidates']} past the quick check "
          f"({result['candidates'] / pairs:.2e} per pair); whole run {result['run_seconds']} s")
    print()
    sizes = (20_000,) if args.quick else args.sizes
    if not sizes:
        return
    print("| images | search | bucket entries read | per pair (n^2) | candidates | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.NamedTemporaryFile(suffix=".npz") as signatures:
        keys, fine, thumbs = result["signatures"]
        np.savez(signatures, keys=keys, fine=fine, thumbs=thumbs)
        signatures.flush()
        for n in sizes:
            done = subprocess.run([sys.executable, __file__, "--scale", str(n), "--signatures", signatures.name,
                                   "--flip", str(args.flip), "--seed", str(args.seed)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout)
            print(f"| {row['n']:,} | {row['search_seconds']} s | {row['reads']:,} | {row['reads'] / n / n:.2e} | "
                  f"{row['candidates']:,} | {row['peak_rss_mb']} MB |", flush=True)


if __name__ == "__main__":
    main()
