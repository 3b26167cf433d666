"""Cancelled runs: Terminate (SIGTERM to the run process) or Ctrl-C (SIGINT to the terminal's process
group) during the pool stages, with real ``dagster asset materialize`` processes.

Each must stop within seconds, leave no worker process behind, release the data-root lock, and the
next run must complete with outputs identical to a run that was never cancelled. The merge checks
on a thread pool and the transform on a process pool: those are the stages where stopping differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isic_assets.core import layout
from isic_assets.core.merge.merge_sources import SourceArchive, merge_sources
from isic_assets.core.operation import data_lock
from isic_assets.core.sources.catalog import load_catalog
from isic_assets.core.transform.image_ops import TransformSettings
from isic_assets.core.transform.runner import TransformJob, transform_images
from isic_assets_tests.e2e_support import _alive, descendants, make_dagster_home

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
IMAGES = 16
# The merge checks about 16 such images in well under a second: its test uses this many, so the signal
# still lands mid-check when the test process reading the run's output lags on a busy machine.
MERGE_IMAGES = 128
# Slow enough per image (hair removal at 512 px on 1000x750) that a signal lands mid-pool.
TRANSFORM = {"ops": {"transformed_images": {"config": {"size": 512, "hair_removal": True, "workers": 2}}}}


def _source(folder: Path, images: int = IMAGES) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(folder / "images.zip", "w") as archive:
        for i in range(images):
            pixels = rng.integers(0, 255, size=(750, 1000, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
            archive.writestr(f"part3/ISIC_{i:07d}.jpg", buffer.getvalue())
    (folder / "gt.csv").write_text("".join(f"ISIC_{i:07d},{'malignant' if i % 3 == 0 else 'benign'}\r\n"
                                           for i in range(images)))
    catalog = {"sources": {"slow": {"format": "isic2016", "files": {
        "images": (folder / "images.zip").as_uri(), "ground_truth": (folder / "gt.csv").as_uri()}}}}
    path = folder / "catalog.yaml"
    path.write_text(json.dumps(catalog))
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = make_dagster_home(tmp_path / "home")
    # Unbuffered: the test acts on the run's log lines as they are written, not when a buffer fills.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "DAGSTER_HOME": str(home), "ISIC_DATA_DIR": str(tmp_path / "data"),
            "ISIC_CATALOG": str(_source(tmp_path / "source")), "ISIC_SOURCES": "slow"}


def _materialize(env: dict[str, str], select: str, config: dict | None = None) -> subprocess.Popen:
    command = [str(DAGSTER), "asset", "materialize", "-m", "isic_assets", "--select", select]
    if config:
        command += ["--config-json", json.dumps(config)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _run(env: dict[str, str], select: str, config: dict | None = None) -> str:
    process = _materialize(env, select, config)
    out = process.communicate(timeout=600)[0]
    assert process.returncode == 0, out[-4000:]
    return out


def _wait_for(process: subprocess.Popen, needle: str) -> list[str]:
    """Read the run's output until ``needle`` appears; keep reading in the background after that."""
    lines: list[str] = []
    for line in process.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if needle in line:
            threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()  # type: ignore[arg-type]
            return lines
    raise AssertionError(f"the run ended before {needle!r}:\n{''.join(lines)[-4000:]}")


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "_state" not in p.parts}


def _cancel(process: subprocess.Popen, how: str, needle: str) -> list[str]:
    lines = _wait_for(process, needle)
    # Dagster loses a signal that arrives while it writes a log event (it captures interrupts there
    # and clears the flag on the way out), so the signal comes a moment after the line, mid-work
    # (and is sent again below if it was lost all the same).
    time.sleep(0.5)
    workers = descendants(process.pid)
    # On a loaded machine the moment after the line can again fall in a log write: a user whose
    # Ctrl-C or Terminate seemed ignored presses it again, and so does the test (at most three times).
    for _attempt in range(3):
        seen = len(lines)
        if how == "terminate":
            process.send_signal(signal.SIGTERM)  # what Dagster's terminate sends to a run process
        else:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches every process of the terminal's group
        try:
            process.wait(timeout=3)
            break
        except subprocess.TimeoutExpired:
            if any(re.search(r"interrupt|terminat|signal", line, re.IGNORECASE) for line in lines[seen:]):
                break  # the run heard it and is stopping: no second signal during its cleanup
    process.wait(timeout=60)  # "within seconds": a hang fails here
    assert process.returncode != 0, "".join(lines)[-4000:]
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "orphan worker processes"
    return lines


def test_an_interrupted_transform_stops_cleanly_and_the_next_run_completes_identically(env, tmp_path):
    """Ctrl-C: SIGINT reaches the run process and its pool workers (one process group)."""
    _run(env, "raw_zips,merged_images,merged_metadata")
    root = Path(env["ISIC_DATA_DIR"])
    process = _materialize(env, "transformed_images", TRANSFORM)
    _cancel(process, "interrupt", "to process")
    assert data_lock.current_owner(root) is None
    assert len(list((root / layout.TRANSFORMED / "images").glob("*.jpg"))) < IMAGES  # stopped mid-way
    _run(env, "transformed_images", TRANSFORM)
    # A run that never failed, straight from the same merged images with the same settings.
    settings = TransformSettings(size=512, hair_removal=True)
    metadata = layout.read_table(root / layout.MERGED / layout.METADATA_CSV)
    jobs = [TransformJob(r.isic_id, root / layout.MERGED / r.image, r.sha256, int(r.exif_orientation))
            for r in metadata.itertuples(index=False)]
    transform_images(jobs, tmp_path / "reference", settings, workers=2, log=lambda _m: None)
    produced = _snapshot(root / layout.TRANSFORMED)
    assert {k: v for k, v in produced.items() if k.startswith("images/") or k == layout.NORMALIZATION_JSON} \
        == _snapshot(tmp_path / "reference")


def test_a_terminated_merge_stops_cleanly_and_the_next_run_completes_identically(env, tmp_path):
    """Terminate in the UI: SIGTERM to the run process while the merge checks on its threads."""
    env = {**env, "ISIC_CATALOG": str(_source(tmp_path / "many", MERGE_IMAGES))}
    _run(env, "raw_zips")
    root = Path(env["ISIC_DATA_DIR"])
    process = _materialize(env, "merged_images,merged_metadata")
    _cancel(process, "terminate", "new image members")
    assert data_lock.current_owner(root) is None
    _run(env, "merged_images,merged_metadata")
    slow = load_catalog(env["ISIC_CATALOG"]).sources["slow"]
    source = SourceArchive("slow", "isic2016", 0, layout.downloaded_files(root, slow))
    merge_sources([source], tmp_path / "reference", log=lambda _m: None)
    assert _snapshot(root / layout.MERGED) == _snapshot(tmp_path / "reference")
