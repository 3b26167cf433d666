"""The dropzone: a folder where a user drops ISIC files that become catalog sources.

Two shapes of drop, each described by a small sidecar YAML that names the format and the role of
every file (file names are relative to the sidecar's folder):

* a folder ``<dropzone>/<name>/`` holding the files and ``drop.yaml``: source ``dropzone_<name>``;
* loose files in the dropzone itself plus ``<dropzone>/<stem>.yaml``: source ``dropzone_<stem>``.

.. code-block:: yaml

    format: isic2019            # any catalog format, e.g. isic_archive_zip for an ISIC Archive export
    files:
      images: ISIC_2019_Training_Input.zip
      ground_truth: ISIC_2019_Training_GroundTruth.csv
      metadata: ISIC_2019_Training_Metadata.csv
    description: optional free text

A drop is *complete* when its ``.ready`` marker exists (``<name>/.ready`` or ``<stem>.ready``), or
when every file (and the sidecar) has the same size and modification time as at the previous scan.
A file still being copied changes between scans, so it is never picked up half-written; a copy that
stalls for longer than a scan interval is the one case the marker exists for.

Pure: no Dagster. The sensor keeps the previous scan in its cursor and passes it back in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from .catalog import Catalog, CatalogError, Source, parse_catalog

DEFAULT_FOLDER = "dropzone"  # under the data root, unless ISIC_DROPZONE says otherwise
PREFIX = "dropzone_"
FOLDER_SIDECAR = "drop.yaml"
READY_MARKER = ".ready"
GROUP = "dropzone"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

DropState = Literal["complete", "waiting", "invalid"]
# (size, st_mtime_ns) of each file of a drop, sidecar included, keyed by path relative to the dropzone.
Snapshot = dict[str, list[int]]


@dataclass(frozen=True)
class Drop:
    """One drop as found on disk: its sidecar, the files it names, or why it is unusable."""

    name: str
    sidecar: Path
    ready_marker: Path
    format: str | None = None
    files: Mapping[str, Path] = field(default_factory=dict)
    description: str = ""
    problem: str | None = None

    def source(self) -> Source:
        """The drop as a catalog Source with ``file://`` URLs, validated like any catalog entry."""
        if self.problem is not None:
            raise CatalogError(f"{self.sidecar}: {self.problem}")
        entry = {"format": self.format, "files": {role: path.resolve().as_uri() for role, path in self.files.items()},
                 "description": self.description or f"dropped in {self.sidecar.parent}"}
        return parse_catalog({"sources": {self.name: entry}}, origin=str(self.sidecar)).sources[self.name]

    def paths(self) -> list[Path]:
        """Every path whose size and mtime must settle before the drop is complete."""
        return [self.sidecar, *self.files.values()]


@dataclass(frozen=True)
class DropStatus:
    """A drop's state at one scan; ``snapshot`` is what the next scan compares against."""

    drop: Drop
    state: DropState
    reason: str
    snapshot: Snapshot

    @property
    def fingerprint(self) -> str:
        """Short digest of the snapshot: one value per version of the drop's files."""
        return snapshot_digest(self.snapshot)


def discover_drops(folder: Path) -> list[Drop]:
    """Every drop in ``folder`` (sorted by name), usable or not; an absent folder has none.

    A drop whose sidecar is unreadable or wrong is returned with ``problem`` set, so the user sees
    why it is ignored instead of wondering why nothing happens.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    drops = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / FOLDER_SIDECAR).is_file():
            drops.append(_read_drop(entry.name, entry / FOLDER_SIDECAR, entry / READY_MARKER))
        elif entry.is_file() and entry.suffix in (".yaml", ".yml"):
            drops.append(_read_drop(entry.stem, entry, entry.with_name(entry.stem + READY_MARKER)))
    return sorted(drops, key=lambda d: d.name)


def check_drop(drop: Drop, previous: Snapshot | None) -> DropStatus:
    """Is ``drop`` complete now, given the snapshot recorded at the previous scan (None: first scan)?"""
    if drop.problem is not None:
        return DropStatus(drop, "invalid", drop.problem, {})
    snapshot, missing = _snapshot(drop)
    if missing:
        return DropStatus(drop, "waiting", f"waiting for {', '.join(missing)}", snapshot)
    if drop.ready_marker.exists():
        return DropStatus(drop, "complete", f"{drop.ready_marker.name} marker present", snapshot)
    if previous is None:
        return DropStatus(drop, "waiting", "first seen; complete if unchanged at the next scan", snapshot)
    if previous != snapshot:
        changed = sorted(k for k in snapshot if previous.get(k) != snapshot[k])
        return DropStatus(drop, "waiting", f"still changing: {', '.join(changed)}", snapshot)
    return DropStatus(drop, "complete", "sizes and modification times unchanged since the previous scan", snapshot)


def drop_sources(folder: Path) -> list[Source]:
    """Catalog sources of every usable drop whose files are all present (completeness not judged).

    This is what a run sees: the sensor decides *when* a drop is complete; a run only needs to
    resolve the drop's name to its files.

    A drop the catalog refuses (an unknown format, a missing role) is left out, like one with a bad
    sidecar: the dropzone sensor names it as rejected on every tick, and one bad drop must not stop
    the runs of every other source.
    """
    sources = []
    for drop in discover_drops(folder):
        if drop.problem is None and all(path.is_file() for path in drop.files.values()):
            try:
                sources.append(drop.source())
            except CatalogError:
                continue
    return sources


def add_to_catalog(catalog: Catalog, sources: Iterable[Source]) -> Catalog:
    """Add dropzone sources after every other source, plus a ``dropzone`` group naming all of them.

    After, so that dropped data never changes how the built-in and user sources merge; a name that
    is already taken is an error rather than a silent replacement.
    """
    added = []
    for source in sources:
        if source.name in catalog.sources or source.name in catalog.groups:
            raise CatalogError(f"dropzone source {source.name!r} clashes with a catalog name; rename the drop")
        catalog.sources[source.name] = source
        added.append(source.name)
    if added and GROUP not in catalog.sources and GROUP not in catalog.groups:
        catalog.groups[GROUP] = tuple(added)
    return catalog


def snapshot_digest(snapshot: Snapshot) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]


def _snapshot(drop: Drop) -> tuple[Snapshot, list[str]]:
    snapshot: Snapshot = {}
    missing = []
    base = drop.sidecar.parent
    for path in drop.paths():
        key = path.relative_to(base).as_posix()
        try:
            stat = path.stat()
        except OSError:
            missing.append(key)
            continue
        snapshot[key] = [stat.st_size, stat.st_mtime_ns]
    return snapshot, missing


def _read_drop(stem: str, sidecar: Path, marker: Path) -> Drop:
    name = PREFIX + stem
    bad = Drop(name=name, sidecar=sidecar, ready_marker=marker)
    if not _NAME_RE.match(stem):
        return _invalid(bad, f"{stem!r} cannot name a source: use letters, digits, '_', '.', '-'")
    try:
        document = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return _invalid(bad, f"unreadable sidecar: {exc}")
    if not isinstance(document, dict):
        return _invalid(bad, "the sidecar must be a mapping with 'format' and 'files'")
    unknown = set(document) - {"format", "files", "description"}
    if unknown:
        return _invalid(bad, f"unknown sidecar keys {sorted(unknown)}; expected format, files, description")
    files = document.get("files")
    if not isinstance(files, dict) or not files:
        return _invalid(bad, "'files' must map each role to a file name beside the sidecar")
    paths = {}
    for role, rel in files.items():
        problem = _relative_problem(rel)
        if problem:
            return _invalid(bad, f"role {role!r}: {problem}")
        paths[str(role)] = sidecar.parent / str(rel)
    drop = Drop(name=name, sidecar=sidecar, ready_marker=marker, format=document.get("format"), files=paths,
                description=str(document.get("description") or ""))
    try:
        drop.source()  # format, roles and names are checked exactly like a catalog entry
    except CatalogError as exc:
        return _invalid(bad, str(exc).split(": ", 1)[-1])
    return drop


def _relative_problem(rel: Any) -> str | None:
    """Why ``rel`` is not a plain file name inside the drop folder, or None when it is."""
    if not isinstance(rel, str) or not rel.strip():
        return "expected a file name"
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if rel.startswith(("/", "\\")) or ".." in parts or ":" in rel:
        return f"{rel!r} must be a file name inside the drop's folder"
    return None


def _invalid(drop: Drop, problem: str) -> Drop:
    return Drop(name=drop.name, sidecar=drop.sidecar, ready_marker=drop.ready_marker, problem=problem)
