"""The two sensors, for what automation conditions cannot see: remote files and the dropzone.

Both request raw_zips and everything downstream of it (checks included); the pool on every writing
asset (``WRITE_POOL``) makes such a run wait while another one writes. What they probe and how they
decide lives in ``core/sources/watch.py``; here they only turn a decision into a run request.

Default statuses, as a user would expect them:

* ``isic_sources_sensor`` starts STOPPED (Dagster's default): it polls remote servers and a change
  means a download of many GB, so it is switched on deliberately. Its first evaluation only records
  the fingerprints: turning it on for an already materialized graph launches nothing.
* ``dropzone_sensor`` starts RUNNING: it only looks at a local folder, and dropping files there with
  a sidecar is already the user's explicit request to ingest them.

The weekly refresh is an automation condition on raw_zips (``defs/policies.py``).
"""

import os

import dagster as dg

from ..core.sources.catalog import CatalogError
from ..core.sources.demo_url import demo_mirror_url
from ..core.sources.watch import WatchDecision, evaluate_dropzone, evaluate_sources
from .resources import IsicSettings

# raw_zips and everything downstream of it: today the whole graph, and still right if a second root
# (an API source, say) is added later.
REFRESH_TARGET = dg.AssetSelection.assets("raw_zips").downstream()


def _interval(env: str, default: int) -> int:
    """Evaluation interval from ``env`` (read when the code location loads), for tests and impatient users."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{env} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


SOURCES_INTERVAL_S = _interval("ISIC_SENSOR_INTERVAL_S", 3600)
DROPZONE_INTERVAL_S = _interval("ISIC_DROPZONE_INTERVAL_S", 30)


def _result(context: dg.SensorEvaluationContext, decision: WatchDecision,
            run_config: dict | None = None) -> dg.SensorResult:
    if decision.run_key is None:
        return dg.SensorResult(skip_reason=decision.skip_reason, cursor=decision.cursor)
    if decision.log:
        context.log.info(decision.log)
    request = dg.RunRequest(run_key=decision.run_key, run_config=run_config or {}, tags=decision.tags)
    return dg.SensorResult(run_requests=[request], cursor=decision.cursor)


@dg.sensor(
    name="isic_sources_sensor",
    target=REFRESH_TARGET,
    minimum_interval_seconds=SOURCES_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Asks every file of the selected sources for its ETag, Last-Modified and size (conditional "
                "HEAD); a changed file launches one run of raw_zips and everything downstream. The first "
                "evaluation only records fingerprints. Interval: $ISIC_SENSOR_INTERVAL_S (default 3600 s).",
)
def isic_sources_sensor(context: dg.SensorEvaluationContext, isic: IsicSettings) -> dg.SensorResult | dg.SkipReason:
    try:
        sources = isic.selected_sources()
    except CatalogError as exc:
        return dg.SkipReason(f"cannot resolve the selected sources: {exc}")
    return _result(context, evaluate_sources(sources, context.cursor, demo_mirror_url(), isic.selection()))


@dg.sensor(
    name="dropzone_sensor",
    target=REFRESH_TARGET,
    minimum_interval_seconds=DROPZONE_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches $ISIC_DROPZONE (default <data root>/dropzone/) for dropped sources described by a "
                "sidecar YAML; a complete new drop (a .ready marker, or sizes and times unchanged between two "
                "scans) launches one run of the whole graph with the drop added to the selected sources.",
)
def dropzone_sensor(context: dg.SensorEvaluationContext, isic: IsicSettings) -> dg.SensorResult | dg.SkipReason:
    folder = isic.dropzone_dir()
    decision = evaluate_dropzone(folder, context.cursor, isic.selection(),
                                 lambda selection: isic.load_catalog().select(selection))
    run_config = {"resources": {"isic": {"config": {"sources": decision.selection, "dropzone": str(folder)}}}}
    return _result(context, decision, run_config if decision.run_key else None)
