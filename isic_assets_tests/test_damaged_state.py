"""Damaged state files under _state/: a torn last line, garbage lines, a truncated or overwritten
SQLite file, a deleted file.

Each case runs the real merge or transform on real zips and JPEGs, damages the state the way a power
loss or a disk would, and checks the next run: it says so once, redoes only what it cannot trust,
never skips an image whose output is missing or stale, and ends with outputs byte-identical to an
undamaged run.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from isic_assets.core.merge.merge_sources import merge_sources
from isic_assets.core.merge.state_store import STATE_FILE as MERGE_STATE_FILE
from isic_assets.core.scan_state import JsonlLog
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.records import LEGACY_STATE_FILE
from isic_assets.core.transform.runner import STATE_DIR, STATE_FILE, TransformJob, transform_images

from .source_support import isic2016_source, noise_jpeg


def _snapshot(folder: Path) -> dict[str, str]:
    """Every output file (state excluded) by relative path, with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "_state" not in p.parts}


def _tear_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])


def _garble(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"\x00\x00garbage from a bad sector\n"
    lines.insert(2, b'{"isic_id": "ISIC_0000002", "status": "ok"}\n')  # JSON, but not a usable record
    path.write_bytes(b"".join(lines))


DAMAGE = {"torn": _tear_last_line, "garbage": _garble, "deleted": Path.unlink}


def _truncate_database(path: Path) -> None:
    """Cut the file short, as a full disk or a copy stopped midway would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def _overwrite_header(path: Path) -> None:
    """Garbage over the start: no longer an SQLite file at all."""
    data = path.read_bytes()
    path.write_bytes(b"\x00\x00garbage from a bad sector" + data[29:])


DATABASE_DAMAGE = {"truncated": _truncate_database, "garbage": _overwrite_header, "deleted": Path.unlink}


@pytest.mark.parametrize("damage", sorted(DATABASE_DAMAGE))
def test_merge_rebuilds_damaged_state_and_restores_missing_outputs(tmp_path: Path, damage: str) -> None:
    state_file = MERGE_STATE_FILE
    source = isic2016_source(tmp_path / "src", 6)
    out = tmp_path / "merged"
    merge_sources([source], out, log=lambda _m: None)
    reference = _snapshot(out)
    DATABASE_DAMAGE[damage](out / "_state" / state_file)
    (out / "images" / "ISIC_0000001.jpg").unlink()  # an output whose record may survive
    messages: list[str] = []
    merge_sources([source], out, log=messages.append)
    assert _snapshot(out) == reference
    told = [m for m in messages if state_file in m]
    assert len(told) == 1, messages
    assert ("missing" in told[0]) == (damage == "deleted")
    assert (out / "_state" / f"{state_file}.damaged").exists() == (damage != "deleted")
    # The state was rewritten: a third run says nothing about it and writes nothing.
    messages.clear()
    report = merge_sources([source], out, log=messages.append)
    assert not [m for m in messages if "state file" in m]
    assert report.images_written == 0 and report.scanned == 0
    assert _snapshot(out) == reference


def _jobs(folder: Path, count: int = 6) -> list[TransformJob]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(count):
        data = noise_jpeg(i, (120, 90))
        (folder / f"ISIC_{i:07d}.jpg").write_bytes(data)
        jobs.append(TransformJob(f"ISIC_{i:07d}", folder / f"ISIC_{i:07d}.jpg", hashlib.sha256(data).hexdigest()))
    return jobs


@pytest.mark.parametrize("damage", sorted(DATABASE_DAMAGE))
def test_transform_rebuilds_damaged_state_and_never_skips_a_missing_or_stale_output(tmp_path: Path,
                                                                                    damage: str) -> None:
    jobs = _jobs(tmp_path / "src")
    out = tmp_path / "transformed"
    settings = TransformSettings(size=32)
    transform_images(jobs, out, settings, workers=1, log=lambda _m: None)
    reference = _snapshot(out)
    state = out / STATE_DIR / STATE_FILE
    DATABASE_DAMAGE[damage](state)
    (out / "images" / "ISIC_0000003.jpg").unlink()  # missing output, record intact
    stale = out / "images" / "ISIC_0000004.jpg"
    stale.write_bytes(stale.read_bytes()[:100])  # cut short: stale whatever the record says
    messages: list[str] = []
    report = transform_images(jobs, out, settings, workers=1, log=messages.append)
    assert _snapshot(out) == reference
    assert report.processed >= 2 and report.quarantined == 0
    told = [m for m in messages if "state file" in m]
    assert len(told) == 1, messages
    assert ("missing" in told[0]) == (damage == "deleted")
    assert (out / STATE_DIR / f"{STATE_FILE}.damaged").exists() == (damage != "deleted")
    messages.clear()
    again = transform_images(jobs, out, settings, workers=1, log=messages.append)
    assert not [m for m in messages if "state file" in m]
    assert again.processed == 0 and again.skipped == len(jobs)
    assert _snapshot(out) == reference


def test_an_append_after_a_torn_line_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"k": 1, "v": "a"}\n{"k": 2, "v"')
    log = JsonlLog(path, ("k",))
    assert log.damage is not None and "cut short" in log.damage
    log.append({"k": 3, "v": "c"})
    log.close()
    again = JsonlLog(path, ("k",))
    assert again.damage is None
    assert sorted(r["k"] for r in again.values()) == [1, 3]


def _as_earlier_version(out: Path) -> Path:
    """Turn ``out``'s state into what the version before SQLite left: ``transform.jsonl``, one line
    per record in id order, and no database."""
    database = out / STATE_DIR / STATE_FILE
    legacy = out / STATE_DIR / LEGACY_STATE_FILE
    with contextlib.closing(sqlite3.connect(database)) as db:
        lines = [text for (text,) in db.execute("SELECT record FROM records ORDER BY key")]
    legacy.write_text("".join(line + "\n" for line in lines))
    database.unlink()
    return legacy


@pytest.mark.parametrize("damage", [None, "torn", "garbage"])
def test_an_earlier_transform_jsonl_is_imported_once_and_only_damaged_lines_are_redone(
        tmp_path: Path, damage: str | None) -> None:
    jobs = _jobs(tmp_path / "src")
    out = tmp_path / "transformed"
    settings = TransformSettings(size=32)
    transform_images(jobs, out, settings, workers=1, log=lambda _m: None)
    reference = _snapshot(out)
    legacy = _as_earlier_version(out)
    if damage is not None:
        DAMAGE[damage](legacy)  # torn: the last record cut short; garbage: the second one overwritten
    messages: list[str] = []
    report = transform_images(jobs, out, settings, workers=1, log=messages.append)
    assert _snapshot(out) == reference
    assert not legacy.exists() and (out / STATE_DIR / STATE_FILE).is_file()
    assert [m for m in messages if "moved into" in m] == [
        f"transform: {len(jobs) - (damage is not None)} record(s) of the earlier state file {LEGACY_STATE_FILE} "
        f"moved into {STATE_FILE}; their images are not transformed again"]
    assert len([m for m in messages if "damaged line" in m]) == (damage is not None), messages
    assert (report.processed, report.skipped) == ((1, 5) if damage else (0, 6))
    messages.clear()
    again = transform_images(jobs, out, settings, workers=1, log=messages.append)
    assert (again.processed, again.skipped) == (0, len(jobs))
    assert not [m for m in messages if "state file" in m or "moved into" in m], messages
