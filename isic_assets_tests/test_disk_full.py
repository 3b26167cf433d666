"""A full disk, for real: each stage writes into a small tmpfs that runs out of space.

Two cases per stage. Known before starting: the stage measures what it will write and refuses with
the stage, the path, the bytes needed and the bytes free, having written nothing. Not known (another
process fills the disk mid-run, simulated by ballast placed from the stage's own log once its check
passed): the write fails with ENOSPC, the error names the stage, the path and the free space, no
half-written file is visible, and once the ballast is removed the next run completes with outputs
byte-identical to a run that never failed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from isic_assets.core.merge.merge_sources import merge_sources
from isic_assets.core.operation.disk_space import DiskFullError, NotEnoughSpaceError
from isic_assets.core.sources.download import DownloadJob, DownloadPolicy, download_all
from isic_assets.core.splits.assign import SplitConfig, assign_splits
from isic_assets.core.splits.grouping import build_groups
from isic_assets.core.splits.writer import write_splits
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.runner import TransformJob, transform_images

from .fault_server import FaultServer, write_random_file
from .source_support import isic2016_source, noise_jpeg
from .tmpfs_support import Ballast, mounted_tmpfs

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISIC_MIN_FREE_MB", "0")  # the tmpfs is a few MB: measure the estimate alone


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "_state" not in p.parts
            and p.name != "ballast.bin"}


def _no_temporaries(folder: Path) -> None:
    assert [p for p in folder.rglob("*") if p.name.startswith(".tmp-")] == []


def test_merge_refuses_to_start_when_the_new_members_cannot_fit(tmp_path: Path) -> None:
    source = isic2016_source(tmp_path / "src", 40, (300, 300))  # about 3.3 MB of members
    with mounted_tmpfs(tmp_path / "disk", 2) as disk:
        with pytest.raises(NotEnoughSpaceError) as caught:
            merge_sources([source], disk / "merged_data", log=lambda _m: None)
        message = str(caught.value)
        assert message.startswith("merge_sources: not enough free disk space at ")
        assert str(disk / "merged_data") in message and "still needs" in message and "is free" in message
        assert list((disk / "merged_data" / "images").iterdir()) == []


def test_merge_that_fills_the_disk_fails_clearly_and_completes_after_space_is_freed(tmp_path: Path) -> None:
    source = isic2016_source(tmp_path / "src", 40, (300, 300))
    merge_sources([source], tmp_path / "reference", log=lambda _m: None)
    reference = _snapshot(tmp_path / "reference")
    with mounted_tmpfs(tmp_path / "disk", 16) as disk:
        ballast = Ballast(disk, leave=3 * MB)
        out = disk / "merged_data"

        def log(message: str) -> None:
            if "new image members" in message:
                ballast.fill()

        with pytest.raises(DiskFullError) as caught:
            merge_sources([source], out, log=log)
        message = str(caught.value)
        assert message.startswith("merge_sources: the disk is full writing under ")
        assert str(out) in message and "free now" in message and "still needed about" in message
        _no_temporaries(out)
        kept = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
        assert 0 < len(kept) < 40  # some written, each one complete
        for name, data in kept.items():
            assert hashlib.sha256(data).hexdigest() == reference[f"images/{name}"]
        ballast.remove()
        report = merge_sources([source], out, log=lambda _m: None)
        assert report.scanned < 40  # what finished before the disk filled is not checked again
        assert _snapshot(out) == reference


def _transform_jobs(folder: Path, count: int) -> list[TransformJob]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(count):
        data = noise_jpeg(i, (400, 400))
        (folder / f"ISIC_{i:07d}.jpg").write_bytes(data)
        jobs.append(TransformJob(f"ISIC_{i:07d}", folder / f"ISIC_{i:07d}.jpg", hashlib.sha256(data).hexdigest()))
    return jobs


def test_transform_refuses_to_start_when_the_outputs_cannot_fit(tmp_path: Path) -> None:
    jobs = _transform_jobs(tmp_path / "src", 30)
    with mounted_tmpfs(tmp_path / "disk", 1) as disk:
        with pytest.raises(NotEnoughSpaceError) as caught:
            transform_images(jobs, disk / "data_transformed", TransformSettings(size=256), workers=2,
                             log=lambda _m: None)
        message = str(caught.value)
        assert message.startswith("transformed_images: not enough free disk space at ")
        assert "30 images at about" in message and "is free" in message
        assert list((disk / "data_transformed" / "images").iterdir()) == []


def test_transform_that_fills_the_disk_fails_clearly_and_completes_after_space_is_freed(tmp_path: Path) -> None:
    jobs = _transform_jobs(tmp_path / "src", 30)
    settings = TransformSettings(size=256)
    transform_images(jobs, tmp_path / "reference", settings, workers=2, log=lambda _m: None)
    reference = _snapshot(tmp_path / "reference")
    with mounted_tmpfs(tmp_path / "disk", 8) as disk:
        ballast = Ballast(disk, leave=600 * 1024)  # room for a handful of 256 px noise JPEGs
        out = disk / "data_transformed"

        def log(message: str) -> None:
            if "to write" in message:
                ballast.fill()

        with pytest.raises(DiskFullError) as caught:
            transform_images(jobs, out, settings, workers=2, log=log)
        message = str(caught.value)
        assert message.startswith("transformed_images: the disk is full writing under ")
        assert str(out) in message and "free now" in message
        _no_temporaries(out)
        assert not (out / "normalization.json").exists()
        for path in (out / "images").iterdir():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == reference[f"images/{path.name}"]
        ballast.remove()
        report = transform_images(jobs, out, settings, workers=2, log=lambda _m: None)
        assert report.quarantined == 0
        assert _snapshot(out) == reference


def test_download_that_fills_the_disk_fails_clearly_and_resumes_after_space_is_freed(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    data = write_random_file(mirror / "big.bin", 6 * MB, seed=3)
    policy = DownloadPolicy(progress_interval_s=0.0, chunk_bytes=256 * 1024, max_attempts=1)
    with FaultServer(mirror) as server, mounted_tmpfs(tmp_path / "disk", 10) as disk:
        root = disk / "downloaded_zips"
        job = DownloadJob("demo", "images", (server.url_for("big.bin"),), root / "demo" / "big.bin")
        small = Ballast(disk, leave=3 * MB)

        def log(message: str) -> None:
            if "MB/s" in message and "%" in message:  # the first progress line: the check has passed
                small.fill()

        with pytest.raises(DiskFullError) as caught:
            download_all([job], root, policy, log=log)
        message = str(caught.value)
        assert message.startswith("raw_zips: the disk is full writing under ")
        assert str(root / "demo") in message and "free now" in message
        assert not job.dest.exists()  # only the resumable .part, never a truncated file
        small.remove()
        [record] = download_all([job], root, policy, log=lambda _m: None)
        assert record.status == "resumed"
        assert job.dest.read_bytes() == data

        job.dest.unlink()
        Ballast(disk, leave=2 * MB).fill()
        with pytest.raises(NotEnoughSpaceError) as refused:
            download_all([job], root, policy, log=lambda _m: None)
        assert str(refused.value).startswith("raw_zips: not enough free disk space at ")
        assert "announces 6.29 MB" in str(refused.value)
        assert not job.dest.exists() and not job.dest.with_name("big.bin.part").exists()


def test_splits_that_fill_the_disk_fail_clearly_and_complete_after_space_is_freed(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"isic_id": f"ISIC_{i:07d}", "source": "demo", "benign_malignant": "malignant" if i % 3 == 0 else "benign",
             "patient_id": "", "lesion_id": "", "sha256": f"{i:064x}", "image": f"images/ISIC_{i:07d}.jpg"}
            for i in range(60)]
    meta = pd.DataFrame(rows)
    src = tmp_path / "data_transformed"
    (src / "images").mkdir(parents=True)
    for i in range(60):
        (src / "images" / f"ISIC_{i:07d}.jpg").write_bytes(noise_jpeg(i, (200, 200)))
    plan = assign_splits(meta, build_groups(meta, None), SplitConfig(strategy="none"))
    write_splits(plan, meta, src, tmp_path / "reference")
    reference = _snapshot(tmp_path / "reference")
    with mounted_tmpfs(tmp_path / "disk", 8) as disk:
        out = disk / "neural_network_data"
        ballast = Ballast(disk, leave=1 * MB)  # the copies (another device: no links) need ~2.5 MB
        ballast.fill()
        with pytest.raises(DiskFullError) as caught:
            write_splits(plan, meta, src, out)
        message = str(caught.value)
        assert message.startswith("balanced_splits: the disk is full writing under ")
        assert str(out) in message
        _no_temporaries(out)
        assert not (out / "manifest.csv").exists()
        for path in out.rglob("*.jpg"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == reference[path.relative_to(out).as_posix()]
        ballast.remove()
        report = write_splits(plan, meta, src, out)
        assert report.copied > 0 and "refused a hard link (EXDEV" in report.link_fallback
        assert _snapshot(out) == reference
