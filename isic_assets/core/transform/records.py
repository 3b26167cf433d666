"""What ``transformed_images`` remembers: the job and report types, state records, worker journals.

``_state/transform.sqlite`` holds one record per image (``scan_state.SqliteLog``): inputs
(src_sha256, settings fingerprint), output facts and its per-channel pixel sums. The earlier
``_state/transform.jsonl`` is imported into it once and deleted. While a run goes on, every worker process (or Dask
worker thread) appends to its own journal ``_state/transform.worker-<host>-<pid>-<thread>.jsonl``:
"started <id>" before an image and its full record after, flushed to the kernel each time, so a
killed run loses nothing it finished; ``absorb_journals`` folds them into the state.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import layout
from ..scan_state import SqliteLog, iter_jsonl

IMAGES_DIR = "images"
STATE_DIR = "_state"
STATE_FILE = "transform.sqlite"
LEGACY_STATE_FILE = "transform.jsonl"  # the state before it moved to SQLite: imported once
OUTPUT_SUFFIX = ".jpg"
JOURNAL_PREFIX = "transform.worker-"

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"  # undecodable bytes: remembered, not retried until they change
STATUS_FAILED = "failed"  # unreadable source, unexpected error, crash: reported, retried next run
STATUS_STARTED = "started"  # journal only
_OK_FIELDS = ("src_sha256", "fingerprint", "out", "out_bytes", "out_sha256", "width", "height", "sum", "sumsq",
              "pixels")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # what a job's src_sha256 and a record's hashes must be (fullmatch)
# A sha256 held as its 32 raw bytes: half its 64 hex characters. A void type, not fixed-width bytes,
# which would drop a digest's trailing zero bytes.
DIGEST = np.dtype("V32")


@dataclass(frozen=True)
class TransformJob:
    """One image to transform: its id (output name), source file, source sha256 and EXIF orientation."""

    isic_id: str
    src: Path
    src_sha256: str
    exif_orientation: int = 1


class JobTable(Sequence[TransformJob]):
    """The jobs of a whole archive as four numpy columns, each ``TransformJob`` made when it is asked for.

    A list of 400,000 jobs, each with its own ``Path``, costs about 250 MB, and even the ids alone as
    Python strings about 70 bytes a job; here the ids and image names are UTF-8 bytes of a fixed width
    (an ISIC id 12 bytes, an image name about 25), each hash its 32 raw bytes, and no Python object is
    held per job: about 75 bytes a job (docs/PERFORMANCE.md "ISIC 2024 at archive scale"). The step's
    process forks its workers while it holds this table, so every worker counts it too.

    ``read`` builds it from the merged table, a chunk of rows at a time. An id that is not a
    string, or a value that fixed-width bytes cannot hold as it is (one ending in a NUL character),
    is refused here with the message ``transform_images`` gives for it; every other check of the
    jobs is ``transform_images``'s. A hash that is not 64 lower-case hex digits cannot be held as raw
    bytes: it is kept as given in ``bad_sha256`` (by position, usually empty) for that check to name.
    """

    def __init__(self, base: Path, isic_ids: Sequence[str], images: Sequence[str], sha256: Sequence[str],
                 exif_orientation: Sequence[str | int]) -> None:
        self.base = Path(base)
        isic_ids, sha256 = list(isic_ids), list(sha256)
        _refuse_unstorable(isic_ids, sha256)
        self.isic_ids = _utf8_column(isic_ids)
        self.images = _utf8_column(images)
        self.sha256, self.bad_sha256 = digest_column(sha256)
        # ``or 1``: an empty cell means no EXIF orientation, as upright.
        self.exif = np.asarray([int(v or 1) for v in exif_orientation], dtype=np.int64)
        if not len(self.isic_ids) == len(self.images) == len(self.sha256) == len(self.exif):
            raise ValueError("every column of a JobTable needs one value per job")

    @classmethod
    def read(cls, base: Path, path: Path, rows: int = layout.CHUNK_ROWS) -> JobTable:
        """The jobs of a table with the columns isic_id, image, sha256 and exif_orientation (the merged
        metadata.csv), read ``rows`` rows at a time, twice: once for the row count and the width of
        each column, then into columns made at their final size. Only the table and one chunk are
        ever held: gathering the chunks' columns and joining them held the table twice, and what was
        freed then stayed in the heap that every forked worker inherits."""
        columns = ("isic_id", "image", "sha256", "exif_orientation")
        count, widths = layout.row_count_and_widths(path, columns[:2], rows)
        table = cls(base, [], [], [], [])
        table.isic_ids, table.images = (np.zeros(count, dtype=f"S{width}") for width in widths)
        table.sha256, table.exif = np.zeros(count, dtype=DIGEST), np.zeros(count, dtype=np.int64)
        at = 0
        for chunk in layout.read_table_chunks(path, columns=columns, rows=rows):
            part = cls(base, chunk["isic_id"], chunk["image"], chunk["sha256"], chunk["exif_orientation"])
            if at + len(part) > count or any(getattr(part, name).itemsize > getattr(table, name).itemsize
                                             for name in ("isic_ids", "images")):
                raise RuntimeError(f"{path} changed while it was read; run the step again")
            for name in ("isic_ids", "images", "sha256", "exif"):
                getattr(table, name)[at : at + len(part)] = getattr(part, name)
            table.bad_sha256.update((at + position, value) for position, value in part.bad_sha256.items())
            at += len(part)
        if at != count:
            raise RuntimeError(f"{path} changed while it was read; run the step again")
        return table

    @classmethod
    def of(cls, jobs: Sequence[TransformJob]) -> JobTable:
        """``jobs`` as a JobTable (itself if it is one), each job's ``src`` kept whole as its image."""
        if isinstance(jobs, JobTable):
            return jobs
        table = cls(Path(""), [job.isic_id for job in jobs], [str(job.src) for job in jobs],
                    [job.src_sha256 for job in jobs], [1] * len(jobs))
        table.exif = np.asarray([job.exif_orientation for job in jobs], dtype=np.int64)
        return table

    def __len__(self) -> int:
        return len(self.isic_ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return TransformJob(self.isic_ids[index].decode(), self.base / self.images[index].decode(),
                            self.sha256_at(index), int(self.exif[index]))

    def sha256_at(self, index: int) -> str:
        """The job's hash as 64 hex digits (or as given, when it is not a hash)."""
        bad = self.bad_sha256.get(int(index))
        return bad if bad is not None else self.sha256[index].tobytes().hex()

    def __iter__(self) -> Iterator[TransformJob]:
        for i in range(len(self)):
            yield self[i]


def _refuse_unstorable(isic_ids: list[Any], sha256: list[Any]) -> None:
    """Refuse, with ``transform_images``'s message, an id or hash that is not a string or ends in a NUL
    character (fixed-width bytes would cut it off, and a cut value could pass the checks)."""
    for isic_id, digest in zip(isic_ids, sha256, strict=False):
        if not _storable(isic_id):
            raise ValueError(f"job id {isic_id!r} is not a safe file name")
        if not _storable(digest):
            raise ValueError(f"job {isic_id}: src_sha256 must be 64 lower-case hex digits, got {digest!r}")


def _storable(value: Any) -> bool:
    if not isinstance(value, str) or value.endswith("\0"):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: never a safe id nor a hash either
        return False
    return True


def decoded(column: np.ndarray, rows: int = 65_536) -> Iterator[str]:
    """The values of a UTF-8 bytes column as strings, converted ``rows`` at a time."""
    for start in range(0, len(column), rows):
        yield from (value.decode() for value in column[start : start + rows].tolist())


def find_sorted(sorted_ids: np.ndarray, isic_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The index of each of ``isic_ids`` (strings or UTF-8 bytes) in the sorted bytes column
    ``sorted_ids``, -1 where it is not there. An id longer than the column's width, or ending in NUL,
    is never there (it is not cut to fit)."""
    encoded = [value.encode() if isinstance(value, str) else bytes(value) for value in isic_ids]
    width = sorted_ids.dtype.itemsize
    fits = np.fromiter((len(value) <= width and not value.endswith(b"\0") for value in encoded),
                       dtype=bool, count=len(encoded))
    if not len(sorted_ids) or not len(encoded):
        return np.full(len(encoded), -1, dtype=np.int64)
    wanted = np.array([value if fit else b"" for value, fit in zip(encoded, fits, strict=True)],
                      dtype=sorted_ids.dtype)
    at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    found = fits & (sorted_ids[at] == wanted)
    return np.where(found, at, -1).astype(np.int64)


def digest_column(values: Sequence[Any], rows: int = 65_536) -> tuple[np.ndarray, dict[int, str]]:
    """Hex sha256 values as a column of their raw bytes, and the values that are not 64 lower-case hex
    digits, as given, by position (held as zero bytes in the column); converted ``rows`` at a time."""
    column = np.zeros(len(values), dtype=DIGEST)
    bad: dict[int, str] = {}
    values = values if isinstance(values, list) else list(values)
    for start in range(0, len(values), rows):
        good, text = [], []
        for position, value in enumerate(values[start : start + rows], start):
            if isinstance(value, str) and SHA256_HEX.fullmatch(value):
                good.append(position)
                text.append(value)
            else:
                bad[position] = value
        if good:
            column[np.asarray(good, dtype=np.int64)] = np.frombuffer(bytes.fromhex("".join(text)), dtype=DIGEST)
    return column, bad


def digest_strings(column: np.ndarray) -> list[str]:
    """A digest column's values as 64 hex digits each."""
    return [value.hex() for value in column.tolist()]


def _utf8_column(values: Sequence[Any]) -> np.ndarray:
    """``values`` as a fixed-width bytes column (an empty table gets width 1)."""
    encoded = [str(value).encode() for value in values]
    return np.array(encoded, dtype=f"S{max(1, max(map(len, encoded), default=1))}")


@dataclass(frozen=True)
class QuarantineRow:
    """An image left out of ``images/`` and why (for the asset's quarantine table)."""

    isic_id: str
    src: str
    reason: str


@dataclass(frozen=True)
class TransformedImage:
    """One output: ``path`` relative to ``out_dir``, its size in pixels, bytes and sha256."""

    path: str
    width: int
    height: int
    file_bytes: int
    sha256: str


class TransformedOutputs(Mapping[str, TransformedImage]):
    """Every current output by id, as sorted numpy columns (ids as fixed-width bytes, hashes as their
    32 raw bytes, sizes in pixels as 32-bit integers: about 60 bytes an image and no Python object per
    image, not 500 as a dict of ``TransformedImage``); iterates in id order. ``positions`` looks many
    ids up at once; ``id_strings`` and ``sha256_strings`` give the ids and hashes as strings a slice
    at a time."""

    _ROWS = 4096  # records gathered as Python values before they are copied into the columns

    def __init__(self, records: Iterable[dict] = (), capacity: int = 0) -> None:
        """``capacity``: how many records there may be at most (the number of jobs), so the columns
        are made once at that size and filled, not joined from slices (which held the table twice,
        and left the slices' memory in the heap); the rows never filled are never touched."""
        columns = [_Column(capacity, kind) for kind in (_TEXT, np.int32, np.int32, np.int64, _DIGEST)]
        rows: list[list] = [[] for _ in columns]
        fields = ("isic_id", "width", "height", "out_bytes", "out_sha256")

        def settle() -> None:
            for column, values in zip(columns, rows, strict=True):
                column.extend(values)
                values.clear()

        for record in records:
            for values, name in zip(rows, fields, strict=True):
                values.append(record[name])
            if len(rows[0]) == self._ROWS:
                settle()
        settle()
        ids, width, height, size, digest = (column.values() for column in columns)
        # The records come in id order from the state: the sort is then only a check.
        order = None if _is_sorted(ids) else np.argsort(ids, kind="stable")
        self.ids, self.width, self.height, self.file_bytes, self.sha256 = (
            values if order is None else values[order] for values in (ids, width, height, size, digest))
        if len(self.ids) > 1 and (self.ids[1:] == self.ids[:-1]).any():
            raise ValueError("an id has two outputs")

    def positions(self, isic_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Index of each id's output in the columns, -1 where it has none."""
        return find_sorted(self.ids, isic_ids)

    def id_strings(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [value.decode() for value in self.ids[start:stop].tolist()]

    def sha256_strings(self, positions: np.ndarray) -> list[str]:
        return digest_strings(self.sha256[positions])

    def at(self, position: int) -> TransformedImage:
        return TransformedImage(output_name(self.ids[position].decode()), int(self.width[position]),
                                int(self.height[position]), int(self.file_bytes[position]),
                                self.sha256[position].tobytes().hex())

    def __getitem__(self, isic_id: str) -> TransformedImage:
        position = int(self.positions([isic_id])[0]) if isinstance(isic_id, str) else -1
        if position < 0:
            raise KeyError(isic_id)
        return self.at(position)

    def __contains__(self, isic_id: object) -> bool:
        return isinstance(isic_id, str) and int(self.positions([isic_id])[0]) >= 0

    def __iter__(self) -> Iterator[str]:
        return decoded(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TransformReport:
    """What a run did. ``skipped`` counts unchanged images not processed again (remembered
    quarantines included); ``quarantine`` lists every image currently left out, this run's and
    remembered ones; ``images`` has every current output, processed now or earlier."""

    fingerprint: str
    processed: int = 0
    skipped: int = 0
    removed: int = 0
    quarantine: list[QuarantineRow] = field(default_factory=list)
    seconds: float = 0.0
    normalization: dict[str, Any] = field(default_factory=dict)
    images: TransformedOutputs = field(default_factory=TransformedOutputs)
    worker_restarts: int = 0
    backend: str = "local"  # ISIC_COMPUTE kind: local, dask-local or dask
    compute_workers: int = 0  # worker processes (local) or worker threads of the Dask cluster
    cluster: str = ""  # the Dask cluster that ran it: scheduler, workers, dashboard

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)


_TEXT, _DIGEST = "text", "digest"


class _Column:
    """A numpy column filled a slice at a time: made at ``capacity`` rows, grown if more come. ``kind``
    is a numpy integer type, ``_TEXT`` (fixed-width UTF-8 bytes, made wider, a copy of what is filled,
    if a longer value comes) or ``_DIGEST`` (hex sha256 as raw bytes)."""

    def __init__(self, capacity: int, kind: Any) -> None:
        self.array: np.ndarray | None = None
        self.size, self.capacity, self.kind = 0, max(capacity, 1), kind

    def extend(self, values: list) -> None:
        if not values:
            return
        if self.kind == _TEXT:
            incoming = _utf8_column(values)
        elif self.kind == _DIGEST:
            incoming, bad = digest_column(values)
            if bad:
                value = next(iter(bad.values()))
                raise ValueError(f"an output's sha256 must be 64 lower-case hex digits, got {value!r}")
        else:
            incoming = np.asarray(values, dtype=self.kind)
        need = self.size + len(incoming)
        if self.array is None or need > len(self.array) or incoming.dtype.itemsize > self.array.dtype.itemsize:
            length = max(need, self.capacity if self.array is None else len(self.array))
            if self.array is not None and need > len(self.array):
                length = max(need, len(self.array) * 3 // 2)
            dtype = incoming.dtype if self.array is None or incoming.dtype.itemsize > self.array.dtype.itemsize \
                else self.array.dtype
            grown = np.empty(length, dtype=dtype)  # the rows not filled yet are not touched
            if self.array is not None:
                grown[: self.size] = self.array[: self.size]
            self.array = grown
        self.array[self.size : need] = incoming
        self.size = need

    def values(self) -> np.ndarray:
        """The filled rows (a view: the untouched rest costs no memory)."""
        if self.array is None:
            return np.empty(0, dtype={_TEXT: "S1", _DIGEST: DIGEST}.get(self.kind, self.kind))
        return self.array[: self.size]


def _is_sorted(column: np.ndarray) -> bool:
    return bool((column[1:] >= column[:-1]).all()) if len(column) > 1 else True


def output_name(isic_id: str) -> str:
    """Relative path of an id's output inside ``out_dir``."""
    return f"{IMAGES_DIR}/{isic_id}{OUTPUT_SUFFIX}"


def valid_record(record: dict) -> bool:
    """A state record the runner can trust: a complete output's facts, or a quarantine with its reason."""
    status = record.get("status")
    if status == STATUS_OK:
        return (all(record.get(k) is not None for k in _OK_FIELDS)
                and len(record["sum"]) == 3 and len(record["sumsq"]) == 3
                and isinstance(record["out_sha256"], str) and SHA256_HEX.fullmatch(record["out_sha256"]) is not None
                and all(isinstance(record[k], int) and 0 < record[k] < 2**31 for k in ("width", "height")))
    if status == STATUS_QUARANTINED:
        return all(record.get(k) is not None for k in ("src_sha256", "fingerprint", "reason"))
    return status in (STATUS_FAILED, STATUS_STARTED)


def journal_line(handle: IO[str], record: dict) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()  # reaches the kernel: survives the death of this process


def absorb_journals(state: SqliteLog, state_dir: Path, log: Any = None) -> tuple[dict[str, dict], set[str]]:
    """Fold worker journals into the state and delete them; only call while no worker runs.

    Returns the finished records the state did not hold yet (by id: the results of batches whose
    worker died, and failures) and the ids a worker had started but not finished (what it was doing
    when it died). Remembered: ``ok`` and ``quarantined`` records only. Journals are read a line at
    a time: at the end of a run they hold a record of every image the run did, already recorded.
    """
    finished: dict[str, dict] = {}
    in_progress: set[str] = set()
    journals = sorted(state_dir.glob(f"{JOURNAL_PREFIX}*.jsonl"))
    for path in journals:
        current, bad = None, 0
        for record in iter_jsonl(path):
            if record is None or not isinstance(record.get("isic_id"), str) or not valid_record(record):
                bad += 1
                continue
            isic_id, status = record["isic_id"], record.get("status")
            if status == STATUS_STARTED:
                current = isic_id
                continue
            if current == isic_id:
                current = None
            if status in (STATUS_OK, STATUS_QUARANTINED):
                if state.get(isic_id) == record:
                    finished.pop(isic_id, None)  # recorded already: a later line of the same id wins
                    continue
                state.append(record)
            finished[isic_id] = record
        if bad and log is not None:
            log(f"transform: worker journal {path.name} had {bad} damaged line(s) (a worker killed mid-write); "
                "ignored, those images are transformed again")
        if current is not None:
            in_progress.add(current)
    state.flush()  # committed before the journals that hold the same records go
    for path in journals:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return finished, in_progress


def drop_journals(state: SqliteLog, state_dir: Path) -> None:
    """Commit the state, then delete the worker journals unread: for a run in which every batch came
    back, so every record they hold was recorded from the results (reading them back would parse a
    started line and a record for each image the run did)."""
    state.flush()
    for path in state_dir.glob(f"{JOURNAL_PREFIX}*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
