"""The code location: every asset, check, sensor and resource of isic-assets in one Definitions."""

import warnings

import dagster as dg

from .defs import (
    checks,
    cleanup,
    eda,
    evaluation,
    merge,
    near_duplicates,
    policies,
    sensors,
    sources,
    splits,
    transform,
)
from .defs.checked_executor import checked_multiprocess_executor
from .defs.resources import IsicSettings

# Two BetaWarnings a user can do nothing about, printed on every terminal run: the yaml-defined run-log
# handler (.dagster_home/dagster.yaml, which is how every run gets its log file) and Dagster's own
# `--select '*'` parsing. Only these two messages are silenced; every other warning still shows.
warnings.filterwarnings("ignore", message=r"Handling yaml-defined logging configuration", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=r"Parameter `include_sources` of function `AssetSelection.all`",
                        category=dg.BetaWarning)

# The whole graph on the multiprocess executor, for a machine with memory to spare. max_concurrent is
# explicit because memory, not the CPU count (the executor's default), bounds image steps: a step
# process holds ~270 MB before any work (measured), transformed_images adds `workers` processes each
# holding a decoded full-size image, and the merge keeps its worker threads' images in memory. A
# default (editable in the launchpad or with -c), not `.configured()`: a configured executor silently
# ignores the run config's execution block (docs/DAGSTER_NOTES.md section 6).
materialize_all_multiprocess = dg.define_asset_job(
    "materialize_all_multiprocess",
    selection=dg.AssetSelection.all(),
    executor_def=checked_multiprocess_executor,
    config={"execution": {"config": {"max_concurrent": 2}}},
    description="The whole graph with one process per step, at most 2 at once (see definitions.py).",
)

defs = dg.Definitions(
    assets=[
        sources.raw_zips,
        merge.merge_sources_asset,
        transform.transformed_images,
        eda.eda_plots,
        near_duplicates.near_duplicates,
        evaluation.evaluation_sets,
        splits.balanced_splits,
    ],
    asset_checks=[
        checks.missing_data,
        checks.balanced_dataset_buildable,
        checks.merged_images_readable,
        checks.transformed_images_readable,
        checks.split_class_balance,
        checks.no_leakage,
        checks.no_evaluation_leakage,
        checks.split_proportions,
    ],
    sensors=[sensors.isic_sources_sensor, sensors.dropzone_sensor, policies.automation_sensor],
    jobs=[cleanup.clean_intermediates_job, materialize_all_multiprocess],
    resources={"isic": IsicSettings()},
    # Image-heavy steps parallelise inside themselves (process/thread pools); one process per step
    # would only add 1.5-2 s of imports each (docs/DAGSTER_NOTES.md section 8), and the graph is a chain with
    # little to overlap. materialize_all_multiprocess above is the explicit alternative.
    executor=dg.in_process_executor,
)
