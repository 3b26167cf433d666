"""What the no-change fingerprints notice and what they cannot (core/stage_fingerprint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isic_assets.core.stage_fingerprint import (
    RecordStore,
    StageRecord,
    decide,
    digest,
    forced,
    input_parts,
    signatures,
    tree_signature,
    unknown_force_names,
)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    (folder / "images").mkdir(parents=True)
    for i in range(5):
        (folder / "images" / f"ISIC_{i:07d}.jpg").write_bytes(b"x" * (100 + i))
    (folder / "metadata.csv").write_text("isic_id\n")
    # Written an hour ago, as outputs are when a later run looks at them: the kernel's clock ticks
    # are coarser than nanoseconds, and a change within the same tick could keep an mtime.
    hour_ago = (os.stat(folder).st_mtime_ns - 3600 * 10**9,) * 2
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, ns=hour_ago)
    return folder


@pytest.mark.parametrize("change", ["delete", "add", "replace", "edit_table", "delete_table", "new_subfolder"])
def test_every_change_a_stage_makes_is_noticed(outputs: Path, change: str) -> None:
    before = tree_signature(outputs, small_folder=2)  # images/ counts as a large folder here
    images = outputs / "images"
    if change == "delete":
        (images / "ISIC_0000000.jpg").unlink()
    elif change == "add":
        (images / "ISIC_0000009.jpg").write_bytes(b"y")
    elif change == "replace":  # how every stage writes: a temporary name renamed over the file
        (images / ".tmp-x.jpg").write_bytes(b"z" * 100)
        os.replace(images / ".tmp-x.jpg", images / "ISIC_0000000.jpg")
    elif change == "edit_table":
        (outputs / "metadata.csv").write_text("isic_id\nISIC_0000001\n")
    elif change == "delete_table":
        (outputs / "metadata.csv").unlink()
    else:
        (outputs / "more").mkdir()
    assert tree_signature(outputs, small_folder=2) != before


def test_what_it_cannot_notice_a_same_size_edit_in_place_with_its_mtime_put_back(outputs: Path) -> None:
    """The documented limit: bytes edited in place in a large folder, size and mtime restored. The
    readable checks (forced) notice a broken header; nothing cheap notices more."""
    before = tree_signature(outputs, small_folder=2)
    image = outputs / "images" / "ISIC_0000002.jpg"
    info = os.stat(image)
    folder_info = os.stat(image.parent)
    with image.open("r+b") as handle:
        handle.write(b"\xff")
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.utime(image.parent, ns=(folder_info.st_atime_ns, folder_info.st_mtime_ns))
    assert tree_signature(outputs, small_folder=2) == before


def test_temporaries_of_a_killed_run_are_not_outputs(outputs: Path) -> None:
    before = tree_signature(outputs)
    assert not any(".tmp-" in key for key in before)
    assert f"{outputs}/metadata.csv" in before and f"{outputs}/images/ISIC_0000000.jpg" in before
    assert before[f"{outputs}/images/"].startswith("5:")


def test_a_missing_file_or_folder_is_absent(tmp_path: Path) -> None:
    assert signatures([tmp_path / "nothing.csv", tmp_path / "no_folder"]) == {
        str(tmp_path / "nothing.csv"): "absent", str(tmp_path / "no_folder"): "absent"}


def test_decide_reuses_only_when_inputs_and_outputs_both_match(outputs: Path) -> None:
    parts = input_parts("1", {"size": 256}, [outputs / "metadata.csv"])
    record = StageRecord("stage", digest(parts), parts, signatures([outputs]), result=None)
    assert decide(record, digest(parts), parts, lambda: signatures([outputs])).reuse
    assert decide(None, digest(parts), parts, lambda: {}).reason == "no record of a complete run"
    other = input_parts("1", {"size": 128}, [outputs / "metadata.csv"])
    assert decide(record, digest(other), other, lambda: {}).reason == "inputs changed: settings size"
    code = input_parts("2", {"size": 256}, [outputs / "metadata.csv"])
    assert decide(record, digest(code), code, lambda: {}).reason == "inputs changed: code"
    (outputs / "images" / "ISIC_0000001.jpg").unlink()
    decision = decide(record, digest(parts), parts, lambda: signatures([outputs]))
    assert not decision.reuse and decision.reason.startswith("outputs changed: ")
    assert "ISIC_0000001.jpg" in decision.reason


def test_a_record_is_whole_or_absent_and_a_damaged_one_is_ignored(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records")
    assert store.load("merge") == (None, None)
    store.save(StageRecord("merge", "f" * 64, {}, {}, result={"a": 1}, run_id="r1"))
    loaded, note = store.load("merge")
    assert note is None and loaded.result == {"a": 1} and loaded.run_id == "r1"
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["merge.json"]
    store.forget("merge")
    assert store.load("merge") == (None, None)
    store.path("merge").write_text('{"stage": "merge", "fingerp')
    loaded, note = store.load("merge")
    assert loaded is None and "is not readable" in note and str(store.path("merge")) in note


def test_force_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISIC_FORCE", raising=False)
    assert not forced(None, "eda_plots") and not forced("0", "eda_plots")
    assert forced("1", "eda_plots") and forced("all", "x") and forced("eda_plots, merge_sources", "eda_plots")
    assert not forced("merge_sources", "eda_plots")
    monkeypatch.setenv("ISIC_FORCE", "eda_plots")
    assert forced(None, "eda_plots") and not forced("0", "eda_plots")
    assert unknown_force_names("eda_plot,all", ["eda_plots"]) == ["eda_plot"]
