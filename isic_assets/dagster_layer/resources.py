"""Settings a user can drive from the environment or from the launchpad.

Each field left empty falls back to its environment variable at run time (not at load time), so the
daemon, the CLI and the UI all see the same configuration, and the launchpad can override any of it.
"""


import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..core.catalog import Catalog, Source, load_catalog

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``data/`` in the repository for a checkout (editable install), else ``data/`` in the cwd."""
    repo = PACKAGE_ROOT.parent
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / "data"


class IsicSettings(dg.ConfigurableResource):
    """Where outputs go and which ISIC sources to use (ISIC_DATA_DIR, ISIC_SOURCES, ISIC_CATALOG)."""

    data_dir: str | None = Field(
        default=None, description="Root of every output. Empty: $ISIC_DATA_DIR, else data/ in the repository."
    )
    sources: str | None = Field(
        default=None, description="Comma-separated source or group names. Empty: $ISIC_SOURCES, else 'demo'."
    )
    catalog: str | None = Field(
        default=None, description="Path of a user YAML catalog added to the built-in one. Empty: $ISIC_CATALOG."
    )

    def root(self) -> Path:
        raw = self.data_dir or os.environ.get("ISIC_DATA_DIR") or str(default_data_dir())
        root = Path(raw).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def path(self, *parts: str) -> Path:
        return self.root().joinpath(*parts)

    def selection(self) -> str:
        return self.sources or os.environ.get("ISIC_SOURCES") or "demo"

    def load_catalog(self) -> Catalog:
        return load_catalog(self.catalog or os.environ.get("ISIC_CATALOG") or None)

    def selected_sources(self) -> list[Source]:
        return self.load_catalog().select(self.selection())
