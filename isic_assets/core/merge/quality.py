"""Data-quality measurements behind the asset checks, computed on plain DataFrames."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

LABEL_COLUMN = "benign_malignant"
GROUPING_COLUMNS = ("patient_id", "lesion_id")


def missing_percentages(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, float]:
    """Percentage of rows with no value per column; empty strings count as missing.

    The merged CSV writes every missing value as an empty cell, whatever the source spelled it, so
    one rule covers every year (``unknown`` in 2020 ``diagnosis`` is a label and is not counted).
    """
    columns = columns if columns is not None else list(frame.columns)
    if len(frame) == 0:
        return dict.fromkeys(columns, 0.0)
    result = {}
    for column in columns:
        values = frame[column]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        result[column] = round(100.0 * float(missing.mean()), 3)
    return result


def share_without_grouping_key(frame: pd.DataFrame) -> float:
    """Percentage of rows with neither a patient nor a lesion id: each is its own split group."""
    if len(frame) == 0:
        return 0.0
    present = [c for c in GROUPING_COLUMNS if c in frame.columns]
    if not present:
        return 100.0
    has_key = pd.Series(False, index=frame.index)
    for column in present:
        has_key |= frame[column].fillna("").astype(str).str.strip() != ""
    return round(100.0 * float((~has_key).mean()), 3)


def class_counts(frame: pd.DataFrame, column: str = LABEL_COLUMN) -> dict[str, int]:
    """Rows per label value, with missing labels counted under ``unlabelled``."""
    if column not in frame.columns or len(frame) == 0:
        return {}
    values = frame[column].fillna("").astype(str).replace("", "unlabelled")
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


CHECK_BATCH = 4_000
# Header parsing is CPU-bound Python (Pillow's marker walk): two processes halve it on two cores.
CHECK_PROCESSES = min(2, os.cpu_count() or 1)

# One batch of rows to check: its number in the table's order, where the images are, and per row the
# id, the image path and the recorded size (None when none is compared).
_Batch = tuple[int, Path, list[str], list[str], list[object]]


def unreadable_images(table: pd.DataFrame | Iterable[pd.DataFrame], base: Path, size_column: str | None = None,
                      processes: int = 1) -> list[dict[str, str]]:
    """Rows whose ``image`` file is missing, has another size than recorded, or whose header fails.

    A header read (Pillow ``open``, tens of microseconds) proves the file is an image of the
    recorded kind without decoding it again: the full decode already happened when it was written.
    ``table`` is the whole table or consecutive chunks of its rows (``layout.read_table_chunks``).
    Batches of ``CHECK_BATCH`` rows are checked in ``processes`` forked workers (one open and one
    ``fstat`` a file), each batch sent to a worker as Python values when it is its turn: neither this
    process nor a worker ever holds the table, which is read as the batches go. Problems come back
    in the table's order.
    """
    batches = _batches([table] if isinstance(table, pd.DataFrame) else table, Path(base), size_column)
    first = list(itertools.islice(batches, 2))
    if processes <= 1 or len(first) <= 1:
        return [problem for batch in itertools.chain(first, batches) for problem in _check_batch(batch)]
    from ..compute.fork_pool import forked_results

    found: dict[int, list[dict[str, str]]] = {}
    queue = _Queue(itertools.chain(first, batches))
    for checked in forked_results(_check_batches, queue, processes, "image check"):  # type: ignore[arg-type]
        found.update((number, problems) for number, problems in checked if problems)
    return [problem for number in sorted(found) for problem in found[number]]


def _batches(chunks: Iterable[pd.DataFrame], base: Path, size_column: str | None) -> Iterator[_Batch]:
    """Every ``CHECK_BATCH`` rows of the chunks as Python values, numbered in order."""
    number = 0
    for chunk in chunks:
        for start in range(0, len(chunk), CHECK_BATCH):
            rows = chunk.iloc[start : start + CHECK_BATCH]
            sizes = rows[size_column].tolist() if size_column else [None] * len(rows)
            yield number, base, rows["isic_id"].tolist(), rows["image"].tolist(), sizes
            number += 1


class _Queue:
    """The batches as the queue the fork pool takes (``popleft``, truth value), drawn when taken."""

    def __init__(self, batches: Iterator[_Batch]) -> None:
        self.batches = batches
        self.next = next(self.batches, None)

    def __bool__(self) -> bool:
        return self.next is not None

    def popleft(self) -> list[_Batch]:
        if self.next is None:
            raise IndexError("pop from an empty queue")
        taken, self.next = self.next, next(self.batches, None)
        return [taken]


def _check_batches(batches: list[_Batch]) -> list[tuple[int, list[dict[str, str]]]]:
    return [(batch[0], _check_batch(batch)) for batch in batches]


def _check_batch(batch: _Batch) -> list[dict[str, str]]:
    from PIL import Image, UnidentifiedImageError

    _, base, ids, images, sizes = batch
    problems = []
    for isic_id, image, recorded in zip(ids, images, sizes, strict=True):
        reason = ""
        try:
            # Non-blocking: a FIFO in an image's place must not hang the check (no effect on files).
            descriptor = os.open(os.path.join(base, str(image)), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            reason = "missing file"
        except IsADirectoryError:
            reason = "not a regular file"
        except OSError as exc:
            reason = f"not readable: {exc}"
        else:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):  # a folder opens too; only a file becomes a file object
                os.close(descriptor)
                reason = "not a regular file"
            elif (expected := _recorded_size(recorded)) is not None and info.st_size != expected:
                os.close(descriptor)
                reason = (f"size {info.st_size} != recorded {recorded}" if expected >= 0
                          else f"recorded size {recorded!r} is not a whole number of bytes")
            else:
                with open(descriptor, "rb") as handle:
                    try:
                        with Image.open(handle) as img:
                            img.size  # noqa: B018 - the header parse is the check
                    except UnidentifiedImageError:
                        reason = "not readable: Pillow does not recognise it as an image"
                    except OSError as exc:
                        reason = f"not readable: {exc}"
        if reason:
            problems.append({"isic_id": str(isic_id), "image": str(image), "reason": reason})
    return problems


def _recorded_size(value: object) -> int | None:
    """The recorded byte count; None when none is recorded (empty or NA); -1 when it is not a count."""
    if value is None or (not isinstance(value, str) and pd.isna(value)) or not str(value).strip():
        return None
    try:
        size = int(str(value).strip())
    except ValueError:
        return -1
    return size if size >= 0 else -1

