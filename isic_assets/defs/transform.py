"""transformed_images: every merged image made uniform for training (transform stage)."""


import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.eda.thumbnails import contact_sheet
from ..core.operation.disk_space import disk_full_errors
from ..core.table_schema import parquet_column_types
from ..core.transform.image_ops import TRANSFORM_CODE_VERSION, TransformSettings
from ..core.transform.records import JobTable
from ..core.transform.runner import DEFAULT_IMAGE_TIME_LIMIT_S, STAGE, TransformReport, transform_images
from ..core.transform.tables import transformed_column_types, write_transform_tables
from .merge import MERGED_IMAGES, MERGED_METADATA
from .metadata import column_schema, data_root_metadata
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, USER_FACING_FRESHNESS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .unchanged import materialize_unless_unchanged

GROUP = "prepare"
# The merged columns a transform job is made of.
JOB_COLUMNS = ("isic_id", "image", "sha256", "exif_orientation")


class TransformConfig(dg.Config):
    """How every merged image is made uniform; changing any field reprocesses every image."""

    size: int = Field(default=256, ge=16, le=4096, description="Side of the square output, in pixels.")
    mode: Literal["pad", "center_crop", "stretch"] = Field(
        default="pad", description="pad: keep aspect with black borders; center_crop; stretch."
    )
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    color_constancy: bool = Field(default=False, description="Shades of Gray colour constancy (p=6).")
    hair_removal: bool = Field(default=False, description="Black-hat + inpainting hair removal.")
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes (one image each at a time).")
    image_time_limit_s: float = Field(
        default=DEFAULT_IMAGE_TIME_LIMIT_S, ge=0,
        description="Seconds one image may take before its worker is killed and replaced and the image "
                    "quarantined (a hanging decoder); 0 = no limit. Local backend only.")


@dg.asset(
    deps=[MERGED_IMAGES, MERGED_METADATA],
    group_name=GROUP,
    code_version=TRANSFORM_CODE_VERSION,
    kinds={"python", "opencv", "jpeg"},
    description="Square, resized, optionally colour-corrected JPEGs in data_transformed/images/, plus "
                "metadata.csv and normalization.json (per-channel mean/std) for training code.",
    pool=WRITE_POOL,
    automation_condition=DOWNSTREAM_AUTOMATION,
    freshness_policy=USER_FACING_FRESHNESS,
    owners=OWNERS,
    tags=stage_tags("transform"),
)
def transformed_images(context: dg.AssetExecutionContext, config: TransformConfig,
                       isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    merged_dir = root / layout.MERGED
    [result] = materialize_unless_unchanged(
        context, root, isic.force, settings={"config": config.model_dump()},
        reads=[merged_dir / layout.METADATA_CSV, merged_dir / layout.METADATA_PARQUET, merged_dir / "images"],
        writes=[root / layout.TRANSFORMED],
        run=lambda: [_transform(context, config, isic, root)],
        zero_on_skip=("processed_this_run", "removed", "worker_restarts", "seconds", "images_per_second"),
    )
    return result


def data_version_digest(report: TransformReport) -> str:
    """The fingerprint, then ``<id>:<sha256 as hex>`` of every output in id order (the UTF-8 bytes of
    each, taken a slice of the columns at a time)."""
    digest = hashlib.sha256(report.fingerprint.encode())
    images, rows = report.images, 65_536
    for start in range(0, len(images), rows):
        for isic_id, sha256 in zip(images.ids[start : start + rows].tolist(),
                                   images.sha256[start : start + rows].tolist(), strict=True):
            digest.update(isic_id + b":" + sha256.hex().encode())
    return digest.hexdigest()


def _transform(context: dg.AssetExecutionContext, config: TransformConfig, isic: IsicSettings,
               root: Path) -> dg.MaterializeResult:
    merged_dir = root / layout.MERGED
    metadata_csv = merged_dir / layout.METADATA_CSV
    # The jobs need four of the merged columns, read a chunk of rows at a time into compact columns
    # (the step's process forks its workers while it holds them); the rest are only carried into
    # metadata.csv, a chunk of rows at a time, after the images are done.
    header = pd.read_csv(metadata_csv, nrows=0).columns if metadata_csv.is_file() else JOB_COLUMNS
    missing = [c for c in JOB_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{metadata_csv} lacks the column(s) {missing}; re-run merge_sources")
    settings = TransformSettings(size=config.size, mode=config.mode, jpeg_quality=config.jpeg_quality,
                                 color_constancy=config.color_constancy, hair_removal=config.hair_removal)
    jobs = JobTable.read(merged_dir, metadata_csv)
    out_dir = root / layout.TRANSFORMED
    report = transform_images(jobs, out_dir, settings, workers=config.workers, log=context.log.info,
                              compute=isic.compute_choice(), time_limit_s=config.image_time_limit_s)
    del jobs
    with disk_full_errors(STAGE, out_dir):
        table = write_transform_tables(layout.read_table_chunks(metadata_csv), report, settings, out_dir)
    digest = data_version_digest(report)
    rate = report.processed / report.seconds if report.seconds and report.processed else 0.0
    return dg.MaterializeResult(
        metadata={
            **data_root_metadata(root),
            "images": table.rows,
            "dagster/row_count": table.rows,
            "processed_this_run": report.processed,
            "skipped_unchanged": report.skipped,
            "removed": report.removed,
            "quarantined": report.quarantined,
            "worker_restarts": report.worker_restarts,
            "compute_backend": report.backend,
            "compute_workers": report.compute_workers,
            "seconds": round(report.seconds, 2),
            "images_per_second": round(rate, 1),
            "settings": dg.MetadataValue.json({**asdict(settings), "fingerprint": report.fingerprint}),
            "normalization": dg.MetadataValue.json(
                {k: report.normalization.get(k) for k in ("mean", "std", "mean_255", "std_255", "image_count")}
            ),
            "samples": dg.MetadataValue.md(contact_sheet(out_dir / "images", report.images.id_strings(0, 8))),
            "path": dg.MetadataValue.path(str(out_dir / "images")),
            "metadata_csv": dg.MetadataValue.path(str(out_dir / layout.METADATA_CSV)),
            "normalization_json": dg.MetadataValue.path(str(out_dir / layout.NORMALIZATION_JSON)),
            "dagster/column_schema": column_schema(transformed_column_types(
                table, parquet_column_types(merged_dir / layout.METADATA_PARQUET))),
        },
        data_version=dg.DataVersion(digest[:32]),
    )
