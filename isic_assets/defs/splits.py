"""balanced_splits: the leakage-free, class-balanced train/validation/test folders users train on."""

import functools
import hashlib
import json
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.compute.engine import open_engine
from ..core.eda.thumbnails import composition_plot
from ..core.splits.assign import SPLITS, SplitConfig
from ..core.splits.checks import original_ids
from ..core.splits.dataset_card import write_dataset_card
from ..core.splits.facts import licence_counts, source_facts
from ..core.splits.folds import fold_class_counts
from ..core.splits.near_duplicates import read_pairs
from ..core.splits.planning import plan_splits, read_plan_table
from ..core.splits.pool import text_bytes
from ..core.splits.writer import write_splits
from ..core.table_schema import column_types, typed_columns
from .evaluation import evaluation_sets, read_held_out
from .metadata import column_schema, data_root_metadata, files_version
from .near_duplicates import near_duplicates
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, USER_FACING_FRESHNESS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .transform import transformed_images
from .unchanged import materialize_unless_unchanged, source_identity

GROUP = "train"
PLAN_FILE = layout.PLAN_JSON


class BalancedSplitsConfig(dg.Config):
    """How the dataset is split and balanced; the seed makes every choice reproducible."""

    train: float = Field(default=0.70, gt=0, lt=1)
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, ge=0, lt=1)
    seed: int = 0
    strategy: Literal["undersample", "oversample", "none"] = Field(
        default="undersample",
        description="undersample: cap every class at the minority's count with whole groups; oversample: "
                    "top up the train minority with seeded augmented copies; none: natural ratio + class weights.",
    )
    balance: Literal["all_splits", "train_only"] = Field(
        default="all_splits",
        description="Where undersample balances. all_splits: every split 1:1 (the seed's way); train_only: "
                    "validation and test keep the natural class ratio (whole groups), so precision and PPV "
                    "measured on them hold at real prevalence.",
    )
    cap_per_class: int | None = Field(
        default=None, ge=1, description="Total images per class across splits (e.g. 1000), shared by the ratios."
    )
    label_column: str = Field(default="benign_malignant", description="Metadata column holding the label.")
    class_map: dict[str, str] = Field(
        default={"benign": "benign", "malignant": "malignant"},
        description="Label value -> class folder; '*' matches any other non-empty value; unmapped rows are "
                    "left out and counted (e.g. indeterminate, unlabelled).",
    )
    exclude_label_conflicts: bool = Field(
        default=True, description="Leave out images whose sources disagree on benign vs malignant "
                                  "(merged_data/conflicts.csv); they are counted in the metadata.",
    )
    near_duplicates: Literal["group", "drop", "off"] = Field(
        default="group",
        description="group: each near-duplicate pair joins one leakage group, nothing dropped; drop: keep one "
                    "image per pair (the smallest id), leave the other out and count it; off: ignore the pairs.",
    )
    folds: int = Field(
        default=0, ge=0, description="Cross-validation folds over train+validation (0: off, e.g. 5): a `fold` "
                                     "column of whole leakage groups, stratified by class; test gets -1.",
    )
    image_types: list[str] = Field(
        default=[], description="Keep only these image_type values, e.g. ['dermoscopic'] or ['TBP tile: close-up']; "
                                "empty: every type present.",
    )
    augmentations_json: str = Field(
        default="", description="Oversampling augmentations as a JSON list of {name, p, ...}; empty: the default."
    )
    workers: int = Field(default=2, ge=1, le=64,
                         description="Worker processes making the oversampling copies (ISIC_COMPUTE picks where).")


def split_config(config: BalancedSplitsConfig) -> SplitConfig:
    """The core's planning settings from the asset's config (the core validates them)."""
    return SplitConfig(ratios=(config.train, config.validation, config.test), seed=config.seed,
                       strategy=config.strategy, cap_per_class=config.cap_per_class,
                       label_column=config.label_column, class_map=dict(config.class_map),
                       image_types=tuple(config.image_types), balance=config.balance)


@dg.asset(
    deps=[transformed_images, near_duplicates, evaluation_sets],
    group_name=GROUP,
    code_version="1",
    kinds={"python", "jpeg"},
    description="neural_network_data/{train,validation,test}/{benign,malignant}/<isic_id>.jpg with manifest.csv "
                "and per-split imagefolder metadata.parquet; no patient, lesion or duplicate spans two splits.",
    pool=WRITE_POOL,
    automation_condition=DOWNSTREAM_AUTOMATION,
    freshness_policy=USER_FACING_FRESHNESS,
    owners=OWNERS,
    tags=stage_tags("splits"),
)
def balanced_splits(context: dg.AssetExecutionContext, config: BalancedSplitsConfig,
                    isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    transformed = root / layout.TRANSFORMED
    evaluation = root / layout.EVALUATION_DIR
    [result] = materialize_unless_unchanged(
        context, root, isic.force,
        settings={"config": config.model_dump(), "sources": source_identity(isic.selected_sources())},
        reads=[transformed / layout.METADATA_CSV, transformed / "images", root / layout.MERGED / layout.DUPLICATES_CSV,
               root / layout.MERGED / layout.NEAR_DUPLICATES_CSV, evaluation / layout.MANIFEST_CSV,
               evaluation / layout.EVALUATION_OVERLAP_CSV],
        writes=[root / layout.SPLITS_DIR],
        run=lambda: [_balanced_splits(context, config, isic, root)],
    )
    return result


def _balanced_splits(context: dg.AssetExecutionContext, config: BalancedSplitsConfig, isic: IsicSettings,
                     root: Path) -> dg.MaterializeResult:
    # Imported here: albumentations takes about a second to import, which every process loading the
    # code location would pay, and a no-change re-run never augments.
    from ..core.transform.augment import DEFAULT_AUGMENTATIONS, augment_file

    transformed = root / layout.TRANSFORMED
    settings = split_config(config)
    # Official evaluation images and everything sharing a leakage group with them stay out of the pool.
    held_out, evaluation = read_held_out(isic)
    metadata_csv = transformed / layout.METADATA_CSV
    pool = read_plan_table(metadata_csv, settings.label_column)
    pool = pool.take(~np.isin(pool.raw_ids, text_bytes(pd.Series(sorted(held_out), dtype=object))))
    if held_out:
        context.log.info(f"held out {len(held_out)} image(s) for the evaluation sets: {evaluation}")
    planned = plan_splits(pool,
                          layout.read_table(root / layout.MERGED / layout.DUPLICATES_CSV),
                          settings, config.exclude_label_conflicts,
                          near_duplicates=read_pairs(root), near_duplicate_mode=config.near_duplicates,
                          folds=config.folds, seed=config.seed)
    plan, metadata, dropped = planned.plan, planned.metadata, planned.near_duplicates_dropped
    if planned.label_conflicts:
        context.log.warning(f"left out {len(planned.label_conflicts)} image(s) whose sources disagree on the label: "
                            f"{', '.join(planned.label_conflicts[:20])}")
    if len(dropped):
        context.log.info(f"left out {len(dropped)} near-duplicate(s), each for the image kept instead: "
                         f"{', '.join(dropped['isic_id'].head(20))}")
    for warning in plan.warnings:
        context.log.warning(warning)
    spec = json.loads(config.augmentations_json) if config.augmentations_json else DEFAULT_AUGMENTATIONS
    spec_version = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]
    out_dir = root / layout.SPLITS_DIR
    # Every column, for the planned images only: the per-split imagefolder metadata carries them all.
    planned_rows = layout.read_rows_of(metadata_csv, original_ids(plan.manifest))
    report = write_splits(
        plan, planned_rows, transformed, out_dir,
        make_augmented_copy=functools.partial(augment_file, spec=spec),  # picklable: it runs on workers
        augment_version=spec_version,
        open_engine=lambda: open_engine(isic.compute_choice(), config.workers, root, context.log.info,
                                        lambda info: context.log.info(f"augmented copies on the {info.describe()}")),
        summary_extra={"near_duplicates": config.near_duplicates, "near_duplicates_dropped":
                       dropped.to_dict(orient="records")},
    )
    context.log.info(f"splits written: {report.summary()}")
    if report.link_fallback:
        context.log.warning(f"balanced_splits: {report.link_fallback}")
    card = write_dataset_card(plan.manifest, metadata, out_dir,
                              {**settings.as_dict(), "seed": config.seed, "folds": config.folds},
                              source_facts(isic.selected_sources(), planned.source_cells), evaluation)
    summary = plan.summary()
    manifest_path = out_dir / layout.MANIFEST_CSV
    manifest_columns = layout.table_columns(manifest_path)
    return dg.MaterializeResult(
        metadata={
            **data_root_metadata(root),
            "counts": dg.MetadataValue.md(plan.counts.reset_index(names="split").to_markdown(index=False)),
            "images": int(plan.counts.to_numpy().sum()),
            "dagster/row_count": len(plan.manifest),
            # The manifest as planned, before it became text in manifest.csv.
            "dagster/column_schema": column_schema(typed_columns(manifest_columns, column_types(plan.manifest))),
            "groups_per_split": dg.MetadataValue.json(summary["groups_per_split"]),
            "excluded": dg.MetadataValue.json({**summary["excluded"], "label_conflict": len(planned.label_conflicts),
                                               "near_duplicate": len(dropped)}),
            "near_duplicates": config.near_duplicates,
            "evaluation_held_out": dg.MetadataValue.json(evaluation or {"evaluation_images": 0}),
            "unmapped_values": dg.MetadataValue.json(summary["unmapped_values"]),
            "class_weights": dg.MetadataValue.json(summary["class_weights"]),
            "augmented_copies": dg.MetadataValue.json(summary["augmented_counts"]),
            "config": dg.MetadataValue.json(summary["config"]),
            "seed": config.seed,
            "composition": dg.MetadataValue.md(composition_plot(plan.counts.reindex(list(SPLITS)))),
            "fold_counts": dg.MetadataValue.md(fold_class_counts(plan.manifest, plan.classes).reset_index()
                                               .to_markdown(index=False) if config.folds else "folds off"),
            "files": dg.MetadataValue.json(
                {k: v for k, v in report.summary().items() if k not in ("out_dir", "tables_written")}
            ),
            "path": dg.MetadataValue.path(str(out_dir)),
            "manifest": dg.MetadataValue.path(str(manifest_path)),
            "dataset_card": dg.MetadataValue.path(str(card)),
            "licenses": dg.MetadataValue.json(licence_counts(plan.manifest, metadata)),
        },
        data_version=dg.DataVersion(files_version(manifest_path)),
    )


def read_plan(out_dir: Path) -> dict:
    """The plan summary the asset wrote (config, seed, counts), for the checks."""
    path = out_dir / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; materialize balanced_splits first")
    return json.loads(path.read_text())


def read_manifest(out_dir: Path) -> pd.DataFrame:
    return layout.read_table(out_dir / layout.MANIFEST_CSV)
