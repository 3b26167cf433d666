"""The code location: every asset, check, sensor and resource of isic-assets in one Definitions."""

import dagster as dg

from .dagster_layer import checks, ingest, splits, transform
from .dagster_layer.resources import IsicSettings

defs = dg.Definitions(
    assets=[
        ingest.raw_zips,
        ingest.merge_sources_asset,
        transform.transformed_images,
        transform.eda_plots,
        splits.balanced_splits,
    ],
    asset_checks=[
        checks.missing_data,
        checks.natural_class_balance,
        checks.merged_images_readable,
        checks.transformed_images_readable,
        checks.split_class_balance,
        checks.no_leakage,
        checks.split_proportions_check,
    ],
    resources={"isic": IsicSettings()},
    # Image-heavy steps parallelise inside themselves (process/thread pools); one process per step
    # would only add 1.5-2 s of imports each (DAGSTER_NOTES section 8).
    executor=dg.in_process_executor,
)
