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

