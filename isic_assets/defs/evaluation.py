"""evaluation_sets: the official evaluation sets, held out of training and written beside the splits."""

from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.splits.assign import SplitConfig
from ..core.splits.evaluation import EVALUATION_SPLIT, OVERLAP_COLUMNS, Holdout, evaluation_columns, hold_out
from ..core.splits.near_duplicates import read_pairs
from ..core.splits.writer import write_evaluation
from .metadata import data_root_metadata, files_version, table_metadata
from .near_duplicates import near_duplicates
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .transform import transformed_images
from .unchanged import materialize_unless_unchanged, source_identity

GROUP = "train"


class EvaluationSetsConfig(dg.Config):
    """The labels of the evaluation folders: set the same values as balanced_splits' when you change them."""

    label_column: str = Field(default="benign_malignant", description="Metadata column holding the label.")
    class_map: dict[str, str] = Field(
        default={"benign": "benign", "malignant": "malignant"},
        description="Label value -> class folder, as in balanced_splits; unmapped evaluation images are counted.",
    )
    near_duplicates: Literal["group", "off"] = Field(
        default="group", description="group: a near-duplicate of an evaluation image leaves the training pool; "
                                     "off: ignore merged_data/near_duplicates.csv.",
    )


def evaluation_source_names(isic: IsicSettings) -> list[str]:
    """The selected sources with ``purpose: evaluation``, in merge order."""
    return [s.name for s in isic.selected_sources() if s.is_evaluation]


def compute_holdout(isic: IsicSettings, label_column: str, class_map: dict[str, str], use_pairs: bool) -> Holdout:
    root = isic.root()
    settings = SplitConfig(label_column=label_column, class_map=dict(class_map))
    names = evaluation_source_names(isic)
    table = root / layout.TRANSFORMED / layout.METADATA_CSV
    columns = evaluation_columns(label_column)
    # Without an evaluation source nothing is held out: the header is enough (no 400,000-row read).
    metadata = layout.read_table(table, columns=columns) if names else layout.read_rows_of(table, [])
    return hold_out(
        metadata[[c for c in metadata.columns if c in columns]],
        layout.read_table(root / layout.MERGED / layout.DUPLICATES_CSV),
        read_pairs(root) if use_pairs else None,
        names,
        label_column=settings.label_column,
        class_map=settings.class_map,
    )


@dg.asset(
    deps=[transformed_images, near_duplicates],
    group_name=GROUP,
    code_version="1",
    kinds={"python", "jpeg"},
    description="evaluation_data/<source>/<class>/<isic_id>.jpg for every selected evaluation source, with "
                "manifest.csv and evaluation_overlap.csv: the training images that leave the pool, and why.",
    pool=WRITE_POOL,
    automation_condition=DOWNSTREAM_AUTOMATION,
    owners=OWNERS,
    tags=stage_tags("splits"),
)
def evaluation_sets(context: dg.AssetExecutionContext, config: EvaluationSetsConfig,
                    isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    [result] = materialize_unless_unchanged(
        context, root, isic.force,
        settings={"config": config.model_dump(), "sources": source_identity(isic.selected_sources())},
        reads=[root / layout.TRANSFORMED / layout.METADATA_CSV, root / layout.TRANSFORMED / "images",
               root / layout.MERGED / layout.DUPLICATES_CSV, root / layout.MERGED / layout.NEAR_DUPLICATES_CSV],
        writes=[root / layout.EVALUATION_DIR],
        run=lambda: [_evaluation_sets(context, config, isic, root)],
    )
    return result


def _evaluation_sets(context: dg.AssetExecutionContext, config: EvaluationSetsConfig, isic: IsicSettings,
                     root: Path) -> dg.MaterializeResult:
    holdout = compute_holdout(isic, config.label_column, config.class_map, config.near_duplicates == "group")
    classes = SplitConfig(label_column=config.label_column, class_map=dict(config.class_map)).classes
    out_dir = root / layout.EVALUATION_DIR
    # Every column, for the evaluation images only: their imagefolder metadata carries them all.
    metadata = layout.read_rows_of(root / layout.TRANSFORMED / layout.METADATA_CSV, holdout.manifest["isic_id"])
    report = write_evaluation(holdout.manifest, holdout.overlap, metadata, classes, root / layout.TRANSFORMED,
                              out_dir)
    if holdout.unlabelled:
        context.log.warning(f"{len(holdout.unlabelled)} evaluation image(s) have no label of the class map and "
                            f"are not written: {', '.join(holdout.unlabelled[:20])}")
    summary = holdout.summary()
    context.log.info(f"evaluation sets: {summary}")
    manifest_path = out_dir / layout.MANIFEST_CSV
    overlap = holdout.overlap
    return dg.MaterializeResult(
        metadata={
            **data_root_metadata(root),
            "evaluation_images": summary["evaluation_images"],
            "per_source": dg.MetadataValue.json(summary["per_source"]),
            "held_out_of_training": summary["held_out_of_training"],
            "overlap_by_reason": dg.MetadataValue.json(summary["overlap_by_reason"]),
            "unlabelled_left_out": summary["unlabelled_left_out"],
            "overlap": table_metadata(overlap.head(50).to_dict(orient="records"))
            if len(overlap) else dg.MetadataValue.md("no training image overlaps an evaluation image"),
            "files": dg.MetadataValue.json(report.__dict__),
            "path": dg.MetadataValue.path(str(out_dir)),
            "manifest": dg.MetadataValue.path(str(manifest_path)),
            "split": EVALUATION_SPLIT,
        },
        data_version=dg.DataVersion(files_version(manifest_path, out_dir / layout.EVALUATION_OVERLAP_CSV)),
    )


def read_held_out(isic: IsicSettings) -> tuple[set[str], dict]:
    """Ids balanced_splits must leave out (as evaluation_sets decided them), and the counts for its metadata.

    Without evaluation_data/ and without evaluation sources selected there is nothing to hold out;
    with evaluation sources selected, evaluation_sets must have run first.
    """
    out_dir = isic.path(layout.EVALUATION_DIR)
    manifest_path, overlap_path = out_dir / layout.MANIFEST_CSV, out_dir / layout.EVALUATION_OVERLAP_CSV
    if not manifest_path.is_file() or not overlap_path.is_file():
        if evaluation_source_names(isic):
            raise FileNotFoundError(f"{manifest_path} does not exist but evaluation sources are selected; "
                                    "materialize evaluation_sets first")
        return set(), {}
    manifest = layout.read_table(manifest_path, columns=("isic_id", "source"))
    overlap = layout.read_table(overlap_path)
    missing = [c for c in OVERLAP_COLUMNS if c not in overlap.columns]
    if missing:
        raise ValueError(f"{overlap_path} lacks the column(s) {missing}; expected {OVERLAP_COLUMNS}")
    counts = overlap["reason"].value_counts()
    per_source = manifest.groupby("source").size() if len(manifest) else pd.Series(dtype=int)
    held = set(manifest["isic_id"]) | set(overlap["isic_id"])
    return held, {
        "evaluation_images": len(manifest),
        "per_source": {str(k): int(v) for k, v in per_source.items()},
        "held_out_of_training": len(held),
        "overlap_by_reason": {str(k): int(v) for k, v in counts.items()},
    }
