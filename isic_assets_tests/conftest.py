"""Shared fixtures.

The real ISIC metadata CSVs are not part of the repository: they are read from the folder
``ISIC_REFERENCE_DIR`` names, or from a ``shared/isic_reference`` folder next to the checkout. Tests
that need them use the ``isic_reference`` fixture, which skips with a clear reason where they are
absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path | None:
    explicit = os.environ.get("ISIC_REFERENCE_DIR")
    candidates = [Path(explicit)] if explicit else []
    candidates.append(REPO_ROOT.parent / "shared" / "isic_reference")
    for candidate in candidates:
        if (candidate / "ISIC_2020_Training_GroundTruth_v2.csv").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def isic_reference() -> Path:
    """Folder with the real ISIC challenge CSVs; skips the test where it is absent."""
    found = _reference_dir()
    if found is None:
        pytest.skip(
            "real ISIC reference CSVs not found (set ISIC_REFERENCE_DIR or place shared/isic_reference "
            "beside the checkout); these tests check published counts against the real files"
        )
    return found


@pytest.fixture(scope="session")
def generated_demo_mirror(tmp_path_factory) -> Path:
    """The demo mirror (seed 0), generated once for the session; copy it, never write into it
    (demo_support.py says why)."""
    from .demo_support import shared_demo_mirror

    return shared_demo_mirror(tmp_path_factory)


# ----------------------------------------------------------------------------------------------
# Order of work for `pytest -n 2 --dist loadfile`
#
# loadfile hands whole files to the two workers in queue order. pytest-xdist's default queue puts the
# files with the most tests first, so the whole-graph and real-process files (one to a few tests
# each, a minute or more apiece) came last and one of them ran alone at the end while the other
# worker idled. Longest first instead (the classic rule for two machines); the first four were timed
# file by file, the rest are the other files that start real Dagster processes or whole-graph runs
# (`--durations` shows where a new one belongs). Every file not listed follows in its usual order.
LONGEST_FILES_FIRST = (
    "test_pipeline_demo.py",
    "test_e2e_ui.py",
    "test_concurrency.py",
    "test_dask.py",
    "test_cancel.py",
    "test_e2e_daemon.py",
    "test_fail_fast.py",
    "test_readme_commands.py",
    "test_sensors.py",
    "test_clean.py",
    "test_evaluation_sets.py",
    "test_dropzone.py",
    "test_isic2024.py",
    "test_dg_project.py",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist present
        config.option.loadscopereorder = False  # keep the order below (same as --no-loadscope-reorder)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
