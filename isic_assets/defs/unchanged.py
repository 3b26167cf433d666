"""No-change re-runs: a stage or check whose inputs and outputs are as its last complete run left them
re-emits that run's result (same metadata, same data version) instead of running.

What is compared, what it cannot notice and where the record lives: ``core/stage_fingerprint.py``.
Here, the Dagster side: each asset hands over its settings, the files and folders it reads and
writes, and the function that does the real work; this module decides, logs the decision, and keeps
the record. The inputs' code part is the asset's declared ``code_version`` (the one Dagster shows and
uses for staleness) plus a digest of the package's source, so an edit that forgot to bump the
declared version still re-runs the stage.

A skipped stage logs ``unchanged: skipped (fingerprint ...)`` and its materialization carries
``isic/unchanged = true``, ``isic/recorded_by_run`` (the run whose work it re-emits) and
``isic/fingerprint``; the counters of work done "this run" are 0. ``ISIC_FORCE`` (or the ``force``
field of the ``isic`` resource) takes the full path: ``1``/``all`` for everything, or a
comma-separated list of stage and check names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from ..core import layout
from ..core.compute.allocator import return_free_memory
from ..core.sources.catalog import Source
from ..core.stage_fingerprint import (
    NO_RECORD,
    RecordStore,
    StageRecord,
    code_digest,
    decide,
    digest,
    forced,
    input_parts,
    signatures,
    unknown_force_names,
)

UNCHANGED_KEY = "isic/unchanged"
FINGERPRINT_KEY = "isic/fingerprint"
RECORDED_BY_KEY = "isic/recorded_by_run"

# Every name ISIC_FORCE accepts besides the keywords: steps (op names), the assets they materialize,
# and the checks.
STAGE_NAMES = ("merge_sources", "merged_images", "merged_metadata", "transformed_images", "near_duplicates",
               "evaluation_sets", "eda_plots", "balanced_splits")
CHECK_NAMES = ("missing_data", "balanced_dataset_buildable", "merged_images_readable", "transformed_images_readable",
               "split_class_balance", "no_leakage", "no_evaluation_leakage", "split_proportions")


def force_problems(setting: str | None) -> list[str]:
    """A run-settings problem for each name in the force setting that names nothing."""
    unknown = unknown_force_names(setting, (*STAGE_NAMES, *CHECK_NAMES))
    if not unknown:
        return []
    return [f"ISIC_FORCE (or the isic resource's force) = {setting!r}: unknown name(s) {', '.join(unknown)}; "
            f"accepted: 1/all, or a comma-separated list of {', '.join((*STAGE_NAMES, *CHECK_NAMES))}"]


def source_identity(sources: Iterable[Source]) -> list[dict[str, Any]]:
    """What the catalog says about each selected source, in merge order (a catalog edit is a change)."""
    return [{"name": s.name, "format": s.format, "purpose": s.purpose, "api": repr(s.api),
             "files": {role: [list(f.urls), f.sha256] for role, f in sorted(s.files.items())}} for s in sources]


def _store(root: Path) -> RecordStore:
    return RecordStore(root / layout.STAGE_RECORDS)


def _code(declared: Iterable[str | None]) -> str:
    return f"{','.join(sorted(str(v) for v in declared))}+{code_digest()[:16]}"


def materialize_unless_unchanged(
    context: dg.AssetExecutionContext, root: Path, force: str | None, *, settings: Mapping[str, Any],
    reads: Sequence[Path], writes: Sequence[Path], run: Callable[[], Iterable[dg.MaterializeResult]],
    zero_on_skip: Sequence[str] = (),
) -> list[dg.MaterializeResult]:
    """The recorded results when nothing changed since the stage's last complete run, else ``run()``'s.

    ``reads`` are signed before ``run()`` starts (a change during the run shows at the next one);
    ``writes`` after it returns, when the record is written. ``zero_on_skip``: metadata keys counting
    this run's work, 0 when the stage is skipped."""
    stage = context.op_def.name
    names = (stage, *(key.to_user_string() for key in context.assets_def.keys))
    parts = input_parts(_code(context.assets_def.code_versions_by_key.values()), {"data_root": str(root), **settings},
                        reads)
    fingerprint = digest(parts)
    store = _store(root)
    reason = _reuse_or_reason(context, store, stage, stage, force, names, fingerprint, parts, writes)
    if isinstance(reason, StageRecord):
        return [_thaw(item, reason, zero_on_skip) for item in reason.result]
    _say_why(context, stage, "running", reason)
    store.forget(stage)
    results = list(run())
    # The in-process executor runs the asset's checks next in this process: hand back what the stage
    # freed (the merge step left 790 MiB resident at 401,059 images).
    return_free_memory()
    store.save(StageRecord(stage, fingerprint, parts, signatures(writes), [_freeze(r) for r in results],
                           run_id=context.run.run_id))
    return [_mark(r, fingerprint) for r in results]


def check_unless_unchanged(
    context: dg.AssetCheckExecutionContext, root: Path, force: str | None, *, name: str, code_version: str,
    settings: Mapping[str, Any], reads: Sequence[Path], run: Callable[[], dg.AssetCheckResult],
) -> dg.AssetCheckResult:
    """The recorded verdict when the files the check reads and its settings are as at its last run.

    A check's verdict is a function of what it reads and its config, so re-emitting it is as honest as
    the stage's skip; the ``*_readable`` checks then do not open the images again (force them to)."""
    record_name = f"check.{name}"
    parts = input_parts(_code([code_version]), {"data_root": str(root), **settings}, reads)
    fingerprint = digest(parts)
    store = _store(root)
    reason = _reuse_or_reason(context, store, record_name, name, force, (name,), fingerprint, parts, ())
    if isinstance(reason, StageRecord):
        saved = reason.result
        return dg.AssetCheckResult(
            passed=saved["passed"], severity=dg.AssetCheckSeverity(saved["severity"]),
            description=saved["description"],
            metadata={**dg.deserialize_value(saved["metadata"], dict), **_skip_marks(reason)},
        )
    _say_why(context, name, "checking", reason)
    store.forget(record_name)
    result = run()
    return_free_memory()  # the next check or asset of the run starts from what is live, not from this one's peak
    saved = {"passed": bool(result.passed), "severity": result.severity.value, "description": result.description,
             "metadata": dg.serialize_value(_normalized(result.metadata or {}))}
    store.save(StageRecord(record_name, fingerprint, parts, {}, saved, run_id=context.run.run_id))
    return result._replace(metadata={**(result.metadata or {}), UNCHANGED_KEY: False, FINGERPRINT_KEY: fingerprint})


def _reuse_or_reason(context, store: RecordStore, stage: str, shown: str, force: str | None, names: Sequence[str],
                     fingerprint: str, parts: Mapping[str, Any], writes: Sequence[Path]) -> StageRecord | str:
    """The record to re-emit, or why the real work runs."""
    if forced(force, *names):
        return "forced by ISIC_FORCE"
    record, note = store.load(stage)
    if note:
        context.log.warning(note)
    decision = decide(record, fingerprint, parts, lambda: signatures(writes))
    if not decision.reuse:
        return decision.reason
    assert record is not None
    context.log.info(f"{shown} unchanged: skipped ({decision.reason}; the result of run {record.run_id} "
                     f"recorded {record.recorded_at})")
    return record


def _say_why(context, name: str, doing: str, reason: str) -> None:
    """Why the real work runs: in the terminal when something changed; only in the run's full log on a
    first run (no record yet), where it would add a line per step and check saying nothing new."""
    log = context.log.debug if reason == NO_RECORD else context.log.info
    log(f"{name}: {doing} ({reason})")


def _skip_marks(record: StageRecord) -> dict[str, Any]:
    return {UNCHANGED_KEY: True, FINGERPRINT_KEY: record.fingerprint, RECORDED_BY_KEY: record.run_id}


def _mark(result: dg.MaterializeResult, fingerprint: str) -> dg.MaterializeResult:
    return result._replace(metadata={**(result.metadata or {}), UNCHANGED_KEY: False, FINGERPRINT_KEY: fingerprint})


def _freeze(result: dg.MaterializeResult) -> dict[str, Any]:
    return {
        "asset_key": result.asset_key.to_user_string() if result.asset_key else None,
        "metadata": dg.serialize_value(_normalized(result.metadata or {})),
        "data_version": result.data_version.value if result.data_version else None,
    }


def _thaw(saved: Mapping[str, Any], record: StageRecord, zero_on_skip: Sequence[str]) -> dg.MaterializeResult:
    metadata = dg.deserialize_value(saved["metadata"], dict)
    metadata.update({key: 0 for key in zero_on_skip if key in metadata})
    return dg.MaterializeResult(
        asset_key=dg.AssetKey.from_user_string(saved["asset_key"]) if saved["asset_key"] else None,
        metadata={**metadata, **_skip_marks(record)},
        data_version=dg.DataVersion(saved["data_version"]) if saved["data_version"] else None,
    )


def _normalized(metadata: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    """Plain values as the MetadataValue Dagster would store, so the record serializes and reads back."""
    return {key: _metadata_value(value) for key, value in metadata.items()}


def _metadata_value(value: Any) -> dg.MetadataValue:
    if isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, dg.TableSchema):
        return dg.MetadataValue.table_schema(value)
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.json(value)
