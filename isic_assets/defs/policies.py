"""When and how each asset runs, and who looks after it: automation conditions, the automation
sensor, retries, freshness, owners and tags. The asset modules take their settings from here.

Automation (docs/DAGSTER_NOTES.md section 2):

* raw_zips refreshes every Monday at 03:00 UTC (``on_cron``). Unchanged files are not downloaded again
  and known images are not decoded again, so the weekly pass is cheap; it also repairs what a failed
  sensor-launched run left.
* Every other asset updates when an upstream asset was updated by a run that did not already include
  it (``eager``), and only once every blocking check of its upstream assets has passed
  (``all_deps_blocking_checks_passed``): a merge whose ``missing_data`` check failed is not prepared
  further until a new merge passes.
* ``isic_automation`` evaluates these conditions and starts RUNNING: Dagster's own default automation
  sensor starts STOPPED, and conditions that nothing evaluates would do nothing.
"""

from datetime import timedelta

import dagster as dg

WEEKLY_REFRESH_CRON = "0 3 * * 1"

RAW_ZIPS_AUTOMATION = dg.AutomationCondition.on_cron(WEEKLY_REFRESH_CRON)
DOWNSTREAM_AUTOMATION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()

automation_sensor = dg.AutomationConditionSensorDefinition(
    "isic_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: raw_zips every Monday 03:00 UTC, every other "
                "asset once its upstream changed and the upstream's blocking checks passed.",
)

# raw_zips is the one step that talks to remote servers. The downloader already retries each request
# (with backoff, then the next mirror); this retries the whole step when a server stays away for
# longer, e.g. a bucket's maintenance window: after about 1, 2 and 4 minutes, each +/- a random share
# so that several deployments do not come back at the same instant.
NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=60, backoff=dg.Backoff.EXPONENTIAL,
                               jitter=dg.Jitter.PLUS_MINUS)

# What users train on and read: with the weekly refresh, more than a week without a materialization
# means a refresh failed. WARN after 8 days, FAIL after 15 (two refreshes missed).
USER_FACING_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=15),
                                                       warn_window=timedelta(days=8))

OWNERS = ["team:isic-data"]


def stage_tags(stage: str) -> dict[str, str]:
    """Tags that let the UI filter by pipeline stage (the core sub-package of the same name)."""
    return {"isic/stage": stage, "isic/dataset": "isic-archive"}
