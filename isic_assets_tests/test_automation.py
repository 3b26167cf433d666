"""The declarative automation of the real code location, evaluated tick by tick.

Materializations and check results are recorded on a temporary instance as runless events (what the
daemon would see after a run), then ``dg.evaluate_automation_conditions`` evaluates every asset's
condition the way the automation sensor does, carrying its cursor from tick to tick.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from isic_assets.definitions import defs

ASSETS = ("raw_zips", "merged_images", "merged_metadata", "transformed_images", "eda_plots", "near_duplicates",
          "evaluation_sets", "balanced_splits")
# A Wednesday noon: far from the Monday 03:00 refresh.
START = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class Ticks:
    """Successive evaluations on one instance, one minute apart unless a time is given."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None
        self.now = START

    def __call__(self, at: dt.datetime | None = None) -> set[str]:
        self.now = at or self.now + dt.timedelta(minutes=1)
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=self.now)
        self.cursor = result.cursor
        return {key for key in ASSETS if result.get_requested_partitions(dg.AssetKey(key))}

    def materialized(self, *keys: str) -> None:
        for key in keys:
            self.instance.report_runless_asset_event(dg.AssetMaterialization(key))

    def checked(self, asset: str, check: str, passed: bool) -> None:
        self.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(asset), check_name=check, passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        ))


@pytest.fixture
def ticks():
    with dg.instance_for_test() as instance:
        yield Ticks(instance)


def _merge_done(ticks: Ticks, missing_data_passed: bool) -> None:
    ticks.materialized("merged_images", "merged_metadata")
    ticks.checked("merged_metadata", "missing_data", missing_data_passed)
    ticks.checked("merged_metadata", "balanced_dataset_buildable", True)
    ticks.checked("merged_images", "merged_images_readable", True)


def test_downstream_follows_its_upstream_once_blocking_checks_passed(ticks):
    assert ticks() == set(), "nothing is requested before anything happened, missing assets included"
    ticks.materialized("raw_zips")
    assert ticks() == {"merged_images", "merged_metadata"}
    _merge_done(ticks, missing_data_passed=True)
    # eda_plots also reads near_duplicates (the source-overlap figure), so it waits for the transform.
    assert ticks() == {"transformed_images"}
    ticks.materialized("transformed_images")
    ticks.checked("transformed_images", "transformed_images_readable", True)
    # Everything downstream reads transformed_images too, so eager asks for all of it in one tick (one run).
    assert ticks() == {"near_duplicates", "eda_plots", "evaluation_sets", "balanced_splits"}
    ticks.materialized("near_duplicates", "eda_plots", "evaluation_sets", "balanced_splits")
    assert ticks() == set(), "an up-to-date graph requests nothing"


def test_a_failed_blocking_check_stops_propagation(ticks):
    ticks()
    ticks.materialized("raw_zips")
    assert ticks() == {"merged_images", "merged_metadata"}
    _merge_done(ticks, missing_data_passed=False)
    assert ticks() == set(), "missing_data failed: nothing downstream of merged_metadata may run"
    assert ticks() == set()
    # A new merge whose checks pass releases the graph again.
    _merge_done(ticks, missing_data_passed=True)
    assert ticks() == {"transformed_images"}


def test_the_weekly_refresh_requests_raw_zips_on_monday_at_three(ticks):
    ticks()
    assert ticks(dt.datetime(2026, 11, 30, 2, 59, tzinfo=dt.UTC)) == set()
    assert "raw_zips" in ticks(dt.datetime(2026, 11, 30, 3, 1, tzinfo=dt.UTC))
    assert "raw_zips" not in ticks(dt.datetime(2026, 11, 30, 3, 2, tzinfo=dt.UTC)), "once per cron tick"


def test_the_automation_sensor_runs_by_default_and_covers_every_asset():
    sensor = next(s for s in defs.sensors if s.name == "isic_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    for key in ASSETS:
        assert graph.get(dg.AssetKey(key)).automation_condition is not None, key


def test_every_asset_has_owners_tags_and_users_assets_a_freshness_policy():
    graph = defs.resolve_asset_graph()
    for key in ASSETS:
        node = graph.get(dg.AssetKey(key))
        assert node.owners == ["team:isic-data"], key
        assert node.tags.get("isic/stage"), key
    for key in ("transformed_images", "eda_plots", "balanced_splits"):
        assert graph.get(dg.AssetKey(key)).freshness_policy is not None, key
    raw_zips = next(a for a in defs.assets if dg.AssetKey("raw_zips") in a.keys)
    policy = raw_zips.op.retry_policy
    assert policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
