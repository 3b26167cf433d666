"""Cheap fingerprints of what a stage reads and writes, and the record of its last complete run.

A stage whose inputs and outputs look exactly as they did when its last complete run finished has
nothing to do: the Dagster layer (``defs/unchanged.py``) then re-emits the recorded result instead of
running the stage, which at 400,000 images still means reading a table of 400,000 rows and looking at
every output. Two fingerprints decide it:

* **inputs**: a digest of named parts: the stage's code (declared code version plus a digest of the
  package's source files, :func:`code_digest`), its settings (run config, selected sources and their
  catalog entries, data root) and the signature of every file or folder it reads;
* **outputs**: the signature of every file or folder it writes, compared entry by entry.

Signatures are metadata only, never file contents (reading 400,000 images is what a skip avoids):

* a file: ``size:mtime_ns``, or ``absent``;
* a folder: for the folder and every folder below it, ``entries:mtime_ns`` (a folder's mtime changes
  whenever an entry is created, deleted or renamed over, which is how every stage replaces a file:
  ``core/atomic.py``); files of folders with at most ``SMALL_FOLDER`` entries (tables, reports,
  cards, the ``_state`` journals) also get their own ``size:mtime_ns``. A stage's ``_state`` is signed
  with its outputs: a damaged or deleted state file makes the next run real, which repairs it.
  ``.tmp-`` leftovers of a killed run are not outputs and are left out.

What this cannot notice: a file in a large (image) folder whose bytes are edited in place, keeping
its name, or any file edited in place with its size and mtime restored. The ``*_readable`` checks
notice a changed size or a broken header when they run for real (force them, see :func:`forced`);
nothing short of hashing every file notices a same-size edit.

The record (``<data root>/stage_records/<stage>.json``) is written atomically after the stage's outputs
are complete, and removed before a real run starts: a killed run leaves no record, so the next run
does the work (:class:`RecordStore`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import TMP_PREFIX, atomic_open

# Bumped when what a fingerprint covers changes, so records written by older code never match.
MECHANISM_VERSION = "1"
# Files in folders up to this many entries get their own signature; larger folders (images) are
# signed by their entry count and mtime only, so signing 400,000 images stays a directory listing.
SMALL_FOLDER = 256
ABSENT = "absent"
FORCE_ENV = "ISIC_FORCE"
NO_RECORD = "no record of a complete run"
_FORCE_ALL = {"1", "true", "yes", "all", "*"}
_FORCE_NONE = {"", "0", "false", "no", "none"}
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def file_signature(path: Path) -> str:
    """``size:mtime_ns`` of a file, ``absent`` when there is none."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT
    if stat.S_ISDIR(info.st_mode):
        return f"folder:{info.st_mtime_ns}"
    return f"{info.st_size}:{info.st_mtime_ns}"


def tree_signature(folder: Path, small_folder: int = SMALL_FOLDER) -> dict[str, str]:
    """Signature of a folder and everything below it (see the module docstring), keyed by path."""
    folder = Path(folder)
    if not folder.is_dir():
        return {f"{folder}/": ABSENT}
    signatures: dict[str, str] = {}
    pending = [folder]
    while pending:
        current = pending.pop()
        count, files, subfolders = 0, [], []
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                    continue
                count += 1
                if count <= small_folder:
                    files.append(entry)
        signatures[f"{current}/"] = f"{count + len(subfolders)}:{os.stat(current).st_mtime_ns}"
        if count <= small_folder:
            for entry in files:
                info = entry.stat(follow_symlinks=False)
                signatures[entry.path] = f"{info.st_size}:{info.st_mtime_ns}"
        pending.extend(sorted(subfolders))
    return signatures


def signatures(paths: Iterable[Path]) -> dict[str, str]:
    """Signatures of ``paths``: folders with :func:`tree_signature`, anything else as a file."""
    found: dict[str, str] = {}
    for path in paths:
        if Path(path).is_dir():
            found.update(tree_signature(Path(path)))
        else:
            found[str(path)] = file_signature(Path(path))
    return found


def digest(parts: Mapping[str, Any]) -> str:
    """A stable digest of JSON-able ``parts`` (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_digest(package: Path = PACKAGE_ROOT) -> str:
    """A digest of every ``.py`` and ``.yaml`` file of the package: any edit to the code re-runs every
    stage once, whether or not someone remembered to bump a declared code version (about 1 MB read)."""
    hasher = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        hasher.update(str(path.relative_to(package)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def forced(setting: str | None, *names: str) -> bool:
    """Whether the force setting asks for the full path of a stage or check called one of ``names``.

    ``1``/``true``/``all``/``*``: every stage and check; a comma-separated list: those names;
    empty/``0``/``false``: none. An empty ``setting`` falls back to ``$ISIC_FORCE``.
    """
    words = {w.strip().lower() for w in (setting or os.environ.get(FORCE_ENV, "")).split(",")}
    words -= _FORCE_NONE
    return bool(words & _FORCE_ALL) or bool(words & {n.lower() for n in names})


def unknown_force_names(setting: str | None, known: Iterable[str]) -> list[str]:
    """Names in the force setting that are neither a keyword nor a stage or check in ``known``."""
    words = {w.strip() for w in (setting or os.environ.get(FORCE_ENV, "")).split(",")}
    allowed = {k.lower() for k in known} | _FORCE_ALL | _FORCE_NONE
    return sorted(w for w in words if w.lower() not in allowed)


@dataclass
class StageRecord:
    """What a complete run of a stage read (its input parts and their digest), wrote, and returned."""

    stage: str
    fingerprint: str
    inputs: dict[str, Any]
    outputs: dict[str, str]
    result: Any
    run_id: str = ""
    recorded_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    mechanism: str = MECHANISM_VERSION


def input_parts(code: str, settings: Mapping[str, Any], reads: Iterable[Path]) -> dict[str, Any]:
    """The named parts an inputs fingerprint is made of (kept in the record to say what changed)."""
    return {"mechanism": MECHANISM_VERSION, "code": code, "settings": dict(settings), "reads": signatures(reads)}


@dataclass(frozen=True)
class Decision:
    """Reuse the record, or run; ``reason`` says why in one line."""

    reuse: bool
    reason: str


def decide(record: StageRecord | None, fingerprint: str, inputs: Mapping[str, Any],
           outputs_now: Callable[[], dict[str, str]]) -> Decision:
    """Reuse ``record`` only if its inputs digest is ``fingerprint`` and the outputs, signed now by
    ``outputs_now()`` (only computed when the inputs match), are exactly the recorded ones."""
    if record is None:
        return Decision(False, NO_RECORD)
    if record.mechanism != MECHANISM_VERSION:
        return Decision(False, "the record was written by another version of this mechanism")
    if record.fingerprint != fingerprint:
        return Decision(False, "inputs changed: " + _differences(record.inputs, inputs))
    now = outputs_now()
    if now != record.outputs:
        return Decision(False, "outputs changed: " + _dict_differences(record.outputs, now))
    return Decision(True, f"fingerprint {fingerprint[:12]}")


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    changed = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key):
            continue
        if key == "reads":
            changed.append("reads " + _dict_differences(before.get(key) or {}, now.get(key) or {}))
        elif key == "settings":
            old, new = before.get(key) or {}, now.get(key) or {}
            changed.append("settings " + ", ".join(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)))
        else:
            changed.append(key)
    return "; ".join(changed) or "the digest"


def _dict_differences(before: Mapping[str, str], now: Mapping[str, str], limit: int = 3) -> str:
    keys = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    shown = [f"{k} ({before.get(k, ABSENT)} -> {now.get(k, ABSENT)})" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


class RecordStore:
    """One JSON record per stage or check in ``folder``; a record is only ever whole or absent."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def load(self, stage: str) -> tuple[StageRecord | None, str | None]:
        """The record, or None with a one-line note when it exists but cannot be used."""
        path = self.path(stage)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return StageRecord(**raw), None
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, TypeError) as exc:
            return None, f"record {path} is not readable ({exc.__class__.__name__}: {exc}); ignored"

    def forget(self, stage: str) -> None:
        """Remove the record before a real run: from now until that run completes, none claims it."""
        with contextlib.suppress(FileNotFoundError):
            self.path(stage).unlink()

    def save(self, record: StageRecord) -> None:
        """Write the record atomically and durably (called after the outputs are complete)."""
        with atomic_open(self.path(record.stage), "w", fsync=True) as handle:
            handle.write(json.dumps(asdict(record), sort_keys=True, default=str) + "\n")
