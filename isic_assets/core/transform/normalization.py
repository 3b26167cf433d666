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
from .records import STATUS_OK, TransformedOutputs, TransformJob, job_columns


def current_records(jobs: Sequence[TransformJob], state: SqliteLog, fingerprint: str) -> Iterator[dict]:
    """The ``ok`` record of every job whose record is current, in id order.

    One pass over the state in key order, merged with the jobs sorted by id once (an index of
    8 bytes a job), instead of a look-up per job."""
    ids, sha256_at = job_columns(jobs)
    order = np.argsort(ids, kind="stable")
    at = 0
    for record in state.values():
        isic_id = record["isic_id"]
        while at < len(order) and ids[order[at]] < isic_id:
            at += 1
        if at == len(order):
            return
        position = order[at]
        if ids[position] == isic_id and record.get("status") == STATUS_OK \
                and record.get("src_sha256") == sha256_at(position) and record.get("fingerprint") == fingerprint:
            record["isic_id"] = ids[position]  # the job's string, not a copy per output
            yield record


def outputs_and_normalization(jobs: Sequence[TransformJob], state: SqliteLog, settings: TransformSettings,
                              fingerprint: str) -> tuple[TransformedOutputs, dict[str, Any]]:
    """The current outputs and ``normalization.json``'s content (per-channel mean and population std
    over every current output, from the exact integer sums), from one pass over the state: each
    pass parses every record, seconds at 400,000 images."""
    sums = _Sums()
    outputs = TransformedOutputs(sums.add(record) for record in current_records(jobs, state, fingerprint))
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
