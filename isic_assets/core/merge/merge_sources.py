"""Merging downloaded ISIC sources into one deduplicated image folder and one metadata table.

Order of work, chosen so each image is read from its zip exactly once:

1. harmonize every source's CSVs (an ISIC 2024 CSV a chunk of rows at a time) and combine them in
   catalog order a range of ids at a time, the combined rows parked on disk in id order;
2. stream every images zip member by member; each new member is checked and hashed in one read
   and written straight to ``images/<isic_id>.<ext>`` when it is the best copy seen for that id;
3. resolve duplicates on the recorded facts alone (same id, identical bytes, listed pairs);
4. bring ``images/`` in line with the resolution and write the tables atomically.

A re-run with unchanged downloads reuses the recorded facts of step 2 (``_state/``) and does no
decoding or copying; a source added later only scans its own members.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..atomic import TMP_PREFIX, atomic_write_bytes, has_entries, remove_stale_temporaries
from ..compute.setting import LOCAL, ComputeChoice
from ..operation.disk_space import disk_full_errors, ensure_free_space, format_bytes
from .duplicates import (
    DUPLICATE_COLUMNS,
    QUARANTINE_COLUMNS,
    labelled_among,
    preference,
    presumed_listed_drops,
    quarantine,
    resolve_duplicates,
)
from .harmonize import Harmonized, harmonize
from .harmonize.isic2024 import FORMAT as ISIC2024
from .harmonize.isic2024 import Harmonized2024, Isic2024Chunks, isic2024_source_chunks, refused_records, with_image_type
from .id_ranges import HarmonizedRanges
from .image_check import DEFAULT_CHECK_TIME_LIMIT_S, ImageFacts, ImageRejected, inspect_many
from .member_source import FolderMembers, Hdf5Members, MemberSource, RefusedMember, open_image_file
from .metadata_table import METADATA_COLUMNS, MetadataSummary, label_conflicts, write_metadata, write_tables
from .state_store import MergeState
from .zip_stream import ZipEntry, ZipLimits, is_suspicious_member_name, read_member, scan_zip

Log = Callable[[str], None]

__all__ = [
    "DUPLICATE_COLUMNS", "METADATA_COLUMNS", "QUARANTINE_COLUMNS", "MergeOptions", "MergeReport", "SourceArchive",
    "merge_sources",
]

STAGE = "merge_sources"
STATE_DIR = "_state"
_FLUSH_EVERY = 200  # members checked per committed transaction: a kill loses at most this many
_PAGE = 5000  # members handed to the checker at a time, so only a page of listings is in memory
_TABLE_PAGE = 20_000  # kept images per page of metadata.csv / metadata.parquet
_METADATA_CHUNK = 20_000  # rows of an ISIC 2024 metadata CSV harmonized at a time
_FILE_FACTS = ("source", "name", "sha256", "width", "height", "ext", "file_bytes", "exif_orientation", "format")


@dataclass(frozen=True)
class SourceArchive:
    """One selected source as downloaded: its catalog name, format, order and local files by role."""

    name: str
    format: str
    order: int
    files: Mapping[str, Path]

    @property
    def image_zip(self) -> Path:
        return self.files["archive"] if self.format == "isic_archive_zip" else self.files["images"]

    def members(self, limits: ZipLimits) -> MemberSource:
        """The images zip or HDF5 file (told apart by content), or an API source's image folder."""
        if self.format == "isic_api":
            return FolderMembers(self.files["folder"] / "images", limits)
        return open_image_file(self.image_zip, limits)


@dataclass(frozen=True)
class MergeOptions:
    """Knobs of the merge; the zip limits guard against zip bombs (ZipLimits documents them)."""

    limits: ZipLimits = field(default_factory=ZipLimits)
    workers: int = 2
    max_in_flight: int = 8
    # Seconds one member's check may take before it is quarantined (reason time_limit); 0: none.
    check_time_limit_s: float = DEFAULT_CHECK_TIME_LIMIT_S
    # Where the per-image checks run (core/compute/setting.py); Dask: merge/check_on_dask.py.
    compute: ComputeChoice = field(default_factory=lambda: ComputeChoice(LOCAL))


class _Cluster:
    """The Dask session of a merge, opened at the first source with members to check (a re-run
    with nothing new starts no cluster) and kept for the other sources."""

    def __init__(self, options: MergeOptions, out_dir: Path, stack: contextlib.ExitStack, log: Log) -> None:
        self.options, self.out_dir, self.stack, self.log = options, out_dir, stack, log
        self.session: Any = None
        self.threads = 0

    def get(self) -> Any:
        if self.session is None:
            from ..compute.dask_cluster import open_dask  # Dask is imported only when it is asked for

            self.session = self.stack.enter_context(open_dask(self.options.compute, self.options.workers, self.log))
            info = self.session.info()
            self.threads = info.threads
            self.log(f"merge: checking images on the {info.describe()}")
            self.session.probe(self.out_dir)
        return self.session


@dataclass
class SourceStats:
    """What one source contributed; shown per source in the UI."""

    members: int = 0
    image_members: int = 0
    other_members: int = 0
    scanned: int = 0
    reused: int = 0
    rejected: int = 0
    metadata_rows: int = 0
    kept: int = 0
    written: int = 0
    bytes_written: int = 0
    suspicious_names: list[str] = field(default_factory=list)


@dataclass
class MergeReport:
    """Counts and tables of a merge, for asset metadata and checks.

    ``table`` summarises ``metadata.csv`` (written a page at a time, never held whole);
    ``metadata`` reads the whole table back from ``metadata.parquet``, for tests and small sources.
    """

    table: MetadataSummary
    out_dir: Path
    duplicates: pd.DataFrame
    quarantine: pd.DataFrame
    conflicts: pd.DataFrame
    per_source: dict[str, SourceStats]
    notes: list[str]
    images_written: int = 0
    images_without_metadata: int = 0
    images_deleted: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    backend: str = "local"  # ISIC_COMPUTE kind that checked this run's new members
    compute_workers: int = 0  # local checking threads, or the Dask cluster's worker threads

    @property
    def metadata(self) -> pd.DataFrame:
        """The whole merged table as written (every row in memory: not for archive-sized merges)."""
        return pd.read_parquet(self.out_dir / layout.METADATA_PARQUET)

    @property
    def scanned(self) -> int:
        return sum(s.scanned for s in self.per_source.values())


# ----------------------------------------------------------------------------------------------
# entry point


def merge_sources(
    sources: Sequence[SourceArchive], out_dir: Path, options: MergeOptions | None = None, log: Log = print
) -> MergeReport:
    """Merge ``sources`` (in catalog order) into ``out_dir`` (``merged_data/``); see module docstring."""
    started = time.monotonic()
    options = options or MergeOptions()
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(images_dir)
    remove_stale_temporaries(out_dir)
    ordered = sorted(sources, key=lambda s: s.order)
    order = {s.name: s.order for s in ordered}

    has_outputs = has_entries(images_dir)
    state = MergeState(out_dir / STATE_DIR, log, has_outputs)
    try:
        with _harmonized_metadata(ordered, order, state, options.limits) as metadata:
            report = _merge_and_write(ordered, order, metadata, state, out_dir, images_dir, options, log)
    finally:
        state.close()
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Metadata:
    """The metadata side of a merge, harmonized and combined; its rows wait on disk, in id order."""

    notes: list[str]
    pairs: list[tuple[str, str]]
    rows: dict[str, int]
    conflicts: pd.DataFrame
    chunks: Callable[[], Iterator[pd.DataFrame]]


@contextlib.contextmanager
def _harmonized_metadata(ordered: Sequence[SourceArchive], order: Mapping[str, int], state: MergeState,
                         limits: ZipLimits) -> Iterator[_Metadata]:
    """Harmonize every source and combine them, holding at most a chunk or a range of ids at a time.

    An ISIC 2024 source is harmonized a chunk of rows at a time (``Isic2024Chunks``); the other
    formats, whose releases are at most a few tens of thousands of rows, whole. Every chunk goes to
    disk by id range (``HarmonizedRanges``) and is combined a range at a time; the combined rows are
    parked, sorted by ``isic_id``, in an anonymous temporary file of the state folder for the table
    writing, and the facts resolution and the quarantine ask about go to the state's run tables.
    """
    import pickle
    import tempfile

    folder = state.path.parent
    state.fill("source_order", order.items())
    notes: list[str] = []
    pairs: list[tuple[str, str]] = []
    rows: dict[str, int] = {}
    own_conflicts: list[pd.DataFrame | None] = []
    parts: list[pd.DataFrame] = []
    pieces = 0
    with tempfile.TemporaryFile(dir=folder, prefix=".tmp-combined-") as handle:
        with HarmonizedRanges(folder) as ranges:
            for source in ordered:
                rows[source.name] = 0
                if source.format == ISIC2024:
                    chunks = _isic2024_chunks(source, limits)
                    index = ranges.source(source.name, chunks.cast)
                    for frame in chunks:
                        ranges.add(index, frame)
                        rows[source.name] += len(frame)
                        # A 2024 image with no row in its own metadata has no label: quarantined, not kept.
                        state.fill("listed", ((source.name, i) for i in frame["isic_id"].tolist()))
                    source_notes, conflicts = chunks.finish()
                    own_conflicts.append(conflicts)
                else:
                    harmonized = harmonize_source(source, limits)
                    frame = with_image_type(source.format, harmonized.frame)
                    ranges.add(ranges.source(source.name), frame)
                    rows[source.name] = len(frame)
                    source_notes, pairs = harmonized.notes, pairs + harmonized.duplicate_pairs
                    own_conflicts.append(None)
                    del harmonized, frame
                notes += [f"{source.name}: {note}" for note in source_notes]
            state.commit()
            for combined in ranges.combined():
                _fill_metadata_ids(state, combined.frame)
                pickle.dump(combined.frame, handle, protocol=pickle.HIGHEST_PROTOCOL)
                pieces += 1
                if len(combined.conflicts) or not parts:
                    parts.append(combined.conflicts)
            state.commit()
        combined_conflicts = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        conflicts = pd.concat([combined_conflicts, *(combined_conflicts.iloc[:0] if c is None else c
                                                     for c in own_conflicts)], ignore_index=True)

        def read() -> Iterator[pd.DataFrame]:
            handle.seek(0)
            for _ in range(pieces):
                yield pickle.load(handle)  # written by this process just above: nothing from outside

        yield _Metadata(notes=notes, pairs=pairs, rows=rows, conflicts=conflicts, chunks=read)


def _fill_metadata_ids(state: MergeState, frame: pd.DataFrame) -> None:
    """The ids with a metadata row (and their sources) and the labelled ones, for one range."""
    if not len(frame):
        return
    ids = frame["isic_id"].tolist()
    state.fill("meta_ids", zip(ids, frame["sources"].tolist(), strict=True))
    labelled = (frame["benign_malignant"].astype(str) != "").to_numpy()
    state.fill("labelled", ((i,) for i, keep in zip(ids, labelled, strict=True) if keep))


def _merge_and_write(ordered: list[SourceArchive], order: dict[str, int], metadata: _Metadata, state: MergeState,
                     out_dir: Path, images_dir: Path, options: MergeOptions, log: Log) -> MergeReport:
    pairs = metadata.pairs
    pair_ids = sorted({i for pair in pairs for i in pair})
    skip_writes = presumed_listed_drops(pairs, labelled_among(state, pair_ids))
    stats: dict[str, SourceStats] = {}
    scans = {s.name: _open_scan(s, state, options, stats.setdefault(s.name, SourceStats())) for s in ordered}
    needed = state.bytes_unseen(skip_writes)
    free = ensure_free_space(STAGE, out_dir, needed, detail="the new zip members (central directory sizes) ")
    if needed:
        log(f"merge: up to {format_bytes(needed)} of new images to write, {format_bytes(free)} free at {out_dir}")
    cluster = None
    with contextlib.ExitStack() as stack, disk_full_errors(STAGE, out_dir, needed):
        cluster = _Cluster(options, out_dir, stack, log) if options.compute.uses_dask else None
        for source in ordered:
            stats[source.name].metadata_rows = metadata.rows[source.name]
            scan_source(source, state, order, options, stats[source.name], log, skip_writes,
                        cluster=cluster, members=scans[source.name])

    resolution = resolve_duplicates(state, _all_records(ordered, scans, state, stats), order, pairs)
    report = MergeReport(
        table=MetadataSummary(),
        out_dir=out_dir,
        duplicates=resolution.duplicates,
        quarantine=quarantine(state, resolution),
        conflicts=metadata.conflicts,
        per_source=stats,
        notes=metadata.notes,
    )
    report.backend = options.compute.kind
    report.compute_workers = cluster.threads if cluster is not None and cluster.threads else options.workers
    report.images_written = sum(s.written for s in stats.values())
    report.bytes_written = sum(s.bytes_written for s in stats.values())
    with disk_full_errors(STAGE, out_dir):
        _sync_images(state, sources_by_name={s.name: s for s in ordered}, images_dir=images_dir,
                     options=options, report=report, log=log)
        state.forget_unkept_written()
    report.images_without_metadata = int(state.db.execute(
        "SELECT COUNT(*) FROM best b WHERE kept = 1 AND NOT EXISTS "
        "(SELECT 1 FROM meta_ids m WHERE m.isic_id = b.isic_id)").fetchone()[0])
    with disk_full_errors(STAGE, out_dir):
        report.table = write_metadata(out_dir, metadata.chunks(), _kept_facts(state), order,
                                      label_conflicts(report.conflicts), report.images_without_metadata > 0)
        write_tables(out_dir, report)
    for name, stat in stats.items():
        stat.kept = report.table.kept_per_source.get(name, 0)
    return report


def _all_records(ordered: Sequence[SourceArchive], scans: Mapping[str, MemberSource], state: MergeState,
                 stats: Mapping[str, SourceStats]) -> Iterator[dict[str, Any]]:
    """Every source's member records in catalog order, then its refused members; rejected counted."""
    for source in ordered:
        rejected = 0
        for record, listed in state.listed_records(source.name):
            rejected += record["status"] != "ok"  # counted as checked, before the metadata rule below
            if source.format == ISIC2024 and record["status"] == "ok" and not listed:
                record = {**record, "status": "rejected", "reason": "no_metadata_row",
                          "detail": f"{record['name']}: no row with this isic_id in the source's metadata"}
            yield record
        for record in refused_records(scans[source.name], source.name):
            rejected += 1
            yield record
        stats[source.name].rejected = rejected


def _kept_facts(state: MergeState) -> Iterator[dict[str, list[Any]]]:
    """The file facts of the kept images, column by column, a page at a time in id order."""
    names = ("isic_id", "source", "image_sources", "ext", "width", "height", "sha256", "file_bytes",
             "exif_orientation")
    cursor = state.db.execute(f"SELECT {', '.join(names)} FROM best WHERE kept = 1 ORDER BY isic_id")
    while page := cursor.fetchmany(_TABLE_PAGE):
        yield {name: list(values) for name, values in zip(names, zip(*page, strict=True), strict=True)}


# ----------------------------------------------------------------------------------------------
# metadata


def harmonize_source(source: SourceArchive, limits: ZipLimits) -> Harmonized:
    """Harmonize one source's CSVs, reading the ones that live inside its zip (2017, archive)."""
    files: dict[str, Any] = {role: path for role, path in source.files.items() if role not in ("images", "archive")}
    if source.format == "isic_api":
        # The API download is written in the isic-cli metadata.csv shape, the same current schema as
        # an Archive export (docs/ISIC_SOURCES.md 2.5), so one harmonizer serves both.
        return harmonize("isic_archive_zip", {"metadata": source.files["folder"] / layout.METADATA_CSV})
    if source.format == "isic2024":  # whole: the merge itself takes it a chunk at a time
        chunks = _isic2024_chunks(source, limits)
        frame = chunks.cast(pd.concat(list(chunks), ignore_index=True))
        notes, conflicts = chunks.finish()
        return Harmonized2024(frame=frame, notes=notes, conflicts=conflicts)
    if source.format == "isic_archive_zip":
        files["metadata"] = io.BytesIO(_read_csv_member(source.image_zip, "metadata.csv", limits))
    elif source.format == "isic2017" and "metadata" not in files:
        # The 2017 training zip carries ISIC-2017_Training_Data_metadata.csv (docs/ISIC_SOURCES.md 1.2).
        entries = scan_zip(source.image_zip, limits)
        inside = [e.name for e in entries if e.name.lower().endswith("_metadata.csv")]
        if inside:
            files["metadata"] = io.BytesIO(read_member(source.image_zip, inside[0], limits))
    return harmonize(source.format, files)


def _isic2024_chunks(source: SourceArchive, limits: ZipLimits) -> Isic2024Chunks:
    files = {role: path for role, path in source.files.items() if role not in ("images", "archive")}
    return isic2024_source_chunks(files, source.image_zip, limits, chunk_rows=_METADATA_CHUNK)


def _read_csv_member(archive: Path, basename: str, limits: ZipLimits) -> bytes:
    entries = scan_zip(archive, limits)
    matches = [e.name for e in entries if e.name.rsplit("/", 1)[-1].lower() == basename]
    if not matches:
        raise ValueError(f"{archive.name}: an ISIC Archive export must contain {basename}; none found")
    return read_member(archive, min(matches, key=len), limits)


# ----------------------------------------------------------------------------------------------
# scanning


def scan_source(
    source: SourceArchive,
    state: MergeState,
    order: Mapping[str, int],
    options: MergeOptions,
    stats: SourceStats,
    log: Log,
    skip_writes: frozenset[str] = frozenset(),
    cluster: _Cluster | None = None,
    members: MemberSource | None = None,
) -> None:
    """Check every image member of the source not seen before and record its facts in ``state``.

    The source's listing is already in ``state`` (``_open_scan``). Ids in ``skip_writes`` are
    checked but not written: the published duplicates list already says they will be dropped.
    Should one become the keeper after all (its partner corrupt), the final sync reads it from the
    zip then.
    """
    from ..ids import isic_id_from_member

    members = members or _open_scan(source, state, options, stats)
    images_dir = state.path.parent.parent / "images"
    listed = state.count_listed(source.name)
    unseen = state.unseen(source.name)
    todo_count = sum(1 for _ in unseen)
    stats.reused = listed - todo_count
    if todo_count:
        log(f"{source.name}: checking {todo_count} new image members of {members.label} "
            f"({stats.reused} already known)")
    done = 0
    after = -1  # listing position of the last member handed to the checker
    try:
        while todo_count and (page := _unseen_page(state, source.name, after)):
            before = done
            after = page[-1].pos
            state.look_up_written(isic_id_from_member(entry.name) for entry in page)
            checked = _check_members(members, page, options) if cluster is None \
                else _check_on_cluster(cluster, members, page, images_dir)
            for entry, outcome in checked:
                done += 1
                record = _member_record(source, entry, outcome)
                data = outcome.data if outcome.data is not None else outcome.staged
                if record["status"] == "ok" and data is not None and record["isic_id"] not in skip_writes \
                        and _write_if_best(record, data, images_dir, state, order):
                    stats.written += 1
                    stats.bytes_written += int(record["file_bytes"])
                elif outcome.staged is not None:
                    outcome.staged.unlink(missing_ok=True)
                # A time limit is perhaps only a loaded machine: held for this run, checked again next run.
                state.record_member(record, held=record.get("reason") == "time_limit")
                stats.scanned += 1
                if done % _FLUSH_EVERY == 0:
                    state.commit()
                    log(f"{source.name}: {done}/{todo_count} new members checked")
            state.commit()
            if done == before:  # every member handed over is recorded, so this cannot loop; say so if it would
                raise RuntimeError(f"{source.name}: the checker returned nothing for {page[0].name} and the "
                                   f"{len(page) - 1} members after it")
    finally:
        state.commit()
    state.forget_unlisted(source.name)


@dataclass(frozen=True)
class _Unseen(ZipEntry):
    pos: int = -1  # its position in the source's listing


def _unseen_page(state: MergeState, source: str, after: int) -> list[_Unseen]:
    """The next members of ``source`` after listing position ``after`` with no record yet."""
    from .zip_stream import member_kind

    return [_Unseen(name=name, file_size=size, compress_size=packed, crc=crc, is_dir=False,
                    kind=member_kind(name), header_offset=offset, pos=pos)
            for name, crc, size, packed, offset, _, pos in state.unseen(source, after, _PAGE)]


def _open_scan(source: SourceArchive, state: MergeState, options: MergeOptions, stats: SourceStats) -> MemberSource:
    """List the source's members into ``state`` (the listing is not kept in memory) and count them.

    An HDF5 file's listing is kept in the state file and taken from there while the file is
    unchanged (``Hdf5Members.listing_key``): listing is about 0.3 ms a dataset.
    """
    import json

    from ..ids import isic_id_from_member

    members = source.members(options.limits)
    counts = {"all": 0, "other": 0}
    stats.suspicious_names = []
    key = members.listing_key() if isinstance(members, Hdf5Members) else None
    kept = state.kept_listing(source.name) if key is not None else None
    if kept is not None and key == kept[0]:
        facts = json.loads(kept[1])
        if members.listed_before(key, [RefusedMember(*item) for item in facts["refused"]]):  # type: ignore[union-attr]
            state.use_kept_listing(source.name)
            stats.members, stats.other_members = facts["members"], facts["other"]
            stats.suspicious_names = list(facts["suspicious"])
            stats.image_members = state.count_listed(source.name)
            state.commit()
            return members

    def images() -> Iterator[tuple[str, int, int, int, int, str | None]]:
        for e in members.iter_entries():  # streamed: the listing goes to the state, not to memory
            counts["all"] += 1
            counts["other"] += e.kind not in ("image", "dir")
            if is_suspicious_member_name(e.name):
                stats.suspicious_names.append(e.name)
            if e.kind == "image":
                yield e.name, e.crc, e.file_size, e.compress_size, e.header_offset, isic_id_from_member(e.name)

    state.add_listing(source.name, images())
    stats.members, stats.other_members = counts["all"], counts["other"]
    stats.image_members = state.count_listed(source.name)
    if key is not None:
        refused = [[item.name, item.reason, item.detail] for item in members.refused()]  # type: ignore[attr-defined]
        state.keep_listing(source.name, key, json.dumps({
            "members": stats.members, "other": stats.other_members, "suspicious": stats.suspicious_names,
            "refused": refused}))
    elif kept is not None:
        state.forget_kept_listing(source.name)
    state.commit()
    return members


@dataclass
class _Checked:
    facts: ImageFacts | None
    data: bytes | None
    error: str | None
    reason: str | None
    staged: Path | None = None  # checked on a Dask worker: its copy, staged in images/ as a .tmp- file


def _check_on_cluster(cluster: _Cluster, members: MemberSource, todo: list[ZipEntry], images_dir: Path
                      ) -> Iterator[tuple[ZipEntry, _Checked]]:
    from .check_on_dask import check_members_on_dask

    session = cluster.get()
    for entry, outcome in check_members_on_dask(session, members, todo, images_dir,
                                                cluster.options.check_time_limit_s):
        yield entry, _Checked(outcome.facts, None, outcome.error, outcome.reason, outcome.staged)


def _check_members(members: MemberSource, todo: list[ZipEntry], options: MergeOptions
                   ) -> Iterator[tuple[ZipEntry, _Checked]]:
    """Read each member once and check it on a bounded thread pool, in member order."""
    read_errors: dict[str, str] = {}
    payloads: dict[str, bytes] = {}

    def readable() -> Iterator[tuple[ZipEntry, bytes, str]]:
        for read in members.iter_bytes(todo):
            if read.error is not None:
                read_errors[read.entry.name] = read.error
                yield read.entry, b"", read.entry.name
            else:
                payloads[read.entry.name] = read.data
                yield read.entry, read.data, read.entry.name

    for entry, result in inspect_many(readable(), workers=options.workers, max_in_flight=options.max_in_flight,
                                      time_limit_s=options.check_time_limit_s):
        data = payloads.pop(entry.name, None)
        if entry.name in read_errors:
            yield entry, _Checked(None, None, read_errors.pop(entry.name), "read_error")
        elif isinstance(result, ImageRejected):
            yield entry, _Checked(None, None, str(result), result.reason)
        else:
            yield entry, _Checked(result, data, None, None)


def _member_record(source: SourceArchive, entry: ZipEntry, outcome: _Checked) -> dict[str, Any]:
    from ..ids import isic_id_from_member

    record: dict[str, Any] = {
        "name": entry.name, "crc": entry.crc, "size": entry.file_size,
        "isic_id": isic_id_from_member(entry.name), "source": source.name,
    }
    if outcome.facts is None:
        record.update(status="rejected", reason=outcome.reason, detail=outcome.error)
        return record
    facts = outcome.facts
    record.update(
        status="ok", sha256=facts.sha256, width=facts.width, height=facts.height, format=facts.format,
        ext=facts.extension, exif_orientation=facts.exif_orientation, file_bytes=facts.file_bytes,
    )
    return record


def _write_if_best(record: dict[str, Any], data: bytes | Path, images_dir: Path, state: MergeState,
                   order: Mapping[str, int]) -> bool:
    """Write a freshly checked image (its bytes, or a copy a worker staged) if it beats the copy
    already written for its id."""
    isic_id = record["isic_id"]
    current = state.written(isic_id)
    target = images_dir / f"{isic_id}{record['ext']}"
    current_ok = current is not None and (images_dir / f"{isic_id}{current['ext']}").is_file()
    if current_ok and (current["sha256"] == record["sha256"]  # type: ignore[index]
                       or preference(current, order) <= preference(record, order)):  # type: ignore[arg-type]
        return False
    if isinstance(data, Path):
        os.replace(data, target)  # staged and fsynced by the worker: the rename is the atomic write
    else:
        _write_image(target, data)
    if current is not None and current["ext"] != record["ext"]:
        with contextlib.suppress(FileNotFoundError):
            (images_dir / f"{isic_id}{current['ext']}").unlink()
    state.record_written(isic_id, _file_facts(record))
    return True


def _write_image(path: Path, data: bytes) -> None:
    """``atomic_write_bytes`` for one checked image, in four system calls instead of about ten.

    The temporary name is fixed (``.tmp-<file name>``): only this process writes ``images/`` (the
    data root is locked), and the leftovers of a killed run are removed when the next one starts.
    """
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: outputs are for other users and tools to read
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in _FILE_FACTS}


# ----------------------------------------------------------------------------------------------
# outputs


def _sync_images(state: MergeState, sources_by_name: Mapping[str, SourceArchive], images_dir: Path,
                 options: MergeOptions, report: MergeReport, log: Log) -> None:
    """Make ``images/`` hold exactly the kept files: fill gaps from the zips, delete the rest.

    The kept rows are read a page at a time in id order (each page whole before the state is
    written to), and each file in ``images/`` is looked up by name: nothing per image is held.
    """
    names = ("isic_id", *_FILE_FACTS)
    last = ""
    while page := state.db.execute(f"SELECT {', '.join(names)} FROM best WHERE kept = 1 AND isic_id > ? "
                                   "ORDER BY isic_id LIMIT 2000", (last,)).fetchall():
        last = page[-1][0]
        state.look_up_written(row[0] for row in page)
        for row in page:
            rec = dict(zip(names, row, strict=True))
            isic_id = rec["isic_id"]
            path = images_dir / f"{isic_id}{rec['ext']}"
            current = state.written(isic_id)
            if current is not None and current["sha256"] == rec["sha256"] and path.is_file() \
                    and path.stat().st_size == rec["file_bytes"]:
                continue
            if _already_there(path, rec):
                # Its record was lost (a damaged or deleted state file) but the file is the kept copy.
                state.record_written(isic_id, _file_facts(rec))
                continue
            data = sources_by_name[rec["source"]].members(options.limits).read(rec["name"])
            atomic_write_bytes(path, data)
            state.record_written(isic_id, _file_facts(rec))
            report.images_written += 1
            report.bytes_written += len(data)
        state.commit()
    with os.scandir(images_dir) as listing:
        while names := [entry.name for entry in itertools.islice(listing, _PAGE)]:
            kept = {row[0] for row in state.db.execute(
                "SELECT isic_id || ext FROM best WHERE kept = 1 AND isic_id IN (SELECT value FROM json_each(?))",
                (json.dumps([name.split(".", 1)[0] for name in names]),))}
            for name in names:
                if name not in kept:
                    (images_dir / name).unlink()
                    report.images_deleted += 1
    if report.images_deleted:
        log(f"removed {report.images_deleted} files that are no longer kept images")


def _already_there(path: Path, rec: Mapping[str, Any]) -> bool:
    """True when ``path`` holds exactly the bytes ``rec`` describes (size, then sha256)."""
    try:
        if path.stat().st_size != int(rec["file_bytes"]):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    except OSError:
        return False
