"""The code location: every asset, check, sensor and resource of isic-assets in one Definitions."""

import dagster as dg

from .dagster_layer import checks, ingest
from .dagster_layer.resources import IsicSettings

defs = dg.Definitions(
    assets=[ingest.raw_zips, ingest.merge_sources_asset],
    asset_checks=[checks.missing_data],
    resources={"isic": IsicSettings()},
    # Image-heavy steps parallelise inside themselves (thread/process pools); one process per step
    # would only add 1.5-2 s of imports each (DAGSTER_NOTES section 8).
    executor=dg.in_process_executor,
)
