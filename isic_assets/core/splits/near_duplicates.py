"""Near-duplicates: pairs of different ids showing the same photo re-encoded, resized, cropped or recoloured.

Published duplicate lists and identical bytes miss these (a re-exported photo has new bytes), yet a
copy in train and its twin in test is the same leak as a shared patient. Three stages:

1. **Hash** every transformed image once: a 64-bit DCT hash (``image_signature.phash``). Hashes are
   cached by the image's sha256 in ``merged_data/_state/near_duplicates.hashes.jsonl``, so a re-run
   decodes only new or changed images.
2. **Candidates** without comparing all pairs: multi-index hashing. The 64 bits are cut into
   ``BLOCKS`` blocks of 16; two hashes within ``max_distance`` bits agree on at least one block to
   within ``max_distance // BLOCKS`` bits (pigeonhole), so each image probes, per block, the
   buckets of every value within that radius of its own. Buckets are a dense counting-sort table
   (65,536 entries per block), probes and bucket reads are numpy gathers in bounded chunks, and
   every candidate is verified with the full distance. Memory stays at a few arrays of n entries
   plus one chunk.
3. **Confirm** each candidate by geometry, not by looks: ORB keypoints of both images are matched
   and a RANSAC similarity transform is fitted; a copy keeps dozens of matches consistent with one
   crop-and-scale, two different lesions that merely share a layout do not (dermoscopy pictures are
   all a dark blob on skin, so hash distance alone is not enough). Decisions are cached by the pair
   of sha256s in ``merged_data/_state/near_duplicates.checks.jsonl``.

The result is a table ``isic_id_a, isic_id_b, distance, method, inliers`` (``a < b``), one row per
confirmed pair; ``grouping.build_groups`` and ``checks.leakage`` take it as one more kind of link.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import layout
from ..components import component_labels
from ..scan_state import JsonlLog
from . import image_signature

Log = Callable[[str], None]

BLOCKS = 4
BLOCK_BITS = 64 // BLOCKS
DEFAULT_MAX_DISTANCE = 10
DEFAULT_MIN_INLIERS = 20
METHOD = "phash64+orb-ransac"
PAIR_COLUMNS = ["isic_id_a", "isic_id_b", "distance", "method", "inliers"]
HASHES_STATE = "near_duplicates.hashes.jsonl"
CHECKS_STATE = "near_duplicates.checks.jsonl"
_CHUNK_CANDIDATES = 4_000_000  # bounds the memory of one probe chunk (~100 MB of int64 arrays)
_PROBE_ROWS = 20_000  # items whose probe keys are counted at once (20k x 137 keys: ~22 MB)
_ORB_FEATURES = 400


@dataclass(frozen=True)
class NearDuplicateReport:
    """What a run found and how much work it did."""

    pairs: pd.DataFrame
    images: int
    hashed: int
    candidates: int
    confirmed_checked: int
    unreadable: tuple[str, ...]


# ----------------------------------------------------------------------------------------------
# candidate search


def _probe_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit XOR mask with at most ``radius`` bits set."""
    masks = [0]
    frontier = [0]
    for _ in range(radius):
        frontier = sorted({m | (1 << b) for m in frontier for b in range(bits) if not m >> b & 1})
        masks += frontier
    return np.array(masks, dtype=np.int64)


def candidate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``max_distance``.

    Exact (no pair within the distance is missed) by the pigeonhole argument in the module doc.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    masks = _probe_masks(BLOCK_BITS, max_distance // BLOCKS)
    found: list[np.ndarray] = []
    for block in range(BLOCKS):
        shift = np.uint64(64 - BLOCK_BITS * (block + 1))
        values = ((hashes >> shift) & np.uint64((1 << BLOCK_BITS) - 1)).astype(np.int64)
        order = np.argsort(values, kind="stable")
        counts = np.bincount(values, minlength=1 << BLOCK_BITS)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        per_item = np.concatenate([
            counts[values[lo : lo + _PROBE_ROWS, None] ^ masks[None, :]].sum(axis=1)
            for lo in range(0, n, _PROBE_ROWS)
        ])
        for lo, hi in _chunks(per_item):
            found.append(_probe(hashes, values[lo:hi], np.arange(lo, hi), masks, order, counts, starts,
                                max_distance))
    codes = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    left, right = codes // n, codes % n
    return left, right, image_signature.hamming(hashes[left], hashes[right])


def _chunks(per_item: np.ndarray) -> Iterable[tuple[int, int]]:
    """Consecutive item ranges whose probes read at most about ``_CHUNK_CANDIDATES`` bucket entries."""
    bounds = np.searchsorted(np.cumsum(per_item), np.arange(_CHUNK_CANDIDATES, per_item.sum() + 1,
                                                            _CHUNK_CANDIDATES), side="right")
    edges = [0, *sorted({int(b) for b in bounds if 0 < b < len(per_item)}), len(per_item)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _probe(hashes: np.ndarray, values: np.ndarray, items: np.ndarray, masks: np.ndarray, order: np.ndarray,
           counts: np.ndarray, starts: np.ndarray, max_distance: int) -> np.ndarray:
    """Pair codes ``i * n + j`` (``i < j``, verified distance) for the probes of ``items`` in one block."""
    keys = (values[:, None] ^ masks[None, :]).ravel()
    sizes = counts[keys]
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    query = np.repeat(np.repeat(items, len(masks)), sizes)
    offsets = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    other = order[np.repeat(starts[keys], sizes) + offsets]
    keep = other > query
    query, other = query[keep], other[keep]
    close = image_signature.hamming(hashes[query], hashes[other]) <= max_distance
    return query[close] * len(hashes) + other[close]


# ----------------------------------------------------------------------------------------------
# confirmation


def _orb_features(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    pixels = image_signature.grey(path)
    orb = cv2.ORB_create(_ORB_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(pixels, None)
    if descriptors is None or len(keypoints) < 4:
        return None
    return np.float32([k.pt for k in keypoints]), descriptors


def consistent_matches(path_a: Path, path_b: Path) -> int:
    """Keypoint matches consistent with one similarity transform (crop, scale, small shift)."""
    fa, fb = _orb_features(path_a), _orb_features(path_b)
    if fa is None or fb is None:
        return 0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(fa[1], fb[1])
    if len(matches) < 4:
        return 0
    pa = fa[0][[m.queryIdx for m in matches]]
    pb = fb[0][[m.trainIdx for m in matches]]
    # A fixed RNG state makes RANSAC, and so the decision, the same on every run.
    cv2.setRNGSeed(0)
    _, mask = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    return 0 if mask is None else int(mask.sum())


# ----------------------------------------------------------------------------------------------
# the whole step


def find_near_duplicates(
    images: pd.DataFrame,
    image_root: Path,
    state_dir: Path,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    log: Log = lambda _message: None,
) -> NearDuplicateReport:
    """Confirmed near-duplicate pairs among ``images`` (columns ``isic_id``, ``image``, ``sha256``).

    ``image`` is relative to ``image_root`` (``data_transformed/``). Pairs of images with the same
    sha256 are left out: identical bytes are already a link of their own (grouping's ``sha256``).
    An image that does not decode is reported in ``unreadable`` and takes no part.
    """
    if not 0 <= max_distance < 64:
        raise ValueError(f"max_distance must be 0..63 bits, got {max_distance}")
    for column in ("isic_id", "image", "sha256"):
        if column not in images.columns:
            raise ValueError(f"the image table has no {column} column (expected data_transformed/metadata.csv)")
    images = images[["isic_id", "image", "sha256"]].drop_duplicates("isic_id").reset_index(drop=True)
    hashes, hashed, unreadable = _hashes(images, Path(image_root), Path(state_dir) / HASHES_STATE, log)
    usable = images[~images["isic_id"].isin(unreadable)].reset_index(drop=True)
    values = np.array([hashes[s] for s in usable["sha256"]], dtype=np.uint64)
    left, right, distance = candidate_pairs(values, max_distance)
    different = usable["sha256"].to_numpy()[left] != usable["sha256"].to_numpy()[right]
    left, right, distance = left[different], right[different], distance[different]
    log(f"near-duplicates: {len(usable)} images hashed ({hashed} new), {len(left)} candidate pairs")
    inliers, checked = _confirm(usable, Path(image_root), left, right, Path(state_dir) / CHECKS_STATE)
    ids = usable["isic_id"].to_numpy()
    a, b = ids[left], ids[right]
    table = pd.DataFrame({
        "isic_id_a": np.minimum(a, b).astype(object) if len(a) else [],
        "isic_id_b": np.maximum(a, b).astype(object) if len(a) else [],
        "distance": distance,
        "method": METHOD,
        "inliers": inliers,
    }, columns=PAIR_COLUMNS)
    table = table[table["inliers"] >= min_inliers]
    table = table.sort_values(["distance", "isic_id_a", "isic_id_b"], kind="stable").reset_index(drop=True)
    return NearDuplicateReport(table, len(usable), hashed, len(left), checked, tuple(sorted(unreadable)))


def _hashes(images: pd.DataFrame, root: Path, state_path: Path, log: Log) -> tuple[dict[str, int], int, set[str]]:
    state = JsonlLog(state_path, ("sha256",))
    hashes: dict[str, int] = {}
    unreadable: set[str] = set()
    hashed = 0
    try:
        for isic_id, image, sha in images.itertuples(index=False):
            if sha in hashes:
                continue
            record = state.get(sha)
            if record is None:
                try:
                    value = image_signature.phash(image_signature.grey(root / image))
                except image_signature.UnreadableImageError as exc:
                    log(f"near-duplicates: {isic_id} skipped: {exc}")
                    unreadable.add(isic_id)
                    continue
                record = {"sha256": sha, "phash": f"{value:016x}"}
                state.append(record)
                hashed += 1
                if hashed % 1000 == 0:
                    state.flush()
            hashes[sha] = int(record["phash"], 16)
        state.compact(keep=[(s,) for s in hashes])
    finally:
        state.close()
    return hashes, hashed, unreadable


def _confirm(usable: pd.DataFrame, root: Path, left: np.ndarray, right: np.ndarray,
             state_path: Path) -> tuple[np.ndarray, int]:
    state = JsonlLog(state_path, ("pair",))
    shas, paths = usable["sha256"].to_numpy(), usable["image"].to_numpy()
    inliers = np.zeros(len(left), dtype=np.int64)
    keys = []
    checked = 0
    try:
        for k, (i, j) in enumerate(zip(left.tolist(), right.tolist(), strict=True)):
            key = ":".join(sorted((shas[i], shas[j])))
            keys.append((key,))
            record = state.get(key)
            if record is None:
                record = {"pair": key, "inliers": consistent_matches(root / paths[i], root / paths[j])}
                state.append(record)
                checked += 1
            inliers[k] = int(record["inliers"])
        state.compact(keep=keys)
    finally:
        state.close()
    return inliers, checked


# ----------------------------------------------------------------------------------------------
# reading the output back


def read_pairs(root: Path) -> pd.DataFrame | None:
    """``merged_data/near_duplicates.csv`` as text, or None where near_duplicates never ran."""
    path = Path(root) / layout.MERGED / layout.NEAR_DUPLICATES_CSV
    return layout.read_table(path) if path.is_file() else None


def to_drop(pairs: pd.DataFrame | None, present: Iterable[str]) -> pd.DataFrame:
    """Which image of each pair to leave out (``isic_id``) and the one kept (``kept_isic_id``), with the reason.

    Pairs chain (A~B, B~C), so images are taken component by component: the smallest id of each
    connected set is kept and every other member is dropped for it.
    """
    columns = ["isic_id", "kept_isic_id", "reason"]
    if pairs is None or pairs.empty:
        return pd.DataFrame(columns=columns)
    present = set(present)
    pairs = pairs[pairs["isic_id_a"].isin(present) & pairs["isic_id_b"].isin(present)]
    images = pd.Index(sorted(set(pairs["isic_id_a"]) | set(pairs["isic_id_b"])))
    labels = component_labels(len(images), images.get_indexer(pairs["isic_id_a"]),
                              images.get_indexer(pairs["isic_id_b"]))
    keeper = pd.Series(images, index=images).groupby(labels).transform("min")  # images are sorted
    rows = [{"isic_id": image, "kept_isic_id": kept, "reason": "near_duplicate"}
            for image, kept in keeper.items() if kept != image]
    return pd.DataFrame(rows, columns=columns)
