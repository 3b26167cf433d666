"""Every asset check of the graph, in one module.

Each check's metadata carries the threshold it applied and the value it measured, so a failed check
explains itself on the asset page without opening a log.
"""


from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.eda.tables import MetadataFacts
from ..core.merge.quality import (
    CHECK_BATCH,
    CHECK_PROCESSES,
    GROUPING_COLUMNS,
    LABEL_COLUMN,
    class_counts,
    share_without_grouping_key,
    unreadable_images,
)
from ..core.splits.checks import LEAK_KEYS, CheckOutcome, class_balance, leakage, original_ids
from ..core.splits.checks import split_proportions as measure_split_proportions
from ..core.splits.evaluation import evaluation_leakage
from ..core.splits.feasibility import balanced_dataset_feasibility
from ..core.splits.grouping import stripped_text
from ..core.splits.near_duplicates import read_pairs
from ..core.splits.planning import read_plan_table
from .evaluation import evaluation_source_names
from .merge import MERGED_IMAGES, MERGED_METADATA
from .metadata import table_metadata
from .resources import IsicSettings
from .splits import BalancedSplitsConfig, balanced_splits, read_manifest, read_plan, split_config
from .transform import transformed_images
from .unchanged import check_unless_unchanged, source_identity

# Columns a training set is expected to have; their missing share is reported on every run.
CORE_COLUMNS = ["benign_malignant", "diagnosis", "age_approx", "sex", "anatom_site_general", "patient_id",
                "lesion_id"]


class MissingDataConfig(dg.Config):
    """Thresholds of the missing_data check, in percent of rows."""

    max_missing_label_pct: float = Field(
        default=5.0, ge=0, le=100,
        description="ERROR (blocks downstream) when more rows than this have no benign_malignant label.",
    )
    max_missing_other_pct: float = Field(
        default=50.0, ge=0, le=100, description="WARN when another core column misses more than this.",
    )


def _read_transformed(isic: IsicSettings, columns: tuple[str, ...]) -> pd.DataFrame:
    return layout.read_table(isic.path(layout.TRANSFORMED, layout.METADATA_CSV), columns=columns)


# What the leakage checks compare: ids, the link keys and which sources listed an image.
LEAK_COLUMNS = ("isic_id", "source", "sources", *LEAK_KEYS)


# Bumped when a check's verdict would change for the same files and config (with the package digest
# that every record also holds, see defs/unchanged.py).
CHECK_CODE_VERSION = "1"


def _unless_unchanged(context: dg.AssetCheckExecutionContext, isic: IsicSettings, name: str,
                      config: dg.Config | None, reads: list[Path], run, **settings) -> dg.AssetCheckResult:
    """The check's recorded verdict when what it reads and its config are unchanged, else ``run()``'s."""
    return check_unless_unchanged(context, isic.root(), isic.force, name=name, code_version=CHECK_CODE_VERSION,
                                  settings={"config": config.model_dump() if config else {}, **settings},
                                  reads=reads, run=run)


def _placed_rows(isic: IsicSettings, manifest: pd.DataFrame) -> pd.DataFrame:
    """The transformed metadata's ``LEAK_COLUMNS`` of the images the manifest places, a chunk of rows
    at a time: the leakage check compares only their keys (docs/PERFORMANCE.md "The stages after the
    merge")."""
    placed = original_ids(manifest).unique()
    parts = [chunk[stripped_text(chunk["isic_id"]).isin(placed).to_numpy()]
             for chunk in layout.read_table_chunks(isic.path(layout.TRANSFORMED, layout.METADATA_CSV), LEAK_COLUMNS)]
    return pd.concat(parts, ignore_index=True) if parts else _read_transformed(isic, LEAK_COLUMNS)


def _no_rows(isic: IsicSettings, columns: tuple[str, ...]) -> pd.DataFrame:
    """The transformed metadata's ``columns`` with no row (its header only)."""
    header = layout.read_rows_of(isic.path(layout.TRANSFORMED, layout.METADATA_CSV), [])
    return header[[c for c in header.columns if c in columns]]


def _split_tables(isic: IsicSettings) -> list[Path]:
    return [isic.path(layout.SPLITS_DIR, layout.MANIFEST_CSV), isic.path(layout.SPLITS_DIR, layout.PLAN_JSON)]


def _leak_tables(isic: IsicSettings) -> list[Path]:
    return [*_split_tables(isic), isic.path(layout.TRANSFORMED, layout.METADATA_CSV),
            isic.path(layout.MERGED, layout.DUPLICATES_CSV), isic.path(layout.MERGED, layout.NEAR_DUPLICATES_CSV)]


@dg.asset_check(asset=MERGED_METADATA, name="missing_data", blocking=True)
def missing_data(context: dg.AssetCheckExecutionContext, config: MissingDataConfig,
                 isic: IsicSettings) -> dg.AssetCheckResult:
    """Per-column missing percentage; ERROR when the label is missing too often, WARN for the rest.

    Rows without a label cannot be split by class, and a column that is mostly empty is a sign that a
    source's schema was not recognised; both should stop a training set from being built silently.
    """
    return _unless_unchanged(context, isic, "missing_data", config, [isic.path(layout.MERGED, layout.METADATA_CSV)],
                             lambda: _missing_data_verdict(config, isic))


def _missing_data_verdict(config: MissingDataConfig, isic: IsicSettings) -> dg.AssetCheckResult:
    path = isic.path(layout.MERGED, layout.METADATA_CSV)
    # Every column's missing share, a chunk of rows at a time; the rest from a few columns.
    facts = MetadataFacts.from_chunks(layout.read_table_chunks(path), [c for c in layout.table_columns(path)
                                                                      if c not in ("isic_id", "image")],
                                      fingerprint=False)
    missing = facts.missing_percent
    frame = layout.read_table(path, columns=("isic_id", LABEL_COLUMN, *GROUPING_COLUMNS))
    label_missing = missing.get(LABEL_COLUMN, 100.0)
    over = {c: p for c, p in missing.items()
            if c in CORE_COLUMNS and c != LABEL_COLUMN and p > config.max_missing_other_pct}
    label_ok = label_missing <= config.max_missing_label_pct
    rows = [{"column": c, "missing_pct": p} for c, p in sorted(missing.items(), key=lambda kv: -kv[1])]
    metadata = {
        "label_missing_pct": label_missing,
        "label_threshold_pct": config.max_missing_label_pct,
        "other_threshold_pct": config.max_missing_other_pct,
        "columns_over_threshold": dg.MetadataValue.json(over),
        "rows_without_grouping_key_pct": share_without_grouping_key(frame),
        "class_counts": dg.MetadataValue.json(class_counts(frame)),
        "missing_by_column": table_metadata(rows),
        "rows": len(frame),
    }
    label_words = (f"{label_missing:.2f}% of the {len(frame)} rows have no {LABEL_COLUMN} "
                   f"(at most {config.max_missing_label_pct}% allowed)")
    if not label_ok:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=label_words)
    if over:
        worst = max(over, key=over.get)
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
            description=f"{len(over)} core column(s) miss more than {config.max_missing_other_pct}% of their "
                        f"values, worst {worst} with {over[worst]:.1f}% ({', '.join(over)}); {label_words}",
        )
    worst_core = max((c for c in CORE_COLUMNS if c != LABEL_COLUMN), key=lambda c: missing.get(c, 100.0))
    return dg.AssetCheckResult(
        passed=True, metadata=metadata,
        description=f"{label_words}; every other core column misses at most {config.max_missing_other_pct}% "
                    f"(worst {worst_core}: {missing.get(worst_core, 100.0):.1f}%)",
    )


# ----------------------------------------------------------------------------------------------
# merged_metadata: can the requested balanced dataset be built from these images?


class BalancedDatasetBuildableConfig(BalancedSplitsConfig):
    """The split settings to plan with (the same fields and defaults as balanced_splits: set the same
    values here when you change them there) and the smallest acceptable count per split and class."""

    min_images_per_class: int = Field(
        default=10, ge=1, description="ERROR when a split with a positive ratio would get fewer original images "
                                      "of a class than this.",
    )


# ERROR but not blocking: the images can still be prepared and explored (a small drop, a first look at a
# new source); the red check says before any of that work why the splits would measure nothing.
@dg.asset_check(asset=MERGED_METADATA, name="balanced_dataset_buildable")
def balanced_dataset_buildable(context: dg.AssetCheckExecutionContext, config: BalancedDatasetBuildableConfig,
                               isic: IsicSettings) -> dg.AssetCheckResult:
    """Plans the splits dry (nothing written) with balanced_splits' strategy, ratios and seed: every split
    must get at least ``min_images_per_class`` images of every class. The natural imbalance alone is
    not a failure; a test set with three melanomas is."""
    return _unless_unchanged(context, isic, "balanced_dataset_buildable", config,
                             [isic.path(layout.MERGED, layout.METADATA_CSV),
                              isic.path(layout.MERGED, layout.DUPLICATES_CSV)],
                             lambda: _balanced_dataset_buildable_verdict(config, isic))


def _balanced_dataset_buildable_verdict(config: BalancedDatasetBuildableConfig,
                                        isic: IsicSettings) -> dg.AssetCheckResult:
    outcome = balanced_dataset_feasibility(
        read_plan_table(isic.path(layout.MERGED, layout.METADATA_CSV), config.label_column),
        layout.read_table(isic.path(layout.MERGED, layout.DUPLICATES_CSV)),
        split_config(config), config.min_images_per_class, config.exclude_label_conflicts,
    )
    return _result(outcome, dg.AssetCheckSeverity.ERROR)


# ----------------------------------------------------------------------------------------------
# images_readable: every row's file exists, has the recorded size and opens as an image


def _readable_result(table: Path, columns: tuple[str, ...], base: Path, size_column: str | None
                     ) -> dg.AssetCheckResult:
    """The verdict on ``table``'s rows, read a chunk at a time as the check goes (never whole)."""
    rows = 0

    def counted(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        nonlocal rows
        for chunk in chunks:
            rows += len(chunk)
            yield chunk

    problems = unreadable_images(counted(layout.read_table_chunks(table, columns=columns, rows=CHECK_BATCH)),
                                 base, size_column, processes=CHECK_PROCESSES)
    metadata = {"rows": rows, "unreadable": len(problems), "threshold": 0,
                "examples": dg.MetadataValue.json(problems[:20])}
    recorded = " of the recorded size" if size_column else ""
    if problems:
        first = problems[0]
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
            description=f"{len(problems)} of {rows} rows have no readable image{recorded} (none allowed), "
                        f"e.g. {first['isic_id']}: {first['reason']}",
        )
    return dg.AssetCheckResult(passed=True, metadata=metadata,
                               description=f"all {rows} rows point at a file{recorded} whose header opens")


@dg.asset_check(asset=MERGED_IMAGES, name="merged_images_readable", blocking=True,
                additional_deps=[MERGED_METADATA])
def merged_images_readable(context: dg.AssetCheckExecutionContext, isic: IsicSettings) -> dg.AssetCheckResult:
    """Every merged metadata row points at a file of the recorded size whose header opens."""
    return _unless_unchanged(context, isic, "merged_images_readable", None,
                             [isic.path(layout.MERGED, layout.METADATA_CSV), isic.path(layout.MERGED, "images")],
                             lambda: _merged_images_readable_verdict(isic))


def _merged_images_readable_verdict(isic: IsicSettings) -> dg.AssetCheckResult:
    return _readable_result(isic.path(layout.MERGED, layout.METADATA_CSV), ("isic_id", "image", "file_bytes"),
                            isic.path(layout.MERGED), "file_bytes")


@dg.asset_check(asset=transformed_images, name="transformed_images_readable", blocking=True)
def transformed_images_readable(context: dg.AssetCheckExecutionContext, isic: IsicSettings) -> dg.AssetCheckResult:
    """Every transformed metadata row points at a JPEG whose header opens with the recorded size."""
    return _unless_unchanged(context, isic, "transformed_images_readable", None,
                             [isic.path(layout.TRANSFORMED, layout.METADATA_CSV),
                              isic.path(layout.TRANSFORMED, "images")],
                             lambda: _transformed_images_readable_verdict(isic))


def _transformed_images_readable_verdict(isic: IsicSettings) -> dg.AssetCheckResult:
    return _readable_result(isic.path(layout.TRANSFORMED, layout.METADATA_CSV), ("isic_id", "image"),
                            isic.path(layout.TRANSFORMED), None)


# ----------------------------------------------------------------------------------------------
# balanced_splits


class SplitBalanceConfig(dg.Config):
    """Tolerance of the per-split class ratio (max/min), relative to what the strategy promises."""

    tolerance: float = Field(default=0.1, ge=0, description="undersample: ratio <= 1 + tolerance.")


@dg.asset_check(asset=balanced_splits, name="split_class_balance", blocking=True)
def split_class_balance(context: dg.AssetCheckExecutionContext, config: SplitBalanceConfig,
                        isic: IsicSettings) -> dg.AssetCheckResult:
    """Per split, the max/min class ratio is within tolerance of what the chosen strategy promises."""
    return _unless_unchanged(context, isic, "split_class_balance", config, _split_tables(isic),
                             lambda: _split_class_balance_verdict(config, isic))


def _split_class_balance_verdict(config: SplitBalanceConfig, isic: IsicSettings) -> dg.AssetCheckResult:
    out_dir = isic.path(layout.SPLITS_DIR)
    plan = read_plan(out_dir)
    outcome = class_balance(read_manifest(out_dir), plan["config"]["strategy"], config.tolerance,
                            classes=plan["classes"], balance=plan["config"].get("balance", "all_splits"))
    return _result(outcome, dg.AssetCheckSeverity.ERROR)


@dg.asset_check(asset=balanced_splits, name="no_leakage", blocking=True)
def no_leakage(context: dg.AssetCheckExecutionContext, isic: IsicSettings) -> dg.AssetCheckResult:
    """No image, patient, lesion, content hash, listed duplicate or near-duplicate pair spans two splits.

    Near-duplicate pairs are re-read from merged_data/near_duplicates.csv unless the splits were
    written with ``near_duplicates: off``."""
    return _unless_unchanged(context, isic, "no_leakage", None, _leak_tables(isic),
                             lambda: _no_leakage_verdict(isic))


def _no_leakage_verdict(isic: IsicSettings) -> dg.AssetCheckResult:
    mode = read_plan(isic.path(layout.SPLITS_DIR)).get("near_duplicates", "group")
    manifest = read_manifest(isic.path(layout.SPLITS_DIR))
    outcome = leakage(
        manifest,
        _placed_rows(isic, manifest),
        layout.read_table(isic.path(layout.MERGED, layout.DUPLICATES_CSV)),
        near_duplicates=read_pairs(isic.root()) if mode != "off" else None,
    )
    return _result(outcome, dg.AssetCheckSeverity.ERROR)


@dg.asset_check(asset=balanced_splits, name="no_evaluation_leakage", blocking=True)
def no_evaluation_leakage(context: dg.AssetCheckExecutionContext, isic: IsicSettings) -> dg.AssetCheckResult:
    """No train/validation/test image is an evaluation image or shares a leakage group with one.

    Re-derived from raw keys, not from evaluation_data/: which images are evaluation images comes from
    the merged ``sources`` column and duplicates.csv, the links from ids, patient, lesion, content,
    listed duplicates and near-duplicate pairs (merged_data/near_duplicates.csv, unless the splits were
    written with ``near_duplicates: off``)."""
    return _unless_unchanged(context, isic, "no_evaluation_leakage", None, _leak_tables(isic),
                             lambda: _no_evaluation_leakage_verdict(isic),
                             sources=source_identity(isic.selected_sources()))


def _no_evaluation_leakage_verdict(isic: IsicSettings) -> dg.AssetCheckResult:
    names = evaluation_source_names(isic)
    mode = read_plan(isic.path(layout.SPLITS_DIR)).get("near_duplicates", "group")
    offences, checked = evaluation_leakage(
        read_manifest(isic.path(layout.SPLITS_DIR)),
        # Without an evaluation source nothing can leak into one: the header is enough.
        _read_transformed(isic, LEAK_COLUMNS) if names else _no_rows(isic, LEAK_COLUMNS),
        layout.read_table(isic.path(layout.MERGED, layout.DUPLICATES_CSV)),
        read_pairs(isic.root()) if mode != "off" else None,
        names,
    )
    measured = {"evaluation_sources": names, "images_checked": checked, "leaking_images": len(offences),
                "threshold": 0}
    if offences:
        ids = ", ".join(f"{o['isic_id']} ({o['split']}, {o['link']} of {o['evaluation_isic_id']})"
                        for o in offences[:10])
        description = (f"{len(offences)} split image(s) are or share a leakage group with an evaluation image "
                       f"(none allowed): {ids}")
    elif names:
        description = (f"none of the {checked} split images is, or shares a patient, lesion, content, listed "
                       f"duplicate or near-duplicate with, an image of {', '.join(names)} (none allowed)")
    else:
        description = f"no evaluation source selected; {checked} split images checked against none"
    return _result(CheckOutcome(not offences, measured, offences, description), dg.AssetCheckSeverity.ERROR)


class ProportionsConfig(dg.Config):
    """Absolute tolerance on each split's share of the original images."""

    tolerance: float = Field(default=0.05, ge=0, le=1)


@dg.asset_check(asset=balanced_splits, name="split_proportions")
def split_proportions(context: dg.AssetCheckExecutionContext, config: ProportionsConfig,
                      isic: IsicSettings) -> dg.AssetCheckResult:
    """Split sizes are within tolerance of the configured ratios (WARN: whole groups make it inexact)."""
    return _unless_unchanged(context, isic, "split_proportions", config, _split_tables(isic),
                             lambda: _split_proportions_verdict(config, isic))


def _split_proportions_verdict(config: ProportionsConfig, isic: IsicSettings) -> dg.AssetCheckResult:
    out_dir = isic.path(layout.SPLITS_DIR)
    ratios = tuple(read_plan(out_dir)["config"]["ratios"])
    outcome = measure_split_proportions(read_manifest(out_dir), ratios, config.tolerance)
    return _result(outcome, dg.AssetCheckSeverity.WARN)


def _result(outcome: CheckOutcome, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    metadata = {k: _metadata_value(v) for k, v in outcome.measured.items()}
    metadata["offending"] = dg.MetadataValue.json(outcome.offending[:20])
    return dg.AssetCheckResult(passed=bool(outcome.passed), severity=severity, metadata=metadata,
                               description=outcome.description)


def _metadata_value(value: object) -> object:
    if isinstance(value, (bool, int, float, str)):
        return value
    return dg.MetadataValue.json(value)
