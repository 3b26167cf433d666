"""Near-duplicates: pairs of different ids showing the same photo re-encoded, resized, cropped or recoloured.

Published duplicate lists and identical bytes miss these (a re-exported photo has new bytes), yet a
copy in train and its twin in test is the same leak as a shared patient. Three stages:

1. **Hash** every transformed image once: ``image_signature.view_signatures`` hashes 36 windows of
   the picture (the whole, and windows trimmed by 3-10% on either side of each axis), each with a
   64-bit key and a 256-bit hash. A copy cropped by up to 10% matches one window of its original
   closely; the whole-picture hash alone does not (a crop moves up to a third of its bits).
   Signatures are cached by the image's sha256 in ``merged_data/_state/near_duplicates.views.bin``
   (fixed-size binary records, appended; 1.5 KB per image, read straight into numpy arrays: as JSON
   lines the same cache would hold about 3 KB of Python strings per image in memory), so a re-run
   decodes only new or changed images.
2. **Candidates** without comparing all pairs: multi-index hashing of every window key; each image
   queries with its whole-picture key. The 64 bits are cut into ``BLOCKS`` blocks of 16; two keys
   within ``max_distance`` bits agree on at least one block to within ``max_distance // BLOCKS``
   bits (pigeonhole), so a query probes, per block, the buckets of every value within that radius of
   its own. Buckets are a dense counting-sort table (65,536 entries per block), probes and bucket
   reads are numpy gathers in bounded chunks. Each hit is kept only when the 256-bit hashes of the
   query and of the matched window are within ``max_fine_distance``: look-alike lesions share
   their coarse layout (their 64-bit keys collide often) but rarely their finer frequencies.
3. **Confirm** each candidate by its pixels, not by looks: the matched window of one image and the
   whole other image, both at 128x128, are aligned by an affine ECC fit (at 64x64, then at 128x128
   for pairs that already look like copies; it absorbs the rest of the crop and any stretch), and
   their fine detail (a difference of Gaussians: hairs, pigment network,
   noise, JPEG texture) is compared by normalised cross-correlation. A copy keeps its detail
   (0.95 or more on the bench); two different lesions that merely share a layout do not (at most
   0.68 among the closest look-alike pairs). Decisions are cached by the pair of sha256s and the
   window in ``merged_data/_state/near_duplicates.ncc.jsonl``.

The result is a table ``isic_id_a, isic_id_b, distance, method, similarity`` (``a < b``; distance in
bits of the 256-bit hash), one row per confirmed pair; ``grouping.build_groups`` and
``checks.leakage`` take it as one more kind of link.
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
from ..atomic import atomic_open
from ..components import component_labels
from ..scan_state import JsonlLog
from . import image_signature

Log = Callable[[str], None]
Accept = Callable[[np.ndarray, np.ndarray], np.ndarray]

BLOCKS = 4
BLOCK_BITS = 64 // BLOCKS
DEFAULT_MAX_DISTANCE = 7  # key bits: 4 blocks probed at radius 1 (17 buckets each) find every pair within 7
DEFAULT_MAX_FINE_DISTANCE = 56  # of 256: 97% of cropped copies within; 64 gains 1% for 7x the look-alike candidates
DEFAULT_MIN_SIMILARITY = 0.85  # copies scored 0.97+, look-alike pairs at most 0.44 (docs/PERFORMANCE.md 13)
METHOD = "dct-views+ecc-ncc"
PAIR_COLUMNS = ["isic_id_a", "isic_id_b", "distance", "method", "similarity"]
HASHES_STATE = "near_duplicates.views.bin"
CHECKS_STATE = "near_duplicates.ncc.jsonl"
# The caches of the whole-picture hash and the ORB confirmation this step used before; nothing reads them.
_RETIRED_STATE = ("near_duplicates.hashes.jsonl", "near_duplicates.checks.jsonl")
_CHUNK_CANDIDATES = 4_000_000  # bounds the memory of one probe chunk (~100 MB of int64 arrays)
_PROBE_ROWS = 20_000  # items whose probe keys are counted at once
_COMPARE_SIDE = 128
_COMPARE_MARGIN = 12  # pixels left out at the border, where the alignment leaves no data
_REFINE_FROM = 0.5  # coarse score from which a pair gets the fine alignment


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


def key_matches(queries: np.ndarray, index: np.ndarray, max_distance: int,
                accept: Accept | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs ``(q, e, distance)``: index key ``e`` within ``max_distance`` bits of query key ``q``.

    Exact (no pair within the distance is missed) by the pigeonhole argument in the module doc.
    ``accept(q, e)`` filters the hits chunk by chunk, so memory stays bounded by what it keeps.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    index = np.ascontiguousarray(index, dtype=np.uint64)
    empty = np.empty(0, dtype=np.int64)
    if len(queries) == 0 or len(index) == 0:
        return empty, empty, empty
    masks = _probe_masks(BLOCK_BITS, max_distance // BLOCKS)
    found: list[np.ndarray] = []
    for block in range(BLOCKS):
        shift = np.uint64(64 - BLOCK_BITS * (block + 1))
        mask = np.uint64((1 << BLOCK_BITS) - 1)
        query_values = ((queries >> shift) & mask).astype(np.int64)
        index_values = ((index >> shift) & mask).astype(np.int64)
        order = np.argsort(index_values, kind="stable")
        counts = np.bincount(index_values, minlength=1 << BLOCK_BITS)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        per_item = np.concatenate([
            counts[query_values[lo : lo + _PROBE_ROWS, None] ^ masks[None, :]].sum(axis=1)
            for lo in range(0, len(queries), _PROBE_ROWS)
        ])
        for lo, hi in _chunks(per_item):
            q, e = _probe(query_values[lo:hi], np.arange(lo, hi), masks, order, counts, starts)
            close = image_signature.hamming(queries[q], index[e]) <= max_distance
            q, e = q[close], e[close]
            if accept is not None:
                kept = accept(q, e)
                q, e = q[kept], e[kept]
            found.append(q * len(index) + e)
    codes = np.unique(np.concatenate(found)) if found else empty
    q, e = codes // len(index), codes % len(index)
    return q, e, image_signature.hamming(queries[q], index[e])


def candidate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``max_distance``."""
    return key_matches(hashes, hashes, max_distance, accept=lambda q, e: e > q)


def _chunks(per_item: np.ndarray) -> Iterable[tuple[int, int]]:
    """Consecutive item ranges whose probes read at most about ``_CHUNK_CANDIDATES`` bucket entries."""
    bounds = np.searchsorted(np.cumsum(per_item), np.arange(_CHUNK_CANDIDATES, per_item.sum() + 1,
                                                            _CHUNK_CANDIDATES), side="right")
    edges = [0, *sorted({int(b) for b in bounds if 0 < b < len(per_item)}), len(per_item)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _probe(values: np.ndarray, items: np.ndarray, masks: np.ndarray, order: np.ndarray, counts: np.ndarray,
           starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query item, index row) sharing a probed bucket of one block."""
    keys = (values[:, None] ^ masks[None, :]).ravel()
    sizes = counts[keys]
    total = int(sizes.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    query = np.repeat(np.repeat(items, len(masks)), sizes)
    offsets = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return query, order[np.repeat(starts[keys], sizes) + offsets]


def view_candidates(keys: np.ndarray, fine: np.ndarray, max_distance: int,
                    max_fine_distance: int) -> pd.DataFrame:
    """Candidate pairs from window signatures (``keys``: n x views, ``fine``: n x views x 32 bytes).

    Columns ``query, other, view, fine``: the whole picture of ``query`` matched window ``view`` of
    ``other``; one row per unordered pair (the closest orientation and window), ``query != other``.
    """
    n, views = keys.shape
    flat_fine = fine.reshape(n * views, -1)

    def accept(q: np.ndarray, e: np.ndarray) -> np.ndarray:
        return (e // views != q) & (image_signature.fine_distance(fine[q, 0], flat_fine[e]) <= max_fine_distance)

    q, e, _ = key_matches(keys[:, 0], keys.reshape(-1), max_distance, accept)
    table = pd.DataFrame({"query": q, "other": e // views, "view": e % views,
                          "fine": image_signature.fine_distance(fine[q, 0], flat_fine[e])})
    table["a"] = np.minimum(table["query"], table["other"])
    table["b"] = np.maximum(table["query"], table["other"])
    table = table.sort_values(["a", "b", "fine", "view"], kind="stable").drop_duplicates(["a", "b"])
    return table[["query", "other", "view", "fine"]].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# confirmation


def _detail(pixels: np.ndarray) -> np.ndarray:
    """Fine detail only: a difference of Gaussians drops exposure, contrast offsets and the lesion's outline."""
    return cv2.GaussianBlur(pixels, (0, 0), 1.0) - cv2.GaussianBlur(pixels, (0, 0), 4.0)


def similarity(whole: np.ndarray, other: np.ndarray, view: int) -> float:
    """Normalised cross-correlation of the fine detail of ``whole`` and window ``view`` of ``other``, aligned.

    Both are brought to 128x128 grey. An affine ECC fit on blurred 64x64 copies aligns the window to
    the whole picture (what the window grid left of a crop, and any stretch), and the detail is
    compared away from the borders. Most candidates are look-alikes, which score far below any copy
    after that coarse fit (at most 0.39 on the bench, copies 0.89 or more), so only a pair scoring
    ``_REFINE_FROM`` or more pays for a second fit at 128x128, which lifts copies to 0.97 or more.
    1.0 is the same picture.
    """
    side = (_COMPARE_SIDE, _COMPARE_SIDE)
    target = cv2.resize(whole, side, interpolation=cv2.INTER_AREA).astype(np.float32)
    moving = cv2.resize(image_signature.crop_view(other, image_signature.VIEWS[view]), side,
                        interpolation=cv2.INTER_AREA).astype(np.float32)
    half = (_COMPARE_SIDE // 2, _COMPARE_SIDE // 2)
    warp = _ecc(cv2.resize(target, half, interpolation=cv2.INTER_AREA),
                cv2.resize(moving, half, interpolation=cv2.INTER_AREA), np.eye(2, 3, dtype=np.float32), 1.0, 30)
    warp[:, 2] *= 2  # the translation, from 64 to 128 pixels
    score = _detail_correlation(target, moving, warp)
    if score >= _REFINE_FROM:
        score = max(score, _detail_correlation(target, moving, _ecc(target, moving, warp, 2.0, 20)))
    return round(score, 4)


def _ecc(target: np.ndarray, moving: np.ndarray, warp: np.ndarray, blur: float, iterations: int) -> np.ndarray:
    """The affine warp that best maps ``moving`` onto ``target`` (ECC on blurred copies), from ``warp``."""
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4)
    try:
        _, fitted = cv2.findTransformECC(cv2.GaussianBlur(target, (0, 0), blur), cv2.GaussianBlur(moving, (0, 0), blur),
                                         warp.copy(), cv2.MOTION_AFFINE, criteria, None, 1)
    except cv2.error:  # no convergence: two unrelated pictures; keep the start (and so score low)
        return warp.copy()
    return fitted


def _detail_correlation(target: np.ndarray, moving: np.ndarray, warp: np.ndarray) -> float:
    aligned = cv2.warpAffine(moving, warp, target.shape[::-1], flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
    inner = slice(_COMPARE_MARGIN, _COMPARE_SIDE - _COMPARE_MARGIN)
    x, y = _detail(target)[inner, inner], _detail(aligned)[inner, inner]
    x, y = x - x.mean(), y - y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# the whole step


def find_near_duplicates(
    images: pd.DataFrame,
    image_root: Path,
    state_dir: Path,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    max_fine_distance: int = DEFAULT_MAX_FINE_DISTANCE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    log: Log = lambda _message: None,
) -> NearDuplicateReport:
    """Confirmed near-duplicate pairs among ``images`` (columns ``isic_id``, ``image``, ``sha256``).

    ``image`` is relative to ``image_root`` (``data_transformed/``). Pairs of images with the same
    sha256 are left out: identical bytes are already a link of their own (grouping's ``sha256``).
    An image that does not decode is reported in ``unreadable`` and takes no part.
    """
    if not 0 <= max_distance < 64:
        raise ValueError(f"max_distance must be 0..63 bits, got {max_distance}")
    if not 0 <= max_fine_distance <= 256:
        raise ValueError(f"max_fine_distance must be 0..256 bits, got {max_fine_distance}")
    for column in ("isic_id", "image", "sha256"):
        if column not in images.columns:
            raise ValueError(f"the image table has no {column} column (expected data_transformed/metadata.csv)")
    images = images[["isic_id", "image", "sha256"]].drop_duplicates("isic_id").reset_index(drop=True)
    for retired in _RETIRED_STATE:
        (Path(state_dir) / retired).unlink(missing_ok=True)
    store = SignatureStore(Path(state_dir) / HASHES_STATE)
    hashed, unreadable = store.add_missing(images, Path(image_root), log)
    usable = images[~images["isic_id"].isin(unreadable)].reset_index(drop=True)
    keys, fine = store.lookup(usable["sha256"])
    store.keep_only(usable["sha256"])
    del store
    found = view_candidates(keys, fine, max_distance, max_fine_distance)
    shas = usable["sha256"].to_numpy()
    found = found[shas[found["query"].to_numpy()] != shas[found["other"].to_numpy()]].reset_index(drop=True)
    log(f"near-duplicates: {len(usable)} images hashed ({hashed} new), {len(found)} candidate pairs")
    scores, checked = _confirm(usable, Path(image_root), found, Path(state_dir) / CHECKS_STATE)
    ids = usable["isic_id"].to_numpy()
    a, b = ids[found["query"].to_numpy()], ids[found["other"].to_numpy()]
    table = pd.DataFrame({
        "isic_id_a": np.minimum(a, b).astype(object) if len(a) else [],
        "isic_id_b": np.maximum(a, b).astype(object) if len(a) else [],
        "distance": found["fine"].to_numpy(),
        "method": METHOD,
        "similarity": scores,
    }, columns=PAIR_COLUMNS)
    table = table[table["similarity"] >= min_similarity]
    table = table.sort_values(["distance", "isic_id_a", "isic_id_b"], kind="stable").reset_index(drop=True)
    return NearDuplicateReport(table, len(usable), hashed, len(found), checked, tuple(sorted(unreadable)))


class SignatureStore:
    """Window signatures by sha256, in an append-only file of fixed-size binary records.

    A record is the sha256 (64 ASCII bytes), the 64-bit keys (big-endian) and the 256-bit hashes of
    every window. A run killed mid-append leaves a torn last record: it is cut off on the next open
    and that image is hashed again. Records of images no longer present are dropped by ``keep_only``
    (an atomic rewrite) once they are half the file.
    """

    def __init__(self, path: Path) -> None:
        views = len(image_signature.VIEWS)
        self.path = path
        self.dtype = np.dtype([("sha256", "S64"), ("keys", ">u8", (views,)),
                               ("fine", "u1", (views, image_signature.FINE_BYTES))])
        self.records = np.zeros(0, dtype=self.dtype)
        if path.is_file():
            size = path.stat().st_size
            whole = size - size % self.dtype.itemsize
            if whole != size:
                with path.open("r+b") as handle:
                    handle.truncate(whole)
            self.records = np.fromfile(path, dtype=self.dtype)
        self._index = pd.Index(self.records["sha256"])

    def add_missing(self, images: pd.DataFrame, root: Path, log: Log) -> tuple[int, set[str]]:
        """Hash every image whose sha256 has no record; returns how many, and the ids that do not decode."""
        missing = images[self._index.get_indexer(images["sha256"].str.encode("ascii")) < 0]
        missing = missing.drop_duplicates("sha256")
        unreadable: set[str] = set()
        batch: list[tuple] = []
        hashed = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            for isic_id, image, sha in missing.itertuples(index=False):
                if len(sha) > 64:
                    raise ValueError(f"{isic_id}: sha256 {sha!r} is longer than 64 characters")
                try:
                    keys, fine = image_signature.view_signatures(image_signature.grey(root / image))
                except image_signature.UnreadableImageError as exc:
                    log(f"near-duplicates: {isic_id} skipped: {exc}")
                    unreadable.add(isic_id)
                    continue
                batch.append((sha.encode("ascii"), keys, fine))
                hashed += 1
                if len(batch) == 1000:
                    self._append(handle, batch)
                    batch = []
            self._append(handle, batch)
        return hashed, unreadable

    def _append(self, handle, batch: list[tuple]) -> None:
        if not batch:
            return
        new = np.array(batch, dtype=self.dtype)
        handle.write(new.tobytes())
        handle.flush()
        self.records = np.concatenate([self.records, new])
        self._index = pd.Index(self.records["sha256"])

    def lookup(self, shas: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Keys (n x views, uint64) and 256-bit hashes (n x views x 32, uint8) of ``shas``, in order."""
        rows = self._index.get_indexer(pd.Index(list(shas)).str.encode("ascii"))
        if (rows < 0).any():
            raise KeyError("a sha256 has no signature record")
        chosen = self.records[rows]
        return chosen["keys"].astype(np.uint64), np.ascontiguousarray(chosen["fine"])

    def keep_only(self, shas: Iterable[str]) -> None:
        """Rewrite the file without records of other images once those are half of it."""
        keep = self._index.isin(pd.Index(list(shas)).str.encode("ascii"))
        keep &= ~self._index.duplicated()
        if len(self.records) <= max(64, 2 * int(keep.sum())):
            return
        with atomic_open(self.path, "wb") as handle:
            handle.write(self.records[keep].tobytes())


def _confirm(usable: pd.DataFrame, root: Path, found: pd.DataFrame, state_path: Path) -> tuple[np.ndarray, int]:
    state = JsonlLog(state_path, ("pair",))
    shas, paths = usable["sha256"].to_numpy(), usable["image"].to_numpy()
    scores = np.zeros(len(found), dtype=np.float64)
    keys = []
    checked = 0
    try:
        for k, (q, o, view) in enumerate(found[["query", "other", "view"]].itertuples(index=False)):
            key = f"{shas[q]}:{shas[o]}:{view}"
            keys.append((key,))
            record = state.get(key)
            if record is None:
                score = similarity(image_signature.grey(root / paths[q]), image_signature.grey(root / paths[o]), view)
                record = {"pair": key, "similarity": score}
                state.append(record)
                checked += 1
            scores[k] = float(record["similarity"])
        state.compact(keep=keys)
    finally:
        state.close()
    return scores, checked


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
