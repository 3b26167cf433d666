"""Harmonized metadata parked on disk by ``isic_id`` range, then combined a range at a time.

Combining needs every source's row of an id together, not every row of every source: the rows are
parked in an anonymous temporary file (gone with the process, even a killed one), each harmonized
chunk cut into buckets of consecutive ids (``ISIC_`` + 7 digits: 64 buckets of 156,250 numbers),
and :meth:`HarmonizedRanges.combined` hands out the combined rows of a run of buckets at a time
(about ``RANGE_ROWS``), sorted by ``isic_id``. Only a range is ever in memory.

One whole-table fact is needed before the first range: each column's type in the whole combined
table (a source without a column, or whose column is empty, makes integers floats and texts
objects when the sources are stacked). It is taken from one sample row per source holding a
present value of every column that source ever had one for, stacked exactly as the whole frames were.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from .combine import Combined, combine_sources

BUCKETS = 64
_BUCKET_WIDTH = 10_000_000 // BUCKETS
RANGE_ROWS = 20_000  # rows combined at a time (a range is whole buckets: can be more)

Cast = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class _Source:
    name: str
    cast: Cast
    template: pd.DataFrame | None = None  # no rows, the columns and dtypes as harmonized
    sample: pd.DataFrame | None = None  # one row: a present value of every column that has one
    rows: int = 0


@dataclass
class HarmonizedRanges:
    """Every source's harmonized rows on disk, by id bucket; sources added in catalog order."""

    folder: Path
    sources: list[_Source] = field(default_factory=list)
    parts: list[list[tuple[int, int]]] = field(default_factory=lambda: [[] for _ in range(BUCKETS)])
    bucket_rows: np.ndarray = field(default_factory=lambda: np.zeros(BUCKETS, dtype=np.int64))
    handle: IO[bytes] | None = None

    def __enter__(self) -> HarmonizedRanges:
        self.handle = tempfile.TemporaryFile(dir=self.folder, prefix=".tmp-harmonized-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()

    def source(self, name: str, cast: Cast | None = None) -> int:
        """Start a source (catalog order); ``cast`` gives its chunks their final types when combined."""
        self.sources.append(_Source(name, cast or (lambda frame: frame)))
        return len(self.sources) - 1

    def add(self, index: int, frame: pd.DataFrame) -> None:
        """Park a harmonized chunk of source ``index``, cut by id bucket (ids are canonical)."""
        assert self.handle is not None
        source = self.sources[index]
        if source.template is None:
            source.template = frame.iloc[:0]
        if not len(frame):
            return
        source.rows += len(frame)
        self._sample(source, frame)
        numbers = frame["isic_id"].str.slice(5, 12).astype(np.int64).to_numpy()
        buckets = numbers // _BUCKET_WIDTH
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
        for bucket in range(BUCKETS):
            start, end = bounds[bucket], bounds[bucket + 1]
            if start == end:
                continue
            offset = self.handle.tell()
            pickle.dump(frame.iloc[order[start:end]], self.handle, protocol=pickle.HIGHEST_PROTOCOL)
            self.parts[bucket].append((index, offset))
            self.bucket_rows[bucket] += end - start

    @staticmethod
    def _sample(source: _Source, frame: pd.DataFrame) -> None:
        if source.sample is None:
            source.sample = frame.iloc[[0]].reset_index(drop=True)
        for name in source.sample.columns[source.sample.isna().to_numpy()[0]]:
            present = np.flatnonzero(frame[name].notna().to_numpy())
            if len(present):
                source.sample[name] = frame[name].iloc[present[:1]].reset_index(drop=True)

    def _final(self, source: _Source, frame: pd.DataFrame | None) -> pd.DataFrame:
        if frame is None:
            frame = source.template if source.template is not None else pd.DataFrame({"isic_id": []})
        return source.cast(frame)

    def whole_dtypes(self) -> dict[str, Any]:
        """Each column's type in the whole combined table (see the module docstring)."""
        samples = [self._final(s, s.sample).reset_index(drop=True) for s in self.sources]
        if not samples:
            return {}
        stacked = pd.concat(samples, ignore_index=True, sort=False)
        return {str(name): dtype for name, dtype in stacked.dtypes.items()}

    def combined(self) -> Iterator[Combined]:
        """The combined rows a range of ids at a time, in id order, each range sorted by ``isic_id``;
        an empty combination when there are no rows at all (the tables still get their columns)."""
        assert self.handle is not None
        dtypes = self.whole_dtypes()
        names = [s.name for s in self.sources]
        bucket = 0
        given = False
        while bucket < BUCKETS:
            last = bucket
            total = int(self.bucket_rows[bucket])
            while last + 1 < BUCKETS and total + int(self.bucket_rows[last + 1]) <= RANGE_ROWS:
                last += 1
                total += int(self.bucket_rows[last])
            if total:
                pieces: list[list[pd.DataFrame]] = [[] for _ in self.sources]
                for b in range(bucket, last + 1):
                    for index, offset in self.parts[b]:
                        self.handle.seek(offset)
                        pieces[index].append(pickle.load(self.handle))  # written by this process above
                frames = [(name, self._final(source, _joined(parts)))
                          for name, source, parts in zip(names, self.sources, pieces, strict=True)]
                yield _sorted(combine_sources(frames, dtypes=dtypes))
                given = True
            bucket = last + 1
        self.handle.seek(0, 2)  # appends, if any, go on at the end
        if not given:
            frames = [(s.name, self._final(s, None)) for s in self.sources]
            yield _sorted(combine_sources(frames, dtypes=dtypes))


def _joined(parts: list[pd.DataFrame]) -> pd.DataFrame | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _sorted(combined: Combined) -> Combined:
    combined.frame = combined.frame.sort_values("isic_id", kind="stable").reset_index(drop=True)
    return combined
