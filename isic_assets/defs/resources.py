"""Settings a user can drive from the environment or from the launchpad.

Each field left empty falls back to its environment variable at run time (not at load time), so the
daemon, the CLI and the UI all see the same configuration, and the launchpad can override any of it.
"""


import os
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from ..core import layout
from ..core.compute.setting import ComputeChoice, compute_from_env
from ..core.operation import data_lock
from ..core.sources import dropzone
from ..core.sources.catalog import Catalog, Source, load_catalog
from . import run_validation
from .unchanged import force_problems

# Every op that writes under the data root is in this pool; dagster.yaml limits it to one run at a
# time (granularity: run), so a queued run waits while another one writes (README "Safe operation").
WRITE_POOL = "isic_data"


class IsicSettings(dg.ConfigurableResource):
    """Where outputs go and which ISIC sources to use (ISIC_DATA_DIR, ISIC_SOURCES, ISIC_CATALOG, ISIC_COMPUTE)."""

    data_dir: str | None = Field(
        default=None, description="Root of every output. Empty: $ISIC_DATA_DIR, else data/ in the repository."
    )
    sources: str | None = Field(
        default=None, description="Comma-separated source or group names. Empty: $ISIC_SOURCES, else 'demo'."
    )
    catalog: str | None = Field(
        default=None, description="Path of a user YAML catalog added to the built-in one. Empty: $ISIC_CATALOG."
    )
    dropzone: str | None = Field(
        default=None, description="Folder of dropped sources (named dropzone_<name>, group 'dropzone'). "
                                  "Empty: $ISIC_DROPZONE, else <data root>/dropzone.",
    )
    compute: str | None = Field(
        default=None, description="Where per-image work runs: 'local' (fork pool), 'dask-local' (a Dask "
                                  "LocalCluster for the step) or a Dask scheduler address 'tcp://HOST:PORT'. "
                                  "Empty: $ISIC_COMPUTE, else local.",
    )
    force: str | None = Field(
        default=None, description="Take the full path where a no-change re-run would re-emit the last result: "
                                  "'1'/'all' for every stage and check, or a comma-separated list of their "
                                  "names. Empty: $ISIC_FORCE, else none (README 'No-change re-runs').",
    )
    _data_lock: data_lock.DataRootLock | None = PrivateAttr(default=None)

    def root(self) -> Path:
        root = layout.data_root(self.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        return root

    def path(self, *parts: str) -> Path:
        return self.root().joinpath(*parts)

    def selection(self) -> str:
        return self.sources or os.environ.get("ISIC_SOURCES") or "demo"

    def dropzone_dir(self) -> Path:
        raw = self.dropzone or os.environ.get("ISIC_DROPZONE")
        return Path(raw).expanduser().resolve() if raw else self.root() / dropzone.DEFAULT_FOLDER

    def load_catalog(self) -> Catalog:
        """Built-in + user catalog, then every usable drop of the dropzone (after them, in name order)."""
        catalog = load_catalog(self.catalog or os.environ.get("ISIC_CATALOG") or None)
        return dropzone.add_to_catalog(catalog, dropzone.drop_sources(self.dropzone_dir()))

    def selected_sources(self) -> list[Source]:
        return self.load_catalog().select(self.selection())

    def compute_choice(self) -> ComputeChoice:
        """The engine of this run's per-image work; a bad value fails naming the setting."""
        return compute_from_env(self.compute)

    def validate_run(self, run_config: dict | None) -> None:
        """Fail before any step when the data root, the catalog, the selection or a config value is wrong.

        One short error listing every problem (defs/run_validation.py), instead of a traceback from
        whichever step meets the first one minutes later.
        """
        found = run_validation.problems(run_config, self.data_dir, self.selected_sources, self.compute)
        found += force_problems(self.force)
        if found:
            # Reported in a few lines, without Dagster's stack frames; no retry can fix a setting.
            raise run_validation.RunSettingsError(found)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """In a run, hold the data root's lock: a run that bypasses the queue (CLI) waits here instead
        of writing next to another run (core/data_lock.py). Sensors and schedules only read: no lock."""
        if context.dagster_run is None or context.dagster_run.is_finished:
            # No run, or one that has ended: `dagster job execute` starts the resources again in its
            # own process after the run to read its results. Nothing is written then, and a run that
            # failed on its settings would otherwise fail a second time with a long traceback.
            return
        self.validate_run(context.dagster_run.run_config)
        self._data_lock = data_lock.acquire(self.root(), context.dagster_run.run_id, on_wait=context.log.info)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._data_lock is not None:
            self._data_lock.release()
            self._data_lock = None
