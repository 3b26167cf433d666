"""Every asset check of the graph, in one module.

Each check's metadata carries the threshold it applied and the value it measured, so a failed check
explains itself on the asset page without opening a log.
"""


import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.quality import LABEL_COLUMN, class_counts, missing_percentages, share_without_grouping_key
from .ingest import MERGED_METADATA
from .metadata import table_metadata
from .resources import IsicSettings

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


def _read_metadata(isic: IsicSettings) -> pd.DataFrame:
    return pd.read_csv(isic.path(layout.MERGED, "metadata.csv"), dtype=str, keep_default_na=False)


@dg.asset_check(asset=MERGED_METADATA, name="missing_data", blocking=True)
def missing_data(config: MissingDataConfig, isic: IsicSettings) -> dg.AssetCheckResult:
    """Per-column missing percentage; ERROR when the label is missing too often, WARN for the rest.

    Rows without a label cannot be split by class, and a column that is mostly empty is a sign that a
    source's schema was not recognised; both should stop a training set from being built silently.
    """
    frame = _read_metadata(isic)
    missing = missing_percentages(frame, [c for c in frame.columns if c not in ("isic_id", "image")])
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
    if not label_ok:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
            description=f"{label_missing:.2f}% of rows have no {LABEL_COLUMN} (threshold "
                        f"{config.max_missing_label_pct}%)",
        )
    if over:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
            description=f"columns over {config.max_missing_other_pct}% missing: {', '.join(over)}",
        )
    return dg.AssetCheckResult(passed=True, metadata=metadata)
