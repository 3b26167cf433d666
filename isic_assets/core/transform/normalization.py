"""The transform stage's results read back from its state: current outputs and normalization.json.

Both are computed from the state records, not from the files, so they are the same whichever engine
and however many machines produced the records, in whatever order they came back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..scan_state import SqliteLog
from .image_ops import TRANSFORM_CODE_VERSION, TransformSettings
from .records import STATUS_OK, JobTable, TransformedOutputs, TransformJob, decoded


def current_records(jobs: Sequence[TransformJob], state: SqliteLog, fingerprint: str) -> Iterator[dict]:
    """The ``ok`` record of every job whose record is current, in id order.

    One pass over the state in key order, merged with the jobs sorted by id once (an index of
    8 bytes a job; the ids turned into strings a chunk at a time), instead of a look-up per job.
    SQLite orders the keys by their UTF-8 bytes, as the sorted bytes column and Python's ``<`` on
    strings do."""
    table = JobTable.of(jobs)
    order = np.argsort(table.isic_ids, kind="stable")
    wanted = _in_order(table.isic_ids, order)
    job = next(wanted, None)
    for record in state.values():
        isic_id = record["isic_id"]
        while job is not None and job[0] < isic_id:
            job = next(wanted, None)
        if job is None:
            return
        if job[0] == isic_id and record.get("status") == STATUS_OK \
                and record.get("src_sha256") == table.sha256_at(job[1]) and record.get("fingerprint") == fingerprint:
            yield record


def _in_order(ids: np.ndarray, order: np.ndarray, rows: int = 65_536) -> Iterator[tuple[str, int]]:
    """``(id, position)`` of every job in id order."""
    for start in range(0, len(order), rows):
        positions = order[start : start + rows]
        yield from zip(decoded(ids[positions]), positions.tolist(), strict=True)


def outputs_and_normalization(jobs: Sequence[TransformJob], state: SqliteLog, settings: TransformSettings,
                              fingerprint: str) -> tuple[TransformedOutputs, dict[str, Any]]:
    """The current outputs and ``normalization.json``'s content (per-channel mean and population std
    over every current output, from the exact integer sums), from one pass over the state: each
    pass parses every record, seconds at 400,000 images."""
    sums = _Sums()
    outputs = TransformedOutputs((sums.add(record) for record in current_records(jobs, state, fingerprint)),
                                 capacity=len(jobs))
    return outputs, sums.normalization(settings, fingerprint)


class _Sums:
    """Exact integer sums over the records added.

    Variance is (n * sumsq - sum^2) / n^2 in Python integers, exact, then one float division: no
    catastrophic cancellation however many images. Padding pixels count: they are what the network
    sees.
    """

    channels = 3

    def __init__(self) -> None:
        self.sums, self.squares, self.count, self.images = [0] * self.channels, [0] * self.channels, 0, 0

    def add(self, record: dict) -> dict:
        self.images += 1
        self.count += record["pixels"]
        for c in range(self.channels):
            self.sums[c] += record["sum"][c]
            self.squares[c] += record["sumsq"][c]
        return record

    def normalization(self, settings: TransformSettings, fingerprint: str) -> dict[str, Any]:
        sums, squares, count, images = self.sums, self.squares, self.count, self.images
        result: dict[str, Any] = {
            "channels": ["R", "G", "B"],
            "image_count": images,
            "pixel_count": count,
            "settings": asdict(settings),
            "fingerprint": fingerprint,
            "transform_code_version": TRANSFORM_CODE_VERSION,
            "scope": "every pixel of every stored output (padding included), before JPEG encoding",
        }
        if count == 0:
            return {**result, "mean": None, "std": None, "mean_255": None, "std_255": None}
        mean_255 = [s / count for s in sums]
        std_255 = [math.sqrt((count * q - s * s) / (count * count)) for s, q in zip(sums, squares, strict=True)]
        return {
            **result,
            "mean": [m / 255.0 for m in mean_255],
            "std": [s / 255.0 for s in std_255],
            "mean_255": mean_255,
            "std_255": std_255,
        }
