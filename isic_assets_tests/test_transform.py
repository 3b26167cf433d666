"""The transform runner: outputs, incremental skips, normalization, quarantine and crash recovery."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from isic_assets.core.transform import one_image
from isic_assets.core.transform.image_ops import TransformSettings, transform_bytes
from isic_assets.core.transform.runner import (
    NORMALIZATION_FILE,
    TransformJob,
    transform_images,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = TransformSettings(size=64)


def _quiet(_message: str) -> None:
    pass


def _jpeg(seed: int, width: int, height: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 220, size=3)
    picture = np.clip(base + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _job(folder: Path, index: int, data: bytes, exif_orientation: int = 1) -> TransformJob:
    isic_id = f"ISIC_{index:07d}"
    src = folder / f"{isic_id}.jpg"
    src.write_bytes(data)
    return TransformJob(isic_id, src, hashlib.sha256(data).hexdigest(), exif_orientation)


def _make_jobs(tmp_path: Path, count: int, start: int = 0) -> list[TransformJob]:
    folder = tmp_path / "merged" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(160, 120), (90, 130), (200, 100)]
    return [_job(folder, i, _jpeg(i, *sizes[i % 3])) for i in range(start, start + count)]


def _mtimes(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out_dir / "images").iterdir()}


def _assert_clean_outputs(out_dir: Path) -> None:
    """No temporaries anywhere and every output decodes completely."""
    leftovers = [p for p in out_dir.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    for path in (out_dir / "images").iterdir():
        assert simplejpeg.decode_jpeg(path.read_bytes(), strict=True).shape[2] == 3


def test_first_run_writes_every_output_and_reports_them(tmp_path: Path) -> None:
    """Each id gets images/<id>.jpg at the configured size, listed in the report."""
    jobs = _make_jobs(tmp_path, 6)
    out = tmp_path / "data_transformed"
    report = transform_images(jobs, out, SETTINGS, workers=2, log=_quiet)
    assert (report.processed, report.skipped, report.removed, report.quarantined) == (6, 0, 0, 0)
    assert sorted(report.images) == [job.isic_id for job in jobs]
    for job in jobs:
        result = report.images[job.isic_id]
        assert result.path == f"images/{job.isic_id}.jpg"
        data = (out / result.path).read_bytes()
        assert simplejpeg.decode_jpeg(data).shape == (result.height, result.width, 3) == (64, 64, 3)
        assert result.file_bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    _assert_clean_outputs(out)


def test_exif_orientation_of_the_job_is_applied(tmp_path: Path) -> None:
    """The orientation recorded at merge time reaches the decode: a landscape stored image with
    Orientation=6 comes out as portrait (pad bands left and right, not above and below)."""
    folder = tmp_path / "src"
    folder.mkdir()
    picture = np.full((50, 100, 3), 200, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=95)
    job = _job(folder, 1, buffer.getvalue(), exif_orientation=6)
    out = tmp_path / "out"
    transform_images([job], out, SETTINGS, workers=1, log=_quiet)
    pixels = simplejpeg.decode_jpeg((out / "images" / f"{job.isic_id}.jpg").read_bytes())
    assert pixels[32, :10].max() < 20 and pixels[:10, 32].min() > 150


def test_second_run_processes_nothing_and_leaves_outputs_untouched(tmp_path: Path) -> None:
    """A no-change re-materialization must not decode or rewrite anything."""
    jobs = _make_jobs(tmp_path, 5)
    out = tmp_path / "out"
    first = transform_images(jobs, out, SETTINGS, log=_quiet)
    before = _mtimes(out)
    second = transform_images(jobs, out, SETTINGS, log=_quiet)
    assert (second.processed, second.skipped) == (0, 5)
    assert _mtimes(out) == before
    assert second.images == first.images
    assert second.normalization == first.normalization


def test_a_settings_change_reprocesses_everything(tmp_path: Path) -> None:
    """New settings -> new fingerprint -> every output is redone at the new size."""
    jobs = _make_jobs(tmp_path, 4)
    out = tmp_path / "out"
    transform_images(jobs, out, SETTINGS, log=_quiet)
    report = transform_images(jobs, out, TransformSettings(size=32, mode="stretch"), log=_quiet)
    assert (report.processed, report.skipped) == (4, 0)
    assert {(r.width, r.height) for r in report.images.values()} == {(32, 32)}
    saved = json.loads((out / NORMALIZATION_FILE).read_text())
    assert saved["settings"]["size"] == 32 and saved["image_count"] == 4


def test_only_changed_sources_are_redone_and_dropped_ids_are_removed(tmp_path: Path) -> None:
    """New bytes for one id redo that id only; ids no longer asked for lose their outputs."""
    jobs = _make_jobs(tmp_path, 5)
    out = tmp_path / "out"
    transform_images(jobs, out, SETTINGS, log=_quiet)
    changed = _job(jobs[1].src.parent, 1, _jpeg(99, 120, 120))
    kept = [jobs[0], changed, jobs[2]]
    report = transform_images(kept, out, SETTINGS, log=_quiet)
    assert (report.processed, report.skipped, report.removed) == (1, 2, 2)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{j.isic_id}.jpg" for j in kept]
    assert report.normalization["image_count"] == 3
    with contextlib.closing(sqlite3.connect(out / "_state" / "transform.sqlite")) as db:
        recorded = [json.loads(text)["isic_id"] for (text,) in db.execute("SELECT record FROM records")]
    assert sorted(recorded) == sorted(j.isic_id for j in kept)


def test_normalization_matches_numpy_including_images_skipped_this_run(tmp_path: Path) -> None:
    """mean/std come from stored exact sums, so images skipped this run still count, and the
    result equals numpy over every output pixel (before encoding) of the whole set."""
    first_jobs = _make_jobs(tmp_path, 4)
    out = tmp_path / "out"
    transform_images(first_jobs, out, SETTINGS, log=_quiet)
    all_jobs = first_jobs + _make_jobs(tmp_path, 3, start=4)
    report = transform_images(all_jobs, out, SETTINGS, log=_quiet)
    assert (report.processed, report.skipped) == (3, 4)

    pixels = np.concatenate(
        [transform_bytes(job.src.read_bytes(), SETTINGS)[1].reshape(-1, 3) for job in all_jobs]
    ).astype(np.float64)
    saved = json.loads((out / NORMALIZATION_FILE).read_text())
    assert saved == report.normalization
    assert saved["image_count"] == 7 and saved["pixel_count"] == len(pixels)
    np.testing.assert_allclose(saved["mean_255"], pixels.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(saved["std_255"], pixels.std(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(saved["mean"], pixels.mean(axis=0) / 255, rtol=0, atol=1e-12)
    np.testing.assert_allclose(saved["std"], pixels.std(axis=0) / 255, rtol=0, atol=1e-12)
    decoded = np.concatenate(
        [simplejpeg.decode_jpeg((out / r.path).read_bytes()).reshape(-1, 3) for r in report.images.values()]
    )
    assert np.abs(decoded.mean(axis=0) - pixels.mean(axis=0)).max() < 0.5  # what training reads


def test_normalization_of_flat_colours_is_known_in_closed_form(tmp_path: Path) -> None:
    """Two flat images, (10,20,30) and (50,60,70): mean is the midpoint, std half the distance."""
    folder = tmp_path / "src"
    folder.mkdir()
    jobs = []
    for index, colour in enumerate([(10, 20, 30), (50, 60, 70)]):
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(buffer, format="PNG")
        jobs.append(_job(folder, index, buffer.getvalue()))
    report = transform_images(jobs, tmp_path / "out", TransformSettings(size=16, mode="stretch"), log=_quiet)
    np.testing.assert_allclose(report.normalization["mean_255"], [30, 40, 50])
    np.testing.assert_allclose(report.normalization["std_255"], [20, 20, 20])
    assert report.normalization["pixel_count"] == 2 * 16 * 16


def test_a_corrupt_input_is_quarantined_with_a_reason_and_the_rest_succeed(tmp_path: Path) -> None:
    """One truncated file must not stop the run; it is listed with why, and remembered."""
    jobs = _make_jobs(tmp_path, 4)
    data = jobs[2].src.read_bytes()
    jobs[2] = _job(jobs[2].src.parent, 2, data[: len(data) // 2])
    out = tmp_path / "out"
    report = transform_images(jobs, out, SETTINGS, log=_quiet)
    assert report.processed == 3
    [row] = report.quarantine
    assert row.isic_id == jobs[2].isic_id and row.src == str(jobs[2].src)
    assert "Premature end of JPEG file" in row.reason
    assert not (out / "images" / f"{jobs[2].isic_id}.jpg").exists()
    again = transform_images(jobs, out, SETTINGS, log=_quiet)
    assert (again.processed, again.skipped, again.quarantine) == (0, 4, report.quarantine)


def test_an_unreadable_source_is_reported_and_retried_next_time(tmp_path: Path) -> None:
    """A missing file (a merge still running, a disk hiccup) may be fine later: report it in the
    quarantine rows but do not remember it, so the next run tries again and succeeds."""
    jobs = _make_jobs(tmp_path, 2)
    data = jobs[1].src.read_bytes()
    jobs[1].src.unlink()
    out = tmp_path / "out"
    report = transform_images(jobs, out, SETTINGS, log=_quiet)
    [row] = report.quarantine
    assert row.isic_id == jobs[1].isic_id and "cannot read source" in row.reason
    jobs[1].src.write_bytes(data)
    again = transform_images(jobs, out, SETTINGS, log=_quiet)
    assert (again.processed, again.skipped, again.quarantined) == (1, 1, 0)


@pytest.mark.parametrize(
    "jobs_factory,message",
    [
        (
            lambda p: [TransformJob("ISIC_1", p, "a" * 64), TransformJob("ISIC_1", p, "b" * 64)],
            "more than once",
        ),
        (lambda p: [TransformJob("../escape", p, "a" * 64)], "not a safe file name"),
        (lambda p: [TransformJob("ISIC_1", p, "not-a-hash")], "src_sha256"),
    ],
)
def test_malformed_jobs_are_refused_before_any_work(tmp_path: Path, jobs_factory, message: str) -> None:
    """Duplicate or path-like ids are caller bugs; failing early protects the output folder."""
    with pytest.raises(ValueError, match=message):
        transform_images(jobs_factory(tmp_path / "x.jpg"), tmp_path / "out", SETTINGS, log=_quiet)


def test_a_worker_that_dies_on_an_image_loses_nothing_and_the_next_run_does_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder crash kills its worker (os._exit, as a segfault would). The run must finish the
    other images, quarantine the killer after it kills a lone worker too, leave no half-written
    file, and the next run (crash gone) must process exactly the one image left."""
    jobs = _make_jobs(tmp_path, 24)
    killer = jobs[9].src.read_bytes()
    real = one_image.transform_bytes

    def crashing(data: bytes, settings: TransformSettings, exif_orientation: int = 1):
        if data == killer:
            os._exit(70)
        return real(data, settings, exif_orientation)

    monkeypatch.setattr(one_image, "transform_bytes", crashing)  # inherited by the forked workers
    out = tmp_path / "out"
    report = transform_images(jobs, out, SETTINGS, workers=2, log=_quiet)
    assert report.worker_restarts >= 1
    assert report.processed == 23
    [row] = report.quarantine
    assert row.isic_id == jobs[9].isic_id and "worker process died" in row.reason
    _assert_clean_outputs(out)
    assert len(list((out / "images").iterdir())) == 23

    monkeypatch.setattr(one_image, "transform_bytes", real)
    resumed = transform_images(jobs, out, SETTINGS, workers=2, log=_quiet)
    assert (resumed.processed, resumed.skipped, resumed.quarantined) == (1, 23, 0)
    _assert_clean_outputs(out)


def test_a_worker_killed_once_by_the_system_is_retried_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL from outside (the OOM killer) is not the image's fault: the images that were in
    flight are retried alone and succeed, so nothing is quarantined."""
    jobs = _make_jobs(tmp_path, 16)
    marker = tmp_path / "killed-once"
    real = one_image.transform_bytes

    def killed_once(data: bytes, settings: TransformSettings, exif_orientation: int = 1):
        if data == jobs[5].src.read_bytes() and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, settings, exif_orientation)

    monkeypatch.setattr(one_image, "transform_bytes", killed_once)
    out = tmp_path / "out"
    report = transform_images(jobs, out, SETTINGS, workers=2, log=_quiet)
    assert marker.exists() and report.worker_restarts >= 1
    assert (report.processed, report.quarantined) == (16, 0)
    _assert_clean_outputs(out)


_SLOW_RUN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from isic_assets.core.transform import one_image, runner as transform
    from isic_assets.core.transform.image_ops import TransformSettings

    real = one_image.transform_bytes
    def slow(data, settings, exif_orientation=1):
        time.sleep(0.15)
        return real(data, settings, exif_orientation)
    one_image.transform_bytes = slow
    jobs = [transform.TransformJob(j["isic_id"], Path(j["src"]), j["sha"]) for j in json.loads(sys.argv[1])]
    transform.transform_images(jobs, Path(sys.argv[2]), TransformSettings(size=64), workers=2, log=print)
    """
)


def _finished_in_journals(state_dir: Path) -> int:
    lines = [line for p in state_dir.glob("transform.worker-*.jsonl") for line in p.read_text().splitlines()]
    return sum('"status": "ok"' in line for line in lines)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_run_killed_mid_way_resumes_where_it_stopped(tmp_path: Path) -> None:
    """The run process is SIGKILLed, as when a Dagster run worker is. Its pool workers must die
    with it (no orphans holding the run lock), outputs on disk are all complete, and the next run
    redoes only what was not finished."""
    jobs = _make_jobs(tmp_path, 20)
    out = tmp_path / "out"
    payload = json.dumps([{"isic_id": j.isic_id, "src": str(j.src), "sha": j.src_sha256} for j in jobs])
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, payload, str(out)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while _finished_in_journals(out / "_state") < 4 and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        process.kill()  # the parent only: its workers must follow by themselves
        process.wait()
        deadline = time.monotonic() + 10
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(process.pid), "pool workers outlived the killed run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    finished = _finished_in_journals(out / "_state")
    assert 4 <= finished < 20
    for path in (out / "images").glob("*.jpg"):  # only complete files under final names
        simplejpeg.decode_jpeg(path.read_bytes(), strict=True)

    resumed = transform_images(jobs, out, SETTINGS, workers=2, log=_quiet)
    assert resumed.skipped >= finished
    assert resumed.processed == 20 - resumed.skipped
    assert len(resumed.images) == 20
    _assert_clean_outputs(out)
    assert list((out / "_state").glob("transform.worker-*")) == []


def test_a_second_run_on_the_same_folder_is_refused_while_one_is_going(tmp_path: Path) -> None:
    """Two materializations at once would delete each other's temporaries: the second must stop."""
    jobs = _make_jobs(tmp_path, 1)
    out = tmp_path / "out"
    (out / "_state").mkdir(parents=True)
    with (out / "_state" / "transform.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another transform run"):
            transform_images(jobs, out, SETTINGS, log=_quiet)
    assert transform_images(jobs, out, SETTINGS, log=_quiet).processed == 1


_BUSY_PARENT_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import cv2, numpy as np
    from isic_assets.core.transform import runner as transform
    from isic_assets.core.transform.image_ops import TransformSettings

    cv2.setNumThreads(2)
    big = np.zeros((2000, 2000, 3), np.float32)
    cv2.GaussianBlur(big, (31, 31), 0)  # starts OpenCV's thread pool in the parent
    src = Path(sys.argv[1])
    job = transform.TransformJob("ISIC_0000001", src, sys.argv[2])
    report = transform.transform_images([job], Path(sys.argv[3]), TransformSettings(size=32), log=print)
    assert report.processed == 1, report
    assert cv2.getNumThreads() == 2, cv2.getNumThreads()  # the parent's setting is restored
    print("done")
    """
)


def test_a_parent_that_already_used_opencv_threads_can_still_fork_workers(tmp_path: Path) -> None:
    """OpenCV's thread pool does not survive fork: before the fix, a worker forked from a process
    that had run any multi-threaded cv2 call hung forever on its first cv2 call. Run in a child
    process with a timeout so a regression fails instead of hanging the suite."""
    [job] = _make_jobs(tmp_path, 1)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _BUSY_PARENT_RUN, str(job.src), job.src_sha256, str(tmp_path / "out")],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("transform_images hung in a process that had used OpenCV threads")
    assert process.returncode == 0 and "done" in output, output


def test_jobs_as_columns_and_tables_written_in_chunks_match_the_whole_table(tmp_path: Path) -> None:
    """The asset hands the runner a JobTable (four columns, jobs made on demand) and writes metadata.csv
    from chunks of the merged table: the same outputs, report and bytes as a list of jobs and the whole
    table, whatever the chunk size; ids the merged table lists without an output are left out."""
    import pandas as pd

    from isic_assets.core import layout
    from isic_assets.core.transform.records import JobTable
    from isic_assets.core.transform.tables import transformed_column_types, write_transform_tables

    jobs = _make_jobs(tmp_path, 7)
    merged = tmp_path / "merged"
    table = JobTable(merged, [j.isic_id for j in jobs], [f"images/{j.isic_id}.jpg" for j in jobs],
                     [j.src_sha256 for j in jobs], ["", "1", "1", "", "1", "1", "1"])
    assert list(table) == jobs and table[2:4] == jobs[2:4] and len(table) == 7
    report = transform_images(table, tmp_path / "out", SETTINGS, workers=2, log=_quiet)
    assert report.processed == 7 and list(report.images) == sorted(j.isic_id for j in jobs)
    assert "ISIC_9999999" not in report.images and jobs[3].isic_id in report.images
    csv = tmp_path / "merged.csv"
    pd.DataFrame({"isic_id": [*(j.isic_id for j in reversed(jobs)), "ISIC_9999999"], "image": "x.jpg",
                  "width": "10", "height": "20", "sha256": "ab", "note": ["", "a,b", "\"q\"", "", "é", "", "", "z"]}
                 ).to_csv(csv, index=False)
    whole_dir, chunked_dir = tmp_path / "whole", tmp_path / "chunked"
    whole_dir.mkdir()
    chunked_dir.mkdir()
    whole = write_transform_tables(layout.read_table(csv), report, SETTINGS, whole_dir)
    chunked = write_transform_tables(layout.read_table_chunks(csv, rows=3), report, SETTINGS, chunked_dir)
    assert (chunked_dir / "metadata.csv").read_bytes() == (whole_dir / "metadata.csv").read_bytes()
    assert whole == chunked and whole.rows == 7 and whole.own_types["width"] == "int"
    written = layout.read_table(whole_dir / "metadata.csv")
    assert written["isic_id"].tolist() == [j.isic_id for j in reversed(jobs)]
    assert written["sha256"].tolist() == [report.images[i].sha256 for i in written["isic_id"]]
    assert transformed_column_types(chunked, {"width": "int"})["source_width"] == "int"
