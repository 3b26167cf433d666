"""Near-duplicates: pairs of different ids showing the same photo re-encoded, resized, cropped or recoloured.

Published duplicate lists and identical bytes miss these (a re-exported photo has new bytes), yet a
copy in train and its twin in test is the same leak as a shared patient. Three stages:

1. **Hash** every transformed image once: ``image_signature.view_signatures`` hashes 36 windows of
   the picture (the whole, and windows trimmed by 3-10% on either side of each axis), each with a
   64-bit key and a 256-bit hash. A copy cropped by up to 10% matches one window of its original
   closely; the whole-picture hash alone does not (a crop moves up to a third of its bits). With
   them goes a 64x64 grey thumbnail. All of it is cached by the image's sha256 in
   ``merged_data/_state/near_duplicates.window_hashes.bin`` (``near_dup_store``: fixed-size records on
   disk, read through a memory map, about 5.6 KB an image), so a re-run decodes only new or changed
   images and memory stays flat.
2. **Candidates** without comparing all pairs (``near_dup_search``): locality-sensitive hashing of
   the 256-bit hashes, the whole pictures as the index and every window as a query; a hit is kept
   when the window's key is within ``max_distance`` bits and its 256-bit hash within
   ``max_fine_distance`` of the whole picture's, and each image keeps its few closest partners. The
   bucket entries read grow far more slowly than the all-pairs count, and the candidates at most
   linearly.
   A **quick check** (``near_dup_quick_check``) then compares 64x64 thumbnails of each candidate,
   thousands of pairs at once, and passes on only those whose band-passed detail correlates.
3. **Confirm** each candidate by its pixels, not by looks: the matched window of one image and the
   whole other image, both at 128x128, are aligned by an affine ECC fit (at 64x64, then at 128x128
   for pairs that already look like copies; it absorbs the rest of the crop and any stretch), and
   their fine detail (a difference of Gaussians: hairs, pigment network,
   noise, JPEG texture) is compared by normalised cross-correlation. A copy keeps its detail
   (0.95 or more on the bench); two different lesions that merely share a layout do not (at most
   0.68 among the closest look-alike pairs). An affine fit can also bend one smooth lesion onto
   another's outline, and then the outline's detail correlates too; so the aligned pair's phases
   (a whitened correlation, which weighs the many weak frequencies that only a copy keeps) must
   agree as well (``MIN_ALIGNED_PHASE``).
   Decisions are cached by the pair of sha256s and the window in
   ``merged_data/_state/near_duplicates.confirmations.jsonl``.

The result is a table ``isic_id_a, isic_id_b, distance, method, similarity`` (``a < b``; distance in
bits of the 256-bit hash), one row per confirmed pair; ``grouping.build_groups`` and
``checks.leakage`` take it as one more kind of link.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import layout
from ..components import component_labels
from ..compute.allocator import return_free_memory
from ..scan_state import JsonlLog
from . import image_signature, near_dup_quick_check, near_dup_search, near_dup_store
from .near_dup_store import ImageColumns, SignatureStore

Log = Callable[[str], None]
Accept = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_MAX_DISTANCE = 12  # bits of the 64-bit window keys: 7 lost a tenth of the crops the LSH search met
DEFAULT_MAX_FINE_DISTANCE = 56  # of 256: 97% of cropped copies within; 64 gains 1% for 7x the look-alike candidates
DEFAULT_MIN_SIMILARITY = 0.85  # copies scored 0.97+, look-alike pairs at most 0.44 (docs/PERFORMANCE.md 13)
# Both the detail and the aligned phase must pass. Copies on the look-alike lesion set scored 0.76 or
# more, single-edit copies of the ISIC 2024 tiles 0.48 or more; the different tiles that the affine fit
# bent onto each other at most 0.29, as did two different demo pictures of one size (0.12), whose
# shared upsampling grid gave them a detail correlation of 0.92 (docs/PERFORMANCE.md 13).
MIN_ALIGNED_PHASE = 0.4
METHOD = "dct-views+ecc-ncc"
PAIR_COLUMNS = ["isic_id_a", "isic_id_b", "distance", "method", "similarity"]
HASHES_STATE = "near_duplicates.window_hashes.bin"
CHECKS_STATE = "near_duplicates.confirmations.jsonl"
# Caches this step kept before (the whole-picture hash, the ORB confirmation, window signatures without
# thumbnails, and with thumbnails of the full decode; confirmations without the aligned phase); nothing
# reads them.
_RETIRED_STATE = ("near_duplicates.hashes.jsonl", "near_duplicates.checks.jsonl", "near_duplicates.views.bin",
                  "near_duplicates.signatures.bin", "near_duplicates.ncc.jsonl")
_COMPARE_SIDE = 128
_COMPARE_MARGIN = 12  # pixels left out at the border, where the alignment leaves no data
_REFINE_FROM = 0.5  # coarse score from which a pair gets the fine alignment
_PHASE_BAND = (0.02, 0.35)  # cycles per pixel at 128 px
_CONFIRM_BATCH = 50  # candidate pairs a worker confirms at a time (about 0.7 s of ECC)


@dataclass(frozen=True)
class NearDuplicateReport:
    """What a run found and how much work it did."""

    pairs: pd.DataFrame
    images: int
    hashed: int
    candidates: int  # past the search and the quick thumbnail check: the pairs the full confirmation saw
    confirmed_checked: int
    unreadable: tuple[str, ...]
    candidates_found: int = 0  # out of the search, before the quick check
    bucket_reads: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: hash, search, quick_check, confirm


# ----------------------------------------------------------------------------------------------
# confirmation


def _detail(pixels: np.ndarray) -> np.ndarray:
    """Fine detail only: a difference of Gaussians drops exposure, contrast offsets and the lesion's outline."""
    return cv2.GaussianBlur(pixels, (0, 0), 1.0) - cv2.GaussianBlur(pixels, (0, 0), 4.0)


def similarity(whole: np.ndarray, other: np.ndarray, view: int) -> tuple[float, float]:
    """How alike ``whole`` and window ``view`` of ``other`` are once aligned: (detail correlation, phase).

    Both are brought to 128x128 grey. An affine ECC fit on blurred 64x64 copies aligns the window to
    the whole picture (what the window grid left of a crop, and any stretch), and the detail is
    compared away from the borders. Most candidates are look-alikes, which score far below any copy
    after that coarse fit (at most 0.39 on the bench, copies 0.89 or more), so only a pair scoring
    ``_REFINE_FROM`` or more pays for a second fit at 128x128, which lifts copies to 0.97 or more.

    The second number is the whitened (phase) correlation of the aligned pair within one pixel of
    the fit (``_aligned_phase``): an affine fit can bend one smooth lesion onto another's outline,
    and then their detail correlates (synthetic ISIC 2024 tiles up to 0.93); their phases do not
    (at most 0.29, planted copies 0.48 or more; docs/PERFORMANCE.md 13). 1.0 is the same picture.
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
        fine = _ecc(target, moving, warp, 2.0, 20)
        fine_score = _detail_correlation(target, moving, fine)
        if fine_score > score:
            score, warp = fine_score, fine
    return round(score, 4), round(_aligned_phase(target, _aligned(moving, warp)), 4)


def _aligned(moving: np.ndarray, warp: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(moving, warp, moving.shape[::-1], flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)


def _aligned_phase(target: np.ndarray, aligned: np.ndarray) -> float:
    """Phase correlation of two aligned pictures away from the borders: the best within one pixel."""
    inner = slice(_COMPARE_MARGIN, _COMPARE_SIDE - _COMPARE_MARGIN)
    a, b = target[inner, inner], aligned[inner, inner]
    n = a.shape[0]
    taper = np.outer(np.hanning(n), np.hanning(n))
    cross = np.fft.rfft2(a * taper) * np.conj(np.fft.rfft2(b * taper))
    radius = np.sqrt(np.fft.rfftfreq(n)[None, :] ** 2 + np.fft.fftfreq(n)[:, None] ** 2)
    band = ((radius >= _PHASE_BAND[0]) & (radius <= _PHASE_BAND[1])).astype(np.float64)
    cross *= band / np.maximum(np.abs(cross), 1e-12)
    columns = np.full(cross.shape[1], 2.0)  # Parseval on a real FFT
    columns[0] = 1.0
    if n % 2 == 0:
        columns[-1] = 1.0
    surface = np.fft.irfft2(cross, s=(n, n)) * n * n / (band * columns).sum()
    near = np.r_[0:2, n - 1 : n]
    return float(surface[near][:, near].max())


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
    aligned = _aligned(moving, warp)
    inner = slice(_COMPARE_MARGIN, _COMPARE_SIDE - _COMPARE_MARGIN)
    x, y = _detail(target)[inner, inner], _detail(aligned)[inner, inner]
    x, y = x - x.mean(), y - y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# the whole step


def find_near_duplicates(
    images: pd.DataFrame | ImageColumns,
    image_root: Path,
    state_dir: Path,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    max_fine_distance: int = DEFAULT_MAX_FINE_DISTANCE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    log: Log = lambda _message: None,
) -> NearDuplicateReport:
    """Confirmed near-duplicate pairs among ``images`` (columns ``isic_id``, ``image``, ``sha256``, or
    those columns as an ``ImageColumns``: no Python object per image, see ``ImageColumns.read``).

    ``image`` is relative to ``image_root`` (``data_transformed/``). Pairs of images with the same
    sha256 are left out: identical bytes are already a link of their own (grouping's ``sha256``).
    An image that does not decode is reported in ``unreadable`` and takes no part.
    """
    if not 0 <= max_distance < 64:
        raise ValueError(f"max_distance must be 0..63 bits, got {max_distance}")
    if not 0 <= max_fine_distance <= 256:
        raise ValueError(f"max_fine_distance must be 0..256 bits, got {max_fine_distance}")
    columns = (images if isinstance(images, ImageColumns) else ImageColumns.of(images)).first_of_each_id()
    del images
    for retired in _RETIRED_STATE:
        (Path(state_dir) / retired).unlink(missing_ok=True)
    clock = _Clock()
    store = SignatureStore(Path(state_dir) / HASHES_STATE)
    hashed, unreadable = store.add_missing(columns, Path(image_root), log)
    clock.lap("hash")
    if unreadable:
        columns = columns.take(~np.isin(columns.ids, np.array([i.encode() for i in unreadable])))
    store.keep_only(columns.shas)
    rows = store.rows(columns.shas)
    whole_keys, whole_fine = store.whole(rows)
    return_free_memory()  # the lookups' temporaries, before the search builds its index

    def windows(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        return store.read(rows[lo:hi], "keys"), store.read(rows[lo:hi], "fine")

    found, reads = near_dup_search.search(whole_keys, whole_fine, windows, max_distance=max_distance,
                                          max_fine_distance=max_fine_distance)
    del whole_keys, whole_fine
    return_free_memory()  # the search's temporaries: not kept, nor counted again in each forked worker
    clock.lap("search")
    shas = columns.shas
    found = found[shas[found["query"].to_numpy()] != shas[found["other"].to_numpy()]].reset_index(drop=True)
    quick = _quick_scores(store, rows, found)
    clock.lap("quick_check")
    log(f"near-duplicates: {len(columns)} images hashed ({hashed} new), {reads} bucket entries read, "
        f"{len(found)} candidate pairs, {int((quick >= near_dup_quick_check.MIN_QUICK).sum())} past the quick check")
    found = found[quick >= near_dup_quick_check.MIN_QUICK].reset_index(drop=True)
    return_free_memory()
    scores, phases, checked = _confirm(columns, Path(image_root), found, Path(state_dir) / CHECKS_STATE)
    clock.lap("confirm")
    log(f"near-duplicates: seconds {clock.seconds}")
    a, b = (_strings(columns.ids[found[side].to_numpy()]) for side in ("query", "other"))
    table = pd.DataFrame({
        "isic_id_a": np.minimum(a, b).astype(object) if len(a) else [],
        "isic_id_b": np.maximum(a, b).astype(object) if len(a) else [],
        "distance": found["fine"].to_numpy(),
        "method": METHOD,
        "similarity": scores,
    }, columns=PAIR_COLUMNS)
    table = table[(table["similarity"] >= min_similarity) & (phases >= MIN_ALIGNED_PHASE)]
    table = table.sort_values(["distance", "isic_id_a", "isic_id_b"], kind="stable").reset_index(drop=True)
    return NearDuplicateReport(table, len(columns), hashed, len(found), checked, tuple(sorted(unreadable)),
                               candidates_found=len(quick), bucket_reads=reads, seconds=clock.seconds)


def _strings(values: np.ndarray) -> np.ndarray:
    """UTF-8 bytes back to Python strings (an object array), for the few rows that become output."""
    return np.array([value.decode("utf-8", "surrogateescape") for value in values], dtype=object)


class _Clock:
    """Seconds per phase of the step, for the log and the asset's metadata."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 1)
        self._last = now


def _quick_scores(store: SignatureStore, rows: np.ndarray, found: pd.DataFrame,
                  processes: int = near_dup_store.HASH_PROCESSES) -> np.ndarray:
    """The thumbnail check of every candidate, in slices of ``_QUICK_SLICE`` pairs checked by
    ``processes`` forked workers (in this process when there is one slice).

    A slice reads only its pairs' thumbnails (5.7 KB records, scattered: 4,000 pairs keep that near
    45 MB; 20,000 held about 230 MB plus the copies), each query's once. The workers find the
    candidates and the store as this process left them (``_QUICK``, set before they are forked).
    """
    global _QUICK
    out = np.empty(len(found), dtype=np.float64)
    slices = [(lo, min(len(found), lo + _QUICK_SLICE)) for lo in range(0, len(found), _QUICK_SLICE)]
    _QUICK = (store, rows[found["query"].to_numpy()], rows[found["other"].to_numpy()], found["view"].to_numpy(),
              -1 if len(slices) <= 1 or processes <= 1 else 1)
    try:
        for lo, part in near_dup_store.run_batches(_quick_slice, slices, processes, 1):
            out[lo : lo + len(part)] = part
    finally:
        _QUICK = None
    return out


_QUICK_SLICE = 2_000
_QUICK: tuple[SignatureStore, np.ndarray, np.ndarray, np.ndarray, int] | None = None


def _quick_slice(batch: list[tuple[int, int]]) -> list[tuple[int, np.ndarray]]:
    assert _QUICK is not None, "the quick check's candidates are set before its workers start"
    store, query, other, view, workers = _QUICK
    out = []
    for lo, hi in batch:
        queries, which = np.unique(query[lo:hi], return_inverse=True)
        out.append((lo, near_dup_quick_check.scores(store.read(other[lo:hi], "thumb"), store.read(queries, "thumb"),
                                                    view[lo:hi], which=which, workers=workers)))
    return out


def _confirm(usable: ImageColumns, root: Path, found: pd.DataFrame, state_path: Path,
             processes: int = near_dup_store.HASH_PROCESSES) -> tuple[np.ndarray, np.ndarray, int]:
    """``similarity`` of every candidate: from the cache, or computed in ``processes`` forked workers."""
    state = JsonlLog(state_path, ("pair",))
    shas, paths = usable.shas, usable.paths
    scores = np.zeros(len(found), dtype=np.float64)
    phases = np.zeros(len(found), dtype=np.float64)
    pairs = list(found[["query", "other", "view"]].itertuples(index=False))
    keys = [f"{shas[q].decode()}:{shas[o].decode()}:{view}" for q, o, view in pairs]
    todo = []
    try:
        for k, (key, (q, o, view)) in enumerate(zip(keys, pairs, strict=True)):
            record = state.get(key)
            if record is None:
                todo.append((k, str(root / paths[q].decode("utf-8", "surrogateescape")),
                             str(root / paths[o].decode("utf-8", "surrogateescape")), int(view)))
            else:
                scores[k], phases[k] = float(record["similarity"]), float(record["phase"])
        for k, (score, phase) in near_dup_store.run_batches(_similarities, todo, processes, _CONFIRM_BATCH):
            # each as it comes: a killed run keeps them
            state.append({"pair": keys[k], "similarity": score, "phase": phase})
            scores[k], phases[k] = score, phase
        state.compact(keep=[(key,) for key in keys])
    finally:
        state.close()
    return scores, phases, len(todo)


def _similarities(batch: list[tuple[int, str, str, int]]) -> list[tuple[int, tuple[float, float]]]:
    return [(k, similarity(image_signature.grey(Path(a)), image_signature.grey(Path(b)), view))
            for k, a, b, view in batch]


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
