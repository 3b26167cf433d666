"""The near-duplicate step's per-image state on disk: window signatures and a thumbnail, by sha256.

One append-only file of fixed-size binary records: the sha256 (64 ASCII bytes), the 64-bit keys
(big-endian) and 256-bit hashes of every window, and the 64x64 grey thumbnail (about 5.6 KB an image).
Nothing but the sha256 column is held in memory: the search and the quick check read the rows they
need through a short-lived memory map (mapped pages leave the process with the map), so memory stays
flat as the archive grows. A run killed mid-append leaves a torn last record: it is cut off on the
next open and that image is hashed again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_open
from . import image_signature, near_dup_quick_check

Log = Callable[[str], None]
_APPEND_BATCH = 1_000
_COPY_ROWS = 20_000


class SignatureStore:
    """Per-image records by sha256 in ``path`` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        views = len(image_signature.VIEWS)
        side = near_dup_quick_check.THUMB_SIDE
        self.path = path
        self.dtype = np.dtype([("sha256", "S64"), ("keys", ">u8", (views,)),
                               ("fine", "u1", (views, image_signature.FINE_BYTES)), ("thumb", "u1", (side, side))])
        shas = np.zeros(0, dtype="S64")
        if path.is_file():
            size = path.stat().st_size
            whole = size - size % self.dtype.itemsize
            if whole != size:
                with path.open("r+b") as handle:
                    handle.truncate(whole)
            if whole:
                shas = np.array(self._map()["sha256"])
        self._shas = [shas]
        self._index = pd.Index(shas)

    def __len__(self) -> int:
        return len(self._index)

    def _map(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    def add_missing(self, images: pd.DataFrame, root: Path, log: Log) -> tuple[int, set[str]]:
        """Hash every image whose sha256 has no record; returns how many, and the ids that do not decode."""
        missing = images[self._index.get_indexer(images["sha256"].str.encode("ascii")) < 0]
        missing = missing.drop_duplicates("sha256")
        unreadable: set[str] = set()
        batch: list[tuple] = []
        hashed = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            for isic_id, image, sha in missing[["isic_id", "image", "sha256"]].itertuples(index=False):
                if len(sha) > 64:
                    raise ValueError(f"{isic_id}: sha256 {sha!r} is longer than 64 characters")
                try:
                    pixels = image_signature.grey(root / image)
                except image_signature.UnreadableImageError as exc:
                    log(f"near-duplicates: {isic_id} skipped: {exc}")
                    unreadable.add(isic_id)
                    continue
                keys, fine = image_signature.view_signatures(pixels)
                batch.append((sha.encode("ascii"), keys, fine, near_dup_quick_check.thumbnail(pixels)))
                hashed += 1
                if len(batch) == _APPEND_BATCH:
                    self._append(handle, batch)
                    batch = []
            self._append(handle, batch)
        self._index = pd.Index(np.concatenate(self._shas))
        self._shas = [self._index.to_numpy()]
        return hashed, unreadable

    def _append(self, handle, batch: list[tuple]) -> None:
        if batch:
            new = np.array(batch, dtype=self.dtype)
            handle.write(new.tobytes())
            handle.flush()
            self._shas.append(new["sha256"])

    def rows(self, shas: Iterable[str]) -> np.ndarray:
        """The record row of each sha256, in order; a KeyError when one has none."""
        rows = self._index.get_indexer(pd.Index(list(shas)).str.encode("ascii"))
        if (rows < 0).any():
            raise KeyError("a sha256 has no signature record")
        return rows

    def read(self, rows: np.ndarray, field: str) -> np.ndarray:
        """One field (``keys``, ``fine`` or ``thumb``) of ``rows``, copied out of a map that is closed again."""
        mapped = self._map()
        try:
            values = np.array(mapped[field][np.asarray(rows, dtype=np.int64)])
        finally:
            del mapped
        return values.astype(np.uint64) if field == "keys" else values

    def whole(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys (uint64) and 256-bit hashes of the whole picture (window 0) of ``rows``, read in slices."""
        keys = np.empty(len(rows), dtype=np.uint64)
        fine = np.empty((len(rows), image_signature.FINE_BYTES), dtype=np.uint8)
        for lo in range(0, len(rows), _COPY_ROWS):
            part = rows[lo : lo + _COPY_ROWS]
            keys[lo : lo + len(part)] = self.read(part, "keys")[:, 0]
            fine[lo : lo + len(part)] = self.read(part, "fine")[:, 0]
        return keys, fine

    def keep_only(self, shas: Iterable[str]) -> None:
        """Rewrite the file without records of other images once those are half of it."""
        keep = self._index.isin(pd.Index(list(shas)).str.encode("ascii"))
        keep &= ~self._index.duplicated()
        if len(self._index) <= max(64, 2 * int(keep.sum())):
            return
        kept = np.nonzero(keep)[0]
        with atomic_open(self.path, "wb") as handle:
            for lo in range(0, len(kept), _COPY_ROWS):
                mapped = self._map()
                handle.write(np.array(mapped[kept[lo : lo + _COPY_ROWS]]).tobytes())
                del mapped
        self._index = pd.Index(self._index.to_numpy()[kept])
        self._shas = [self._index.to_numpy()]
