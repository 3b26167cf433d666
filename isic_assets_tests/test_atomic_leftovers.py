"""The sweep of a killed run's ``.tmp-*`` leftovers, and the emptiness test, on folders of many entries.

Both run on folders that hold one file per image (merged_data/images, data_transformed/images). They
read the folder an entry at a time: tracemalloc (Python's own allocations, deterministic) shows the
sweep holds only the leftovers' names, where ``Path.glob`` held the whole listing first.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from isic_assets.core.atomic import TMP_PREFIX, atomic_write_bytes, has_entries, remove_stale_temporaries


def _folder_of(tmp_path: Path, files: int, leftovers: int) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(files):
        (folder / f"ISIC_{number:07d}.jpg").write_bytes(b"")
    for number in range(leftovers):
        (folder / f"{TMP_PREFIX}{number}.jpg").write_bytes(b"half")
    return folder


def test_only_the_leftovers_go_and_they_are_counted(tmp_path):
    folder = _folder_of(tmp_path, files=50, leftovers=3)
    (folder / "notes.tmp-1").write_bytes(b"")  # the prefix, not anywhere in the name
    (folder / "sub").mkdir()
    (folder / "sub" / f"{TMP_PREFIX}deeper").write_bytes(b"")  # not recursive

    assert remove_stale_temporaries(folder) == 3
    names = set(os.listdir(folder))
    assert not any(name.startswith(TMP_PREFIX) for name in names)
    assert len(names) == 50 + 2
    assert (folder / "sub" / f"{TMP_PREFIX}deeper").exists()
    assert remove_stale_temporaries(folder) == 0


def test_a_missing_folder_or_a_file_has_nothing_to_sweep(tmp_path):
    assert remove_stale_temporaries(tmp_path / "absent") == 0
    (tmp_path / "a_file").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "a_file") == 0


def test_a_leftover_folder_is_an_error_not_skipped(tmp_path):
    (tmp_path / f"{TMP_PREFIX}folder").mkdir()  # never written by atomic_open: someone else's
    with pytest.raises(IsADirectoryError):
        remove_stale_temporaries(tmp_path)


def test_an_atomic_write_killed_midway_is_what_the_sweep_removes(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, b"{}")
    # A leftover as a killed process leaves it: the temporary sibling atomic_open writes to.
    leftover = tmp_path / f"{TMP_PREFIX}abc123.json"
    leftover.write_bytes(b"{\"half")
    assert remove_stale_temporaries(tmp_path) == 1
    assert target.read_bytes() == b"{}" and not leftover.exists()


def test_the_sweep_holds_the_leftovers_names_not_the_listing(tmp_path):
    folder = _folder_of(tmp_path, files=20_000, leftovers=2)
    tracemalloc.start()
    try:
        assert remove_stale_temporaries(folder) == 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Listing 20,000 entries first (Path.glob, os.listdir) holds megabytes of names and entries.
    assert peak < 256 * 1024, peak


def test_has_entries(tmp_path):
    assert not has_entries(tmp_path / "absent")
    folder = tmp_path / "images"
    folder.mkdir()
    assert not has_entries(folder)
    (folder / f"{TMP_PREFIX}x").write_bytes(b"")  # a leftover is an entry: the callers sweep first
    assert has_entries(folder)
    (tmp_path / "a_file").write_bytes(b"")
    assert not has_entries(tmp_path / "a_file")
