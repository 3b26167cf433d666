"""Candidate search for near-duplicates: locality-sensitive hashing of the 256-bit window hashes.

Every image's whole picture is the index (n entries); every window of every image queries it, read
in chunks from the signature store, so a copy cropped by up to 10% (whose whole picture matches one
window of its original) meets its original whichever of the two is the copy.

``TABLES`` tables each take ``TABLE_BITS`` bits drawn at random (a fixed seed) from the 256; a query
reads the index entries with the same value in any table. A copy differs from the matching window
in few bits (at most ``max_fine_distance``, mostly far fewer), so it shares all bits of some table
with high probability; look-alike lesions share the bits of a table far less often. Unlike the exact
multi-index search on the 64-bit keys this step used before, the buckets are narrow enough that the
entries read between different images grow far more slowly with n: on look-alike lesions about
1e-2 x n^2 entries for 32 tables of 20 bits, against 0.55 x n^2 before (docs/PERFORMANCE.md 13).

Each entry read is kept when the window's 64-bit key is within ``max_distance`` of the whole
picture's key and its 256-bit hash within ``max_fine_distance``, the same test as before. Then each
image keeps at most ``closest`` partners (the closest by the 256-bit distance): look-alikes can crowd
round one image, a copy is nearly always its closest, and the cap bounds the confirmations at
``closest x n`` however crowded the archive is. The cap is applied twice: per chunk of queries
(each windowed image keeps its closest partners, so the hits held stay about ``closest x n``) and
over all pairs at the end (a pair stays when it is among the closest of either image).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

TABLES = 32  # crops reaching the candidates: 86% with 16 tables, 92% with 32 (no key limit; PERFORMANCE 13)
TABLE_BITS = 20
CLOSEST = 4  # partners kept per image, closest first
_SEED = 20_240_612  # the bit draws are fixed: the same archive gives the same candidates on every run
_CHUNK_READS = 250_000  # bucket entries read at once (about 10 arrays of 2-8 MB while they are checked)

# windows(lo, hi): keys (images x views, uint64) and 256-bit hashes (images x views x 32) of images lo..hi.
Windows = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (numpy 2's bitwise_count where present, a byte table otherwise)."""
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return count(values).astype(np.int64)
    table = np.array([i.bit_count() for i in range(256)], dtype=np.int64)
    flat = np.ascontiguousarray(values, dtype=np.uint64)
    return table[flat.view(np.uint8)].reshape(*flat.shape, 8).sum(axis=-1)


def table_bits(tables: int = TABLES, bits: int = TABLE_BITS) -> np.ndarray:
    """The bit positions (of 256) each table reads, ``tables x bits``, from the fixed seed."""
    rng = np.random.default_rng(_SEED)
    return np.stack([rng.choice(256, bits, replace=False) for _ in range(tables)])


def _codes(fine: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The table value of each 256-bit hash (``fine``: ... x 32 bytes), an int64 per hash."""
    code = np.zeros(fine.shape[:-1], dtype=np.int64)
    for position in positions:
        byte, shift = divmod(int(position), 8)
        code = (code << 1) | ((fine[..., byte] >> (7 - shift)) & 1)
    return code


def search(whole_keys: np.ndarray, whole_fine: np.ndarray, windows: Windows, *, max_distance: int,
           max_fine_distance: int, closest: int = CLOSEST, tables: int = TABLES, bits: int = TABLE_BITS,
           chunk_images: int = 2_000) -> tuple[pd.DataFrame, int]:
    """Candidate pairs and the number of bucket entries read.

    ``whole_keys`` (n, uint64) and ``whole_fine`` (n x 32, uint8) are the whole-picture signatures;
    ``windows(lo, hi)`` returns the keys and 256-bit hashes of every window of images ``lo..hi``.
    Columns ``query, other, view, fine``: the whole picture of ``query`` matched window ``view`` of
    ``other`` (``query != other``); one row per unordered pair, its closest window.
    """
    n = len(whole_fine)
    if n >= MAX_IMAGES:
        raise ValueError(f"the near-duplicate search takes fewer than {MAX_IMAGES:,} images, got {n:,}")
    positions = table_bits(tables, bits)
    whole_words = np.ascontiguousarray(whole_fine).view(np.uint64)  # n x 4
    index = []
    for table in positions:  # per table: the index rows sorted by value, and where each value's run starts
        values = _codes(whole_fine, table)
        # int32 boundaries, one array (a value's run ends where the next starts): 4 MB a table; int64
        # counts and starts took 16 MB, 512 MB for 32 tables.
        bounds = np.zeros((1 << bits) + 1, dtype=np.int32)
        np.cumsum(np.bincount(values, minlength=1 << bits), out=bounds[1:])
        index.append((np.argsort(values, kind="stable").astype(np.int32), bounds))
    found: list[tuple[np.ndarray, ...]] = []
    reads = 0
    for lo in range(0, n, chunk_images):
        hits: list[tuple[np.ndarray, ...]] = []
        hi = min(n, lo + chunk_images)
        keys, fine = windows(lo, hi)
        views = keys.shape[1]
        flat_keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)
        flat_words = np.ascontiguousarray(fine).view(np.uint64).reshape(len(flat_keys), -1)
        for table, (order, bounds) in zip(positions, index, strict=True):
            values = _codes(fine, table).reshape(-1)
            starts = bounds[values]
            sizes = bounds[values + 1] - starts
            reads += int(sizes.sum())
            for a, b in _read_chunks(sizes):
                query, entry = _read(np.arange(a, b), starts[a:b], sizes[a:b], order)
                image = lo + query // views
                keep = entry != image
                query, entry, image = query[keep], entry[keep], image[keep]
                keep = popcount64(flat_keys[query] ^ whole_keys[entry]) <= max_distance
                query, entry, image = query[keep], entry[keep], image[keep]
                distance = popcount64(flat_words[query] ^ whole_words[entry]).sum(axis=1)
                keep = distance <= max_fine_distance
                if keep.any():
                    hits.append((entry[keep].astype(_INDEX), image[keep].astype(_INDEX),
                                 (query[keep] % views).astype(_SMALL), distance[keep].astype(_SMALL)))
        if hits:  # each windowed image of the chunk keeps its closest partners: memory stays ~closest x n
            found.append(_closest_in_chunk(*(np.concatenate(column) for column in zip(*hits, strict=True)),
                                           closest))
    # The index (134 MB of run bounds and 4 bytes an image a table) is not needed past the loop: freed
    # before the partner caps, their temporaries take its place instead of stacking on it.
    del index
    columns = ["query", "other", "view", "fine"]
    if not found:
        return pd.DataFrame(columns=columns, dtype=np.int64), reads
    query, other, view, distance = (np.concatenate(column) for column in zip(*found, strict=True))
    del found
    rows = _kept_pairs(query, other, view, distance, closest)
    return pd.DataFrame({"query": query[rows].astype(np.int64), "other": other[rows].astype(np.int64),
                         "view": view[rows].astype(np.int64), "fine": distance[rows].astype(np.int64)},
                        columns=columns), reads


# Packed sort keys take an image position in 24 bits (16.7 million images) and a distance in 10 bits.
_INDEX, _SMALL = np.int32, np.int16
MAX_IMAGES = 1 << 24


def _closest_in_chunk(query: np.ndarray, other: np.ndarray, view: np.ndarray, distance: np.ndarray,
                      closest: int) -> tuple[np.ndarray, ...]:
    """The hits of one chunk of windowed images: one per (query, other), its smallest distance then
    view (the first found on ties), and for each ``other`` its ``closest`` nearest, in that order."""
    order = np.lexsort((view, distance))  # stable: ties keep the order they were found in
    pair = (query.astype(np.uint64)[order] << 24) | other.astype(np.uint64)[order]
    _, first = np.unique(pair, return_index=True)
    order = order[np.sort(first)]
    by_other = np.lexsort((np.arange(len(order)), other[order]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_other] = _rank_in_runs(other[order][by_other])
    order = order[rank < closest]
    return query[order], other[order], view[order], distance[order]


def _kept_pairs(query: np.ndarray, other: np.ndarray, view: np.ndarray, distance: np.ndarray,
                closest: int) -> np.ndarray:
    """The rows to keep of every chunk's hits, in the order of their pairs (lower position first):
    one per unordered pair (its smallest distance, then smallest view, then the first found), and
    only pairs among the ``closest`` nearest partners of either image. One packed integer key is
    sorted, built and cut in place and each temporary dropped once used: at 401,059 images (1.45
    million hits) this took +222 MB with the pair's columns sorted apart, about 60 now; the pandas
    sorts of several columns it replaced peaked near 700 MB."""
    key = np.minimum(query, other).astype(np.uint64)
    key <<= np.uint64(24)
    key |= np.maximum(query, other).astype(np.uint64)
    key <<= np.uint64(10)
    key |= distance.astype(np.uint64)
    key <<= np.uint64(6)
    key |= view.astype(np.uint64)
    ordered = np.argsort(key, kind="stable")
    pair = key[ordered]
    del key
    pair >>= np.uint64(16)  # low << 24 | high, sorted
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(pair[1:], pair[:-1], out=first[1:])
    rows = ordered[first]  # sorted by (low, high), unique pairs
    del ordered
    pair = pair[first]
    high = (pair & np.uint64(_MAX_POSITION)).astype(np.int32)
    pair >>= np.uint64(24)
    low = pair.astype(np.int32)
    del pair
    return rows[_closest_pairs(low, high, distance[rows], closest)]


_MAX_POSITION = MAX_IMAGES - 1


def _closest_pairs(low: np.ndarray, high: np.ndarray, distance: np.ndarray, closest: int) -> np.ndarray:
    """Which pairs (unique, sorted by ``low, high``) are among the ``closest`` nearest partners of either
    image, nearest by distance, then by the pair (their positions, in ``low, high`` order)."""
    count = len(low)
    if closest <= 0:
        return np.zeros(0, dtype=np.int64)
    key = distance.astype(np.uint64)
    key <<= np.uint64(24)
    key |= low.astype(np.uint64)
    key <<= np.uint64(24)
    key |= high.astype(np.uint64)
    nearest = np.argsort(key)  # the keys are unique: each pair once
    del key
    # Each pair's turn (its place in ``nearest``) under both of its images, sorted by image then turn:
    # a pair is among an image's ``closest`` nearest when the entry ``closest`` places before it
    # belongs to another image.
    by_image = np.empty(2 * count, dtype=np.uint64)
    for half, side in enumerate((low, high)):
        part = by_image[half * count : (half + 1) * count]
        part[:] = side[nearest]
        part <<= np.uint64(32)
        part |= np.arange(count, dtype=np.uint64)
    by_image.sort()
    words = by_image.view(np.uint32)  # little-endian: (turn, image) word pairs, no copy
    image, turn = (words[1::2], words[0::2]) if np.little_endian else (words[0::2], words[1::2])
    near = np.ones(2 * count, dtype=bool)
    if closest < 2 * count:
        np.not_equal(image[closest:], image[:-closest], out=near[closest:])
    kept = np.zeros(count, dtype=bool)
    kept[nearest[turn[near]]] = True
    return np.flatnonzero(kept)


def _rank_in_runs(values: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... within each run of equal neighbours of ``values``."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return np.arange(len(values)) - np.repeat(starts, np.diff(np.r_[starts, len(values)]))


def _read_chunks(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive query ranges that read at most about ``_CHUNK_READS`` entries each."""
    ends = np.searchsorted(np.cumsum(sizes), np.arange(_CHUNK_READS, int(sizes.sum()) + 1, _CHUNK_READS),
                           side="right")
    edges = sorted({0, len(sizes), *(int(e) for e in ends if 0 < e < len(sizes))})
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _read(queries: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
          order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, index row) pair sharing a bucket (``starts``/``sizes``: each query's run in ``order``)."""
    total = int(sizes.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    offsets = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(queries, sizes), order[np.repeat(starts, sizes) + offsets]
