"""A hanging decoder: one image past the per-image time limit is quarantined, its worker replaced.

The hang is real as far as the runner can tell: the image's decode never returns (the function that
decodes it is replaced by one that sleeps for an hour, inherited by the forked workers), so only
the limit can end it.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from isic_assets.core.merge import image_check
from isic_assets.core.merge.merge_sources import MergeOptions, SourceArchive, merge_sources
from isic_assets.core.transform import one_image
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.runner import TransformJob, transform_images

HANG_SIDE = 77  # the one image whose decode hangs is recognised by its width


def _jpeg(seed: int, width: int = 64, height: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_transform_quarantines_an_image_past_the_time_limit_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    real = one_image.transform_bytes

    def hangs_on_one(data: bytes, settings, orientation=1):
        with Image.open(io.BytesIO(data)) as image:
            if image.width == HANG_SIDE:
                time.sleep(60)  # hangs: only SIGALRM's default action ends it before then
        return real(data, settings, orientation)

    monkeypatch.setattr(one_image, "transform_bytes", hangs_on_one)
    src = tmp_path / "src"
    src.mkdir()
    jobs = []
    for i in range(8):
        data = _jpeg(i, HANG_SIDE if i == 3 else 64)
        (src / f"ISIC_{i:07d}.jpg").write_bytes(data)
        jobs.append(TransformJob(f"ISIC_{i:07d}", src / f"ISIC_{i:07d}.jpg", hashlib.sha256(data).hexdigest()))
    out = tmp_path / "out"
    report = transform_images(jobs, out, TransformSettings(size=32), workers=2, log=lambda _m: None,
                              time_limit_s=1.5)
    assert report.processed == 7 and report.worker_restarts >= 1
    [row] = report.quarantine
    assert row.isic_id == "ISIC_0000003"
    assert "per-image time limit of 1.5 s" in row.reason and "retried on the next run" in row.reason
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"ISIC_{i:07d}.jpg" for i in range(8) if i != 3]


def test_merge_check_quarantines_an_image_past_the_time_limit_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    real = image_check.inspect_image

    release = threading.Event()

    def hangs_on_one(data: bytes, name: str):
        if "0000003" in name:
            release.wait(60)  # a stuck decoder; without the limit the merge would wait, then accept it
        return real(data, name)

    monkeypatch.setattr(image_check, "inspect_image", hangs_on_one)
    folder = tmp_path / "src"
    folder.mkdir()
    archive = folder / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(8):
            zf.writestr(f"a/ISIC_{i:07d}.jpg", _jpeg(i))
    (folder / "a.csv").write_text("".join(f"ISIC_{i:07d},benign\r\n" for i in range(8)))
    source = SourceArchive(name="a", format="isic2016", order=0,
                           files={"images": archive, "ground_truth": folder / "a.csv"})
    try:
        report = merge_sources([source], tmp_path / "merged", MergeOptions(workers=2, check_time_limit_s=1.0),
                               log=lambda _m: None)
    finally:
        release.set()  # let the abandoned thread finish
    assert len(report.metadata) == 7
    row = report.quarantine[report.quarantine["isic_id"] == "ISIC_0000003"].iloc[0]
    assert row["reason"] == "time_limit" and "per-image time limit of 1 s" in row["detail"]
    # Not remembered: the next run (the decoder no longer hangs) checks that member again, and keeps it.
    again = merge_sources([source], tmp_path / "merged", MergeOptions(workers=2), log=lambda _m: None)
    assert again.scanned == 1 and len(again.metadata) == 8
