"""clean_intermediates: a job that frees disk by deleting folders every later step has consumed.

Run it from the UI (Jobs > clean_intermediates, targets in the launchpad), from the CLI
(``make clean-intermediates CLEAN=downloads,merged_images``), or on a schedule of your own. The op
is in the write pool and its ``isic`` resource holds the data-root lock, so it never deletes
anything while a run is writing; what each deletion costs the next run is in ``core/cleanup.py``.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..core.operation.cleanup import DEFAULT_TARGETS, TARGETS, apply_cleanup, parse_targets, plan_cleanup
from .metadata import DATA_ROOT_KEY
from .resources import WRITE_POOL, IsicSettings

TARGETS_ENV = "ISIC_CLEAN_TARGETS"


class CleanConfig(dg.Config):
    """Which folders to delete, and whether to only say what would go."""

    targets: list[str] = Field(
        default_factory=list,
        description=f"Any of {', '.join(TARGETS)}. Empty: ${TARGETS_ENV} (comma-separated), "
                    f"else {', '.join(DEFAULT_TARGETS)}.",
    )
    dry_run: bool = Field(default=False, description="Log the decisions, delete nothing.")


_PAGE = 100


def latest_materialization_in(instance: dg.DagsterInstance, asset: str, root: Path) -> float | None:
    """Time of ``asset``'s latest materialization that wrote to ``root`` (None: never).

    Several data roots can share one instance: a materialization of another root says nothing about
    this one's folders. One without the data-root entry (written before it was recorded) vouches for
    nothing either.
    """
    wanted = str(root)
    cursor = None
    while True:
        found = instance.fetch_materializations(dg.AssetKey(asset), limit=_PAGE, cursor=cursor, ascending=False)
        for record in found.records:
            materialization = record.asset_materialization
            entry = materialization.metadata.get(DATA_ROOT_KEY) if materialization is not None else None
            if entry is not None and str(entry.value) == wanted:
                return record.timestamp
        if not found.has_more:
            return None
        cursor = found.cursor


@dg.op(pool=WRITE_POOL, description="Deletes the chosen intermediate folders once every asset reading them is "
                                    "materialized after they were written; logs what each deletion costs.")
def delete_intermediate_folders(context: dg.OpExecutionContext, config: CleanConfig, isic: IsicSettings) -> None:
    targets = parse_targets(config.targets or os.environ.get(TARGETS_ENV))
    assets = sorted({a for t in targets for a in (t.written_by, *t.read_by) if a})
    decisions = plan_cleanup(isic.root(), targets,
                             {a: latest_materialization_in(context.instance, a, isic.root()) for a in assets})
    for decision in decisions:
        mb = decision.size_bytes / 1e6
        if decision.delete:
            verb = "would delete" if config.dry_run else "deleting"
            context.log.info(f"{verb} {decision.path} ({mb:.1f} MB). Cost: {decision.target.cost}")
        else:
            context.log.info(f"keeping {decision.path} ({mb:.1f} MB): {decision.reason}")
    freed = 0 if config.dry_run else apply_cleanup(decisions)
    context.log.info(f"freed {freed / 1e6:.1f} MB" + (" (dry run)" if config.dry_run else ""))


@dg.job(name="clean_intermediates",
        description="Frees disk: deletes downloaded archives, the demo mirror and (on request) full-size merged "
                    "images once the assets that read them are materialized.")
def clean_intermediates_job() -> None:
    delete_intermediate_folders()
