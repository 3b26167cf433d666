"""Merging downloaded ISIC sources into one deduplicated image folder and one metadata table.

Order of work, chosen so each image is read from its zip exactly once:

1. harmonize every source's CSVs (cheap) and combine them in catalog order;
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
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..atomic import atomic_open, atomic_write_bytes, remove_stale_temporaries
from ..components import connected_sets
from ..compute.setting import LOCAL, ComputeChoice
from ..operation.disk_space import disk_full_errors, ensure_free_space, format_bytes
from ..scan_state import JsonlLog, has_fields
from .combine import combine_sources
from .harmonize import Harmonized, harmonize
from .harmonize.isic2024 import harmonize_isic2024_source, refused_records, reject_unlisted, with_image_type
from .image_check import DEFAULT_CHECK_TIME_LIMIT_S, ImageFacts, ImageRejected, inspect_many
from .member_source import FolderMembers, MemberSource, open_image_file
from .zip_stream import ZipEntry, ZipLimits, is_suspicious_member_name, read_member, scan_zip

Log = Callable[[str], None]

# Columns of merged_data/metadata.csv, in order (docs/ARCHITECTURE.md); format extras follow.
METADATA_COLUMNS = [
    "isic_id", "source", "sources", "benign_malignant", "diagnosis", "age_approx", "sex",
    "anatom_site_general", "patient_id", "lesion_id", "diagnosis_confirm_type", "copyright_license",
    "attribution", "image_type", "image", "width", "height", "sha256", "file_bytes", "exif_orientation",
    "label_conflict",
]
DUPLICATE_COLUMNS = ["isic_id", "kept_isic_id", "reason", "source", "member", "sha256"]
QUARANTINE_COLUMNS = ["isic_id", "source", "member", "reason", "detail", "id_kept_from_other_source"]

STAGE = "merge_sources"
STATE_DIR = "_state"
WRITTEN_STATE = "written.jsonl"
_FLUSH_EVERY = 200
_FILE_FACTS = ("source", "name", "sha256", "width", "height", "ext", "file_bytes", "exif_orientation", "format")
_valid_written = has_fields("isic_id", *_FILE_FACTS)


def _valid_member(record: dict[str, Any]) -> bool:
    """A member record the merge can use: facts of a checked image, or the reason it was rejected."""
    if record.get("status") == "ok":
        return all(record.get(k) is not None for k in _FILE_FACTS if k != "name") and "isic_id" in record
    return record.get("status") == "rejected" and "isic_id" in record and "source" in record


def _open_state(path: Path, key: tuple[str, ...], valid: Any, log: Log, what: str,
                outputs_exist: bool) -> JsonlLog:
    """Load a state file, saying once in the log when it was damaged or is missing next to outputs."""
    state = JsonlLog(path, key, valid)
    if state.damage:
        log(f"merge: {state.damage}")
    elif not path.exists() and outputs_exist:
        log(f"merge: state file {path} is missing although merged_data/images/ holds files; {what}")
    return state


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
    """Counts and tables of a merge, for asset metadata and checks."""

    metadata: pd.DataFrame
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

    harmonized = {s.name: harmonize_source(s, options.limits) for s in ordered}
    for s in ordered:
        harmonized[s.name].frame = with_image_type(s.format, harmonized[s.name].frame)
    combined = combine_sources([(s.name, harmonized[s.name].frame) for s in ordered])
    notes = [f"{name}: {note}" for name, h in harmonized.items() for note in h.notes]

    pairs = [pair for h in harmonized.values() for pair in h.duplicate_pairs]
    labelled = _labelled_ids(combined.frame)
    has_outputs = any(images_dir.iterdir())
    written = _open_state(out_dir / STATE_DIR / WRITTEN_STATE, ("isic_id",), _valid_written, log,
                          "the images already there are hashed and kept when they match", has_outputs)
    stats: dict[str, SourceStats] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    skip_writes = presumed_listed_drops(pairs, labelled)
    try:
        scans = {s.name: _open_scan(s, out_dir, images_dir, written, options, log) for s in ordered}
        needed = sum(scan.bytes_to_check(skip_writes) for scan in scans.values())
        free = ensure_free_space(STAGE, out_dir, needed, detail="the new zip members (central directory sizes) ")
        if needed:
            log(f"merge: up to {format_bytes(needed)} of new images to write, {format_bytes(free)} free at {out_dir}")
        cluster = None
        with contextlib.ExitStack() as stack, disk_full_errors(STAGE, out_dir, needed):
            cluster = _Cluster(options, out_dir, stack, log) if options.compute.uses_dask else None
            for source in ordered:
                stats[source.name] = SourceStats(metadata_rows=len(harmonized[source.name].frame))
                records[source.name] = reject_unlisted(source.format, scan_source(
                    source, out_dir, images_dir, written, order, options, stats[source.name], log, skip_writes,
                    cluster=cluster, scan=scans[source.name],
                ), harmonized[source.name].frame)
    finally:
        written.close()

    resolution = resolve_duplicates(records, order, pairs, labelled)
    report = MergeReport(
        metadata=pd.DataFrame(),
        duplicates=resolution.duplicates,
        quarantine=_quarantine(records, combined.frame, resolution),
        conflicts=pd.concat([combined.conflicts, *(getattr(h, "conflicts", combined.conflicts.iloc[:0])
                                                   for h in harmonized.values())], ignore_index=True),
        per_source=stats,
        notes=notes,
    )
    report.backend = options.compute.kind
    report.compute_workers = cluster.threads if cluster is not None and cluster.threads else options.workers
    report.images_written = sum(s.written for s in stats.values())
    report.bytes_written = sum(s.bytes_written for s in stats.values())
    with disk_full_errors(STAGE, out_dir):
        _sync_images(resolution.kept, sources_by_name={s.name: s for s in ordered}, images_dir=images_dir,
                     written=written, options=options, report=report, log=log)
        written.compact(keep=[(isic_id,) for isic_id in resolution.kept])
    report.metadata = build_metadata(combined.frame, resolution.kept, order)
    report.metadata["label_conflict"] = report.metadata["isic_id"].isin(_label_conflicts(report.conflicts))
    known = set(combined.frame["isic_id"]) if len(combined.frame) else set()
    report.images_without_metadata = sum(1 for isic_id in resolution.kept if isic_id not in known)
    for name, stat in stats.items():
        stat.kept = int((report.metadata["source"] == name).sum()) if len(report.metadata) else 0
    with disk_full_errors(STAGE, out_dir):
        _write_tables(out_dir, report)
    report.seconds = time.monotonic() - started
    return report


# ----------------------------------------------------------------------------------------------
# metadata


def harmonize_source(source: SourceArchive, limits: ZipLimits) -> Harmonized:
    """Harmonize one source's CSVs, reading the ones that live inside its zip (2017, archive)."""
    files: dict[str, Any] = {role: path for role, path in source.files.items() if role not in ("images", "archive")}
    if source.format == "isic_api":
        # The API download is written in the isic-cli metadata.csv shape, the same current schema as
        # an Archive export (docs/ISIC_SOURCES.md 2.5), so one harmonizer serves both.
        return harmonize("isic_archive_zip", {"metadata": source.files["folder"] / layout.METADATA_CSV})
    if source.format == "isic2024":
        return harmonize_isic2024_source(files, source.image_zip, limits)
    if source.format == "isic_archive_zip":
        files["metadata"] = io.BytesIO(_read_csv_member(source.image_zip, "metadata.csv", limits))
    elif source.format == "isic2017" and "metadata" not in files:
        # The 2017 training zip carries ISIC-2017_Training_Data_metadata.csv (docs/ISIC_SOURCES.md 1.2).
        entries = scan_zip(source.image_zip, limits)
        inside = [e.name for e in entries if e.name.lower().endswith("_metadata.csv")]
        if inside:
            files["metadata"] = io.BytesIO(read_member(source.image_zip, inside[0], limits))
    return harmonize(source.format, files)


def _read_csv_member(archive: Path, basename: str, limits: ZipLimits) -> bytes:
    entries = scan_zip(archive, limits)
    matches = [e.name for e in entries if e.name.rsplit("/", 1)[-1].lower() == basename]
    if not matches:
        raise ValueError(f"{archive.name}: an ISIC Archive export must contain {basename}; none found")
    return read_member(archive, min(matches, key=len), limits)


def _label_conflicts(conflicts: pd.DataFrame) -> set[str]:
    """Ids whose sources disagree on benign vs malignant: the kept label is only the first source's.

    Flagged in the metadata so that training sets can leave them out (balanced_splits does by
    default) instead of trusting one release over another without saying so.
    """
    if conflicts.empty:
        return set()
    return set(conflicts.loc[conflicts["column"] == "benign_malignant", "isic_id"])


def _labelled_ids(frame: pd.DataFrame) -> set[str]:
    if frame.empty:
        return set()
    return set(frame.loc[frame["benign_malignant"].astype(str) != "", "isic_id"])


def build_metadata(
    combined: pd.DataFrame, kept: Mapping[str, dict[str, Any]], order: Mapping[str, int]
) -> pd.DataFrame:
    """One row per kept image: combined metadata (or empty where an image had none) + file facts."""
    # Column by column: a dict per image would cost about 600 bytes each at the merge's peak.
    ids = sorted(kept)
    records = [kept[isic_id] for isic_id in ids]
    columns: dict[str, list[Any]] = {
        "isic_id": ids,
        "source": [rec["source"] for rec in records],
        "image_sources": [rec["image_sources"] for rec in records],
        "image": [f"images/{isic_id}{rec['ext']}" for isic_id, rec in zip(ids, records, strict=True)],
        **{name: [rec[name] for rec in records] for name in ("width", "height", "sha256", "file_bytes",
                                                             "exif_orientation")},
    }
    del records
    facts = pd.DataFrame(columns) if ids else pd.DataFrame(
        [], columns=["isic_id", "source", "image_sources", "image", "width", "height", "sha256", "file_bytes",
                     "exif_orientation"])
    meta = combined.drop(columns=[c for c in ("source",) if c in combined.columns])
    frame = facts.merge(meta, on="isic_id", how="left")
    meta_sources = frame["sources"] if "sources" in frame else pd.Series("", index=frame.index)

    def all_sources(row_sources: Any, image_sources: list[str]) -> str:
        names = set(image_sources)
        if isinstance(row_sources, str) and row_sources:
            names.update(row_sources.split(";"))
        return ";".join(sorted(names, key=lambda n: order.get(n, 1 << 30)))

    frame["sources"] = [all_sources(s, i) for s, i in zip(meta_sources, frame["image_sources"], strict=True)]
    frame = frame.drop(columns=["image_sources"])
    for column in METADATA_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    extras = [c for c in frame.columns if c not in METADATA_COLUMNS]
    frame = frame[METADATA_COLUMNS + extras]
    # Numeric extras (ISIC 2024's tbp_* measurements) stay numbers in metadata.parquet.
    text_columns = [c for c in frame.columns if c not in ("age_approx", "width", "height", "file_bytes",
                                                          "exif_orientation")
                    and not (c in extras and pd.api.types.is_numeric_dtype(frame[c]))]
    frame[text_columns] = frame[text_columns].fillna("").astype(str)
    frame["age_approx"] = pd.array(frame["age_approx"], dtype="Int64") if len(frame) else frame["age_approx"]
    for column in ("width", "height", "file_bytes", "exif_orientation"):
        frame[column] = frame[column].astype("int64")
    return frame.sort_values("isic_id", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# scanning


def scan_source(
    source: SourceArchive,
    out_dir: Path,
    images_dir: Path,
    written: JsonlLog,
    order: Mapping[str, int],
    options: MergeOptions,
    stats: SourceStats,
    log: Log,
    skip_writes: frozenset[str] = frozenset(),
    cluster: _Cluster | None = None,
    scan: _Scan | None = None,
) -> list[dict[str, Any]]:
    """Facts about every image member of the source's zip, checking only members not seen before.

    Ids in ``skip_writes`` are checked but not written: the published duplicates list already says
    they will be dropped. Should one become the keeper after all (its partner corrupt), the final
    sync reads it from the zip then.
    """
    scan = scan or _open_scan(source, out_dir, images_dir, written, options, log)
    members, entries, state = scan.members, scan.entries, scan.state
    stats.members = len(entries)
    images = [e for e in entries if e.kind == "image"]
    stats.image_members = len(images)
    stats.other_members = sum(1 for e in entries if e.kind not in ("image", "dir"))
    stats.suspicious_names = [e.name for e in entries if is_suspicious_member_name(e.name)]
    todo = [e for e in images if state.get(e.name, e.crc, e.file_size) is None]
    stats.reused = len(images) - len(todo)
    if todo:
        log(f"{source.name}: checking {len(todo)} new image members of {members.label} "
            f"({stats.reused} already known)")
    checked = _check_members(members, todo, options) if cluster is None or not todo \
        else _check_on_cluster(cluster, members, todo, images_dir)
    try:
        for done, (entry, outcome) in enumerate(checked, start=1):
            record = _member_record(source, entry, outcome)
            data = outcome.data if outcome.data is not None else outcome.staged
            if record["status"] == "ok" and data is not None and record["isic_id"] not in skip_writes \
                    and _write_if_best(record, data, images_dir, written, order):
                stats.written += 1
                stats.bytes_written += int(record["file_bytes"])
            elif outcome.staged is not None:
                outcome.staged.unlink(missing_ok=True)
            if record.get("reason") == "time_limit":
                state.hold(record)  # perhaps only a loaded machine: checked again next run
            else:
                state.append(record)
            stats.scanned += 1
            if done % _FLUSH_EVERY == 0:
                state.flush()
                written.flush()
                log(f"{source.name}: {done}/{len(todo)} new members checked")
    finally:
        state.close()
    live = [(e.name, e.crc, e.file_size) for e in images]
    if state.needs_compaction:
        state.compact(keep=live)
    result = [state.get(*key) for key in live]
    found = [r for r in result if r is not None] + refused_records(members, source.name)
    stats.rejected = sum(1 for r in found if r["status"] != "ok")
    return found


@dataclass
class _Scan:
    """One source's members and state, opened before any writing so the work can be sized first."""

    members: MemberSource
    entries: list[ZipEntry]
    state: JsonlLog

    def bytes_to_check(self, skip_writes: frozenset[str]) -> int:
        """Uncompressed bytes of the image members not seen before (their central directory sizes)."""
        from ..ids import isic_id_from_member

        return sum(e.file_size for e in self.entries if e.kind == "image"
                   and self.state.get(e.name, e.crc, e.file_size) is None
                   and isic_id_from_member(e.name) not in skip_writes)


def _open_scan(source: SourceArchive, out_dir: Path, images_dir: Path, written: JsonlLog,
               options: MergeOptions, log: Log) -> _Scan:
    members = source.members(options.limits)
    state = _open_state(out_dir / STATE_DIR / f"{source.name}.members.jsonl", ("name", "crc", "size"),
                        _valid_member, log, f"every member of {source.name} is checked again",
                        bool(written.records) or any(images_dir.iterdir()))
    return _Scan(members, members.entries(), state)


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


def _preference(record: Mapping[str, Any], order: Mapping[str, int]) -> tuple[Any, ...]:
    """Which copy of one id to keep: most pixels (never a ``_downsampled`` one), then catalog order."""
    return (-(int(record["width"]) * int(record["height"])), order.get(record["source"], 1 << 30), record["name"])


def _write_if_best(record: dict[str, Any], data: bytes | Path, images_dir: Path, written: JsonlLog,
                   order: Mapping[str, int]) -> bool:
    """Write a freshly checked image (its bytes, or a copy a worker staged) if it beats the copy
    already written for its id."""
    isic_id = record["isic_id"]
    current = written.get(isic_id)
    target = images_dir / f"{isic_id}{record['ext']}"
    current_ok = current is not None and (images_dir / f"{isic_id}{current['ext']}").is_file()
    if current_ok and (current["sha256"] == record["sha256"]  # type: ignore[index]
                       or _preference(current, order) <= _preference(record, order)):  # type: ignore[arg-type]
        return False
    if isinstance(data, Path):
        os.replace(data, target)  # staged and fsynced by the worker: the rename is the atomic write
    else:
        atomic_write_bytes(target, data)
    if current is not None and current["ext"] != record["ext"]:
        with contextlib.suppress(FileNotFoundError):
            (images_dir / f"{isic_id}{current['ext']}").unlink()
    written.append({**_file_facts(record), "isic_id": isic_id})
    return True


def _file_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in _FILE_FACTS}


# ----------------------------------------------------------------------------------------------
# duplicate resolution


@dataclass
class Resolution:
    """The outcome of deduplication: kept file facts per id, every dropped copy, and rejected ids."""

    kept: dict[str, dict[str, Any]]
    duplicates: pd.DataFrame
    rejected: list[dict[str, Any]]


def resolve_duplicates(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    order: Mapping[str, int],
    listed_pairs: Sequence[tuple[str, str]],
    labelled: set[str],
) -> Resolution:
    """Reduce every image to one kept copy; record each dropped copy with the id kept instead.

    Three links make duplicates: the same id in several sources (keep the copy with most pixels,
    then the earliest source), byte-identical files under different ids, and pairs listed by the
    publisher (2020 duplicates CSV). The last two are transitive, so they are resolved as connected
    components; each keeps the id that has a label, then the earliest source, then the lowest id.
    """
    candidates: dict[str, list[Mapping[str, Any]]] = {}
    rejected: list[dict[str, Any]] = []
    for source_records in records.values():
        for rec in source_records:
            if rec.get("isic_id") is None:
                continue
            if rec["status"] == "ok":
                candidates.setdefault(rec["isic_id"], []).append(rec)  # no copy: 20k+ records
            else:
                rejected.append(dict(rec))
    dropped: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for isic_id, copies in candidates.items():
        copies.sort(key=lambda r: _preference(r, order))
        best[isic_id] = {**copies[0], "image_sources": sorted({c["source"] for c in copies},
                                                              key=lambda n: order.get(n, 1 << 30))}
        for other in copies[1:]:
            reason = "same_id_downsampled" if "_downsampled" in other["name"] else "same_id_other_source"
            dropped.append(_dup_row(other, isic_id, reason))

    links: list[tuple[str, str]] = list(listed_pairs)
    by_hash: dict[str, str] = {}
    for isic_id in sorted(best):
        digest = best[isic_id]["sha256"]
        if digest in by_hash:
            links.append((isic_id, by_hash[digest]))
        else:
            by_hash[digest] = isic_id
    components = connected_sets(list(best), links)
    kept: dict[str, dict[str, Any]] = {}
    for members in components:
        members.sort(key=lambda i: (i not in labelled, order.get(best[i]["source"], 1 << 30), i))
        keeper = members[0]
        kept[keeper] = best[keeper]
        for other in members[1:]:
            same_bytes = best[other]["sha256"] == best[keeper]["sha256"]
            dropped.append(_dup_row(best[other], keeper, "identical_content" if same_bytes else "listed_duplicate"))
    duplicates = pd.DataFrame(dropped, columns=DUPLICATE_COLUMNS).sort_values(
        ["kept_isic_id", "isic_id", "source"], kind="stable").reset_index(drop=True)
    return Resolution(kept=kept, duplicates=duplicates, rejected=rejected)


def presumed_listed_drops(listed_pairs: Sequence[tuple[str, str]], labelled: set[str]) -> frozenset[str]:
    """Ids the duplicates list will drop, by the keeper rule of ``resolve_duplicates`` without pixels.

    Each listed component keeps its labelled, lowest id; the others need not be written during the
    scan (the 2020 list names 425 such images, each a full-size JPEG written and deleted otherwise).
    The rule ignores source order and readability, which only the scan knows; a wrong guess costs
    one read from the zip in the final sync, never a wrong output.
    """
    ids = sorted({i for pair in listed_pairs for i in pair})
    components = connected_sets(ids, listed_pairs)
    drops: set[str] = set()
    for members in components:
        members.sort(key=lambda i: (i not in labelled, i))
        drops.update(members[1:])
    return frozenset(drops)


def _dup_row(rec: Mapping[str, Any], kept_id: str, reason: str) -> dict[str, Any]:
    return {"isic_id": rec["isic_id"], "kept_isic_id": kept_id, "reason": reason, "source": rec["source"],
            "member": rec["name"], "sha256": rec["sha256"]}


def _quarantine(records: Mapping[str, Sequence[Mapping[str, Any]]], combined: pd.DataFrame,
                resolution: Resolution) -> pd.DataFrame:
    """Every image member rejected and every metadata row left without an image, with the reason."""
    present = set(resolution.kept) | set(resolution.duplicates["isic_id"])
    rows = [
        {"isic_id": rec.get("isic_id") or "", "source": rec["source"], "member": rec["name"],
         "reason": rec.get("reason") or "rejected", "detail": rec.get("detail") or "",
         "id_kept_from_other_source": bool(rec.get("isic_id") in present)}
        for rec in resolution.rejected
    ]
    rejected_ids = {rec.get("isic_id") for rec in resolution.rejected}
    if not combined.empty:
        for isic_id, sources in combined.loc[~combined["isic_id"].isin(present), ["isic_id", "sources"]].itertuples(
                index=False):
            if isic_id in rejected_ids:
                continue  # already listed with the reason its image was rejected
            rows.append({"isic_id": isic_id, "source": sources, "member": "", "reason": "missing_image",
                         "detail": "listed in the metadata but no image with this id is in any selected zip",
                         "id_kept_from_other_source": False})
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.sort_values(["isic_id", "source", "member"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# outputs


def _sync_images(kept: Mapping[str, dict[str, Any]], sources_by_name: Mapping[str, SourceArchive],
                 images_dir: Path, written: JsonlLog, options: MergeOptions, report: MergeReport,
                 log: Log) -> None:
    """Make ``images/`` hold exactly the kept files: fill gaps from the zips, delete the rest."""
    wanted = {f"{isic_id}{rec['ext']}": (isic_id, rec) for isic_id, rec in kept.items()}
    for filename, (isic_id, rec) in sorted(wanted.items()):
        path = images_dir / filename
        current = written.get(isic_id)
        if current is not None and current["sha256"] == rec["sha256"] and path.is_file() \
                and path.stat().st_size == rec["file_bytes"]:
            continue
        if _already_there(path, rec):
            # Its record was lost (a damaged or deleted state file) but the file is the kept copy.
            written.append({**_file_facts(rec), "isic_id": isic_id})
            continue
        data = sources_by_name[rec["source"]].members(options.limits).read(rec["name"])
        atomic_write_bytes(path, data)
        written.append({**_file_facts(rec), "isic_id": isic_id})
        report.images_written += 1
        report.bytes_written += len(data)
    written.close()
    for path in images_dir.iterdir():
        if path.name not in wanted:
            path.unlink()
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


def _write_tables(out_dir: Path, report: MergeReport) -> None:
    _write_csv(out_dir / layout.METADATA_CSV, report.metadata)
    with atomic_open(out_dir / layout.METADATA_PARQUET, "wb") as handle:
        report.metadata.to_parquet(handle, index=False)
    _write_csv(out_dir / layout.DUPLICATES_CSV, report.duplicates)
    _write_csv(out_dir / layout.QUARANTINE_CSV, report.quarantine)
    _write_csv(out_dir / layout.CONFLICTS_CSV, report.conflicts)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_open(path, "w") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")
