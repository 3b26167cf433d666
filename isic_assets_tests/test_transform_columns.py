"""The transform's per-image state as fixed-width byte columns: the same rules as on Python strings.

The job table, the ids to keep, the stale-output sweep and the outputs' table hold ids and hashes
as UTF-8 bytes of a fixed width instead of Python objects; these tests pin that nothing is cut to
fit, that a malformed job is named as a one-by-one check would name it, and that every slice of a
chunked pass gives what one pass over everything gives.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.transform import runner
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.records import JobTable, TransformedOutputs, TransformJob, find_sorted
from isic_assets.core.transform.runner import transform_images

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _quiet(_message: str) -> None:
    pass


@pytest.mark.parametrize(
    "jobs,message",
    [
        # The first job in table order that breaks a rule is named, whatever rules later jobs break.
        ([("ISIC_1", A), ("ISIC_2", "not-a-hash"), ("ISIC_1", B)], "job ISIC_2: src_sha256 must be 64 lower-case "
                                                                   "hex digits, got 'not-a-hash'"),
        ([("ISIC_1", A), ("ISIC_1", "not-a-hash"), ("../x", B)], "job id ISIC_1 appears more than once"),
        ([("ISIC_2", A), ("../x", B), ("ISIC_2", C)], "job id '../x' is not a safe file name"),
        ([("ISIC_3", A), ("ISIC_2", B), ("ISIC_3", C), ("ISIC_2", A)], "job id ISIC_3 appears more than once"),
        # A value fixed-width bytes would cut short is refused, never taken for the shorter one.
        ([("ISIC_1", A), ("ISIC_2\0", B)], "job id 'ISIC_2\\x00' is not a safe file name"),
        ([("ISIC_1", A + "\0")], f"job ISIC_1: src_sha256 must be 64 lower-case hex digits, got '{A}\\x00'"),
        ([("ISIC_1", A), (7, B)], "job id 7 is not a safe file name"),
        ([("ISIC_\udc80", A)], "not a safe file name"),
        ([("ISIC_1", "A" * 64)], "job ISIC_1: src_sha256 must be 64 lower-case hex digits"),
        ([("ISIC_1", A[:-1])], "job ISIC_1: src_sha256 must be 64 lower-case hex digits"),
    ],
)
def test_the_first_malformed_job_is_named_with_its_rule(tmp_path: Path, jobs, message: str) -> None:
    listed = [TransformJob(isic_id, tmp_path / "x.jpg", digest) for isic_id, digest in jobs]
    with pytest.raises(ValueError, match=re.escape(message)):
        transform_images(listed, tmp_path / "out", TransformSettings(size=16), log=_quiet)
    assert not (tmp_path / "out").exists()


def test_a_job_table_read_in_chunks_is_the_table_of_the_whole_columns(tmp_path: Path) -> None:
    """Read a chunk at a time into columns of the widest value of any chunk: nothing cut, same jobs."""
    ids = [f"ISIC_{i:07d}" for i in (5, 3, 11, 2, 7)] + ["ISIC_LONGER_ID_0001", "ISIC_é"]
    frame = pd.DataFrame({"isic_id": ids, "image": [f"images/{i}.jpg" for i in ids], "other": "x,y",
                          "sha256": [f"{i:064x}" for i in range(7)],
                          "exif_orientation": ["", "6", "1", "", "3", "", "8"]})
    frame.to_csv(tmp_path / "metadata.csv", index=False)
    whole = JobTable(tmp_path, frame["isic_id"], frame["image"], frame["sha256"], frame["exif_orientation"])
    chunked = JobTable.read(tmp_path, tmp_path / "metadata.csv", rows=2)
    assert list(chunked) == list(whole) and len(chunked) == 7
    assert chunked[5] == TransformJob("ISIC_LONGER_ID_0001", tmp_path / "images/ISIC_LONGER_ID_0001.jpg",
                                      f"{5:064x}", 1)
    assert chunked[6].isic_id == "ISIC_é" and chunked[6].src == tmp_path / "images/ISIC_é.jpg"
    assert [job.exif_orientation for job in chunked] == [1, 6, 1, 1, 3, 1, 8]
    frame.iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    assert len(JobTable.read(tmp_path, tmp_path / "empty.csv")) == 0


def test_an_id_is_found_only_whole_never_cut_to_the_width_of_the_column() -> None:
    column = np.array([b"ISIC_1", b"ISIC_3", b"ISIC_5"])
    queries = ["ISIC_3", "ISIC_12", "ISIC_1\0", "ISIC_0", "ISIC_9", b"ISIC_5", "ISIC_1"]
    assert find_sorted(column, queries).tolist() == [1, -1, -1, -1, -1, 2, 0]
    assert find_sorted(column[:0], ["ISIC_1"]).tolist() == [-1]


def test_stale_outputs_are_deleted_chunk_by_chunk_and_an_id_prefix_is_not_kept(tmp_path: Path) -> None:
    """Only ``<wanted id>.jpg`` stays: a longer id sharing a wanted id's first bytes, another suffix, a
    temporary and a symlink go; a folder is left alone."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("ISIC_1.jpg", "ISIC_12.jpg", "ISIC_2.jpg", "ISIC_2.png", "ISIC_3.jpg", ".tmp-1.jpg", "notes"):
        (images / name).write_bytes(b"x")
    os.symlink(images / "ISIC_3.jpg", images / "ISIC_4.jpg")
    (images / "ISIC_5.jpg").mkdir()
    wanted = np.array(sorted([b"ISIC_1", b"ISIC_3", b"ISIC_4x"]))
    removed = runner._remove_unwanted_outputs(images, wanted, rows=2)
    assert sorted(p.name for p in images.iterdir()) == ["ISIC_1.jpg", "ISIC_3.jpg", "ISIC_5.jpg"]
    assert removed == 6


def test_outputs_gathered_in_slices_are_sorted_and_looked_up_as_a_whole(monkeypatch) -> None:
    monkeypatch.setattr(TransformedOutputs, "_ROWS", 3)
    order = [7, 2, 9, 4, 1, 8, 3]
    records = [{"isic_id": f"ISIC_{i}", "width": i, "height": 2 * i, "out_bytes": 100 + i, "out_sha256": f"{i:064x}"}
               for i in order]
    outputs = TransformedOutputs(iter(records))
    assert list(outputs) == [f"ISIC_{i}" for i in sorted(order)]
    # A longer id after the first slice widens the column; more records than the capacity grow it.
    longer = {"isic_id": "ISIC_0000000006", "width": 6, "height": 12, "out_bytes": 106, "out_sha256": f"{6:064x}"}
    grown = TransformedOutputs(iter([*records, longer]), capacity=2)
    assert list(grown) == sorted([*outputs, "ISIC_0000000006"]) and grown["ISIC_0000000006"].width == 6
    assert [grown[i] for i in outputs] == [outputs[i] for i in outputs]
    assert outputs["ISIC_9"].width == 9 and outputs["ISIC_9"].sha256 == f"{9:064x}"
    assert outputs["ISIC_9"].path == "images/ISIC_9.jpg" and outputs["ISIC_9"].file_bytes == 109
    assert "ISIC_5" not in outputs and "ISIC_" not in outputs and "ISIC_99" not in outputs
    assert outputs.positions(["ISIC_8", "ISIC_5", "ISIC_1"]).tolist() == [5, -1, 0]
    assert outputs.sha256_strings(np.array([0, 6])) == [f"{1:064x}", f"{9:064x}"]
    with pytest.raises(ValueError, match="two outputs"):
        TransformedOutputs(records + records[:1])
    assert len(TransformedOutputs()) == 0 and list(TransformedOutputs()) == []


def test_hashes_are_held_as_raw_bytes_and_read_back_whole() -> None:
    """A sha256 is its 32 raw bytes in both tables: one ending in zero bytes (which fixed-width bytes
    would cut short) reads back whole, and a value that is not a hash is kept as given, by position."""
    zero_tail = "ab" * 30 + "0000"
    ids = [f"ISIC_{i}" for i in range(5)]
    digests = [A, zero_tail, "A" * 64, f"{3:064x}", A + "\n"]
    table = JobTable(Path("base"), ids, ["x.jpg"] * 5, digests, [""] * 5)
    assert table.sha256.dtype.itemsize == 32
    assert [table.sha256_at(i) for i in range(5)] == digests
    assert table.bad_sha256 == {2: "A" * 64, 4: A + "\n"}
    records = [{"isic_id": i, "width": 1, "height": 1, "out_bytes": 1, "out_sha256": d}
               for i, d in zip(ids[:2], digests[:2], strict=True)]
    outputs = TransformedOutputs(iter(records))
    assert outputs["ISIC_1"].sha256 == zero_tail
    assert outputs.sha256_strings(np.array([1, 0])) == [zero_tail, A]
    with pytest.raises(ValueError, match="an output's sha256 must be 64 lower-case hex digits, got 'A"):
        TransformedOutputs(iter([{**records[0], "out_sha256": "A" * 64}]))


def test_a_bad_hash_in_a_later_chunk_is_named_as_given(tmp_path: Path) -> None:
    """The chunked read keeps each bad hash at its position in the whole table, so the first malformed
    job named is the one a check of every job in order names."""
    ids = [f"ISIC_{i:07d}" for i in range(7)]
    digests = [f"{i:064x}" for i in range(7)]
    digests[5], digests[6] = "not-a-hash", "ABC"
    frame = pd.DataFrame({"isic_id": ids, "image": [f"{i}.jpg" for i in ids], "sha256": digests,
                          "exif_orientation": ""})
    frame.to_csv(tmp_path / "metadata.csv", index=False)
    table = JobTable.read(tmp_path, tmp_path / "metadata.csv", rows=2)
    assert table.bad_sha256 == {5: "not-a-hash", 6: "ABC"}
    assert [job.src_sha256 for job in table] == digests
    with pytest.raises(ValueError, match=re.escape("job ISIC_0000005: src_sha256 must be 64 lower-case hex "
                                                   "digits, got 'not-a-hash'")):
        transform_images(table, tmp_path / "out", TransformSettings(size=16), log=_quiet)


def test_a_state_record_whose_output_hash_or_size_is_malformed_is_not_trusted() -> None:
    from isic_assets.core.transform.records import valid_record

    record = {"status": "ok", "src_sha256": A, "fingerprint": "f", "out": "images/ISIC_1.jpg", "out_bytes": 9,
              "out_sha256": B, "width": 4, "height": 4, "sum": [1, 2, 3], "sumsq": [1, 4, 9], "pixels": 16}
    assert valid_record(record)
    for damaged in ("B" * 64, B[:-1], B + "\n", 7):
        assert not valid_record({**record, "out_sha256": damaged}), damaged
    for damaged in (0, -4, 2**31, "4", 4.0):  # sizes are held as 32-bit integers
        assert not valid_record({**record, "width": damaged}), damaged
        assert not valid_record({**record, "height": damaged}), damaged


def _table_of(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"isic_id": ids, "image": [f"images/{i}.jpg" for i in ids],
                         "sha256": [f"{n:064x}" for n in range(len(ids))], "exif_orientation": ""})


@pytest.mark.parametrize("change", [
    lambda ids: ids + ["ISIC_0000009"],  # a row more than the first pass counted
    lambda ids: ids[:-1],  # a row fewer
    lambda ids: ids[:-1] + ["ISIC_LONGER_THAN_THE_FIRST_PASS"],  # wider than the column made
])
def test_a_table_rewritten_between_the_two_passes_is_an_error_naming_it(tmp_path: Path, monkeypatch,
                                                                       change) -> None:
    """Both readers of the two-pass kind (the transform's jobs, near_duplicates' columns) refuse a
    table that changed after the first pass counted and measured it: nothing cut, nothing left unset."""
    from isic_assets.core import layout
    from isic_assets.core.splits import near_dup_store

    ids = [f"ISIC_{n:07d}" for n in range(5)]
    path = tmp_path / "metadata.csv"
    first_pass = layout.row_count_and_widths

    def then_rewritten(table: Path, columns, rows):
        measured = first_pass(table, columns, rows)
        _table_of(change(ids)).to_csv(table, index=False)  # as another run would rewrite it
        return measured

    for module, read in ((layout, lambda: JobTable.read(tmp_path, path, rows=2)),
                         (near_dup_store, lambda: near_dup_store.ImageColumns.read(path, rows=2))):
        _table_of(ids).to_csv(path, index=False)
        monkeypatch.setattr(module, "row_count_and_widths", then_rewritten)
        with pytest.raises(RuntimeError, match=re.escape(f"{path} changed while it was read")):
            read()
        monkeypatch.undo()
        _table_of(ids).to_csv(path, index=False)
        assert len(read()) == 5  # unchanged between the passes: read whole
