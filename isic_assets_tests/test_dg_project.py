"""The repository is a dg project: `dg check defs` and `dg list defs` work from its root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).parent / "dg"

pytestmark = pytest.mark.skipif(not DG.is_file(), reason=f"{DG} is not installed (pip install -e .)")


def _dg(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
           "ISIC_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return subprocess.run([str(DG), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                          check=False)


def test_dg_check_defs_and_list_defs_from_the_repository_root(tmp_path):
    checked = _dg("check", "defs", tmp_path=tmp_path)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = _dg("list", "defs", "--json", tmp_path=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    out = listed.stdout
    for name in ("raw_zips", "merged_metadata", "balanced_splits", "balanced_dataset_buildable",
                 "isic_automation", "dropzone_sensor", "clean_intermediates"):
        assert name in out, name
