"""merged_images and merged_metadata: one multi-asset step that merges every source (merge stage)."""



from pathlib import Path

import dagster as dg
from pydantic import Field

from ..core import layout
from ..core.merge.image_check import DEFAULT_CHECK_TIME_LIMIT_S
from ..core.merge.merge_sources import MergeOptions, MergeReport, SourceArchive, merge_sources
from ..core.merge.metadata_table import ids_and_hashes
from ..core.merge.state_store import STATE_FILE as MERGE_STATE
from ..core.merge.zip_stream import ZipLimits, ZipRefused
from ..core.table_schema import parquet_column_types, typed_columns
from .metadata import column_schema, data_root_metadata, files_version, fingerprint, table_metadata
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .sources import GROUP, raw_zips
from .unchanged import materialize_unless_unchanged, source_identity


class MergeConfig(dg.Config):
    """Zip-bomb limits and parallelism of the merge."""

    max_member_mb: float = Field(default=512.0, gt=0, description="Largest single image member accepted.")
    max_total_gb: float = Field(default=256.0, gt=0, description="Largest total uncompressed size of a zip.")
    max_compression_ratio: float = Field(default=100.0, gt=1, description="Refuse members compressed more.")
    workers: int = Field(default=2, ge=1, le=32, description="Threads checking images (decode + sha256).")
    check_time_limit_s: float = Field(
        default=DEFAULT_CHECK_TIME_LIMIT_S, ge=0,
        description="Seconds one image's check may take before it is quarantined (reason time_limit) and "
                    "its thread replaced (a hanging decoder); 0 = no limit. Local backend only.")


MERGED_IMAGES = dg.AssetKey("merged_images")
MERGED_METADATA = dg.AssetKey("merged_metadata")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(MERGED_IMAGES, deps=[raw_zips], group_name=GROUP, code_version="1", kinds={"python", "jpeg"},
                     automation_condition=DOWNSTREAM_AUTOMATION, owners=OWNERS, tags=stage_tags("merge"),
                     description="Every kept image once, as merged_data/images/<isic_id>.<ext>; duplicates "
                                 "and corrupt files recorded, never silently dropped."),
        dg.AssetSpec(MERGED_METADATA, deps=[raw_zips], group_name=GROUP, code_version="1",
                     kinds={"python", "csv", "parquet"},
                     automation_condition=DOWNSTREAM_AUTOMATION, owners=OWNERS, tags=stage_tags("merge"),
                     description="One harmonized metadata row per kept image: merged_data/metadata.csv "
                                 "(and .parquet), duplicates.csv, quarantine.csv, conflicts.csv."),
    ],
    name="merge_sources",
    can_subset=False,
    pool=WRITE_POOL,
)
def merge_sources_asset(context: dg.AssetExecutionContext, config: MergeConfig, isic: IsicSettings):
    """Streams each images zip once, checks and deduplicates images, and harmonizes the metadata."""
    root = isic.root()
    sources = isic.selected_sources()
    archives = [
        SourceArchive(name=s.name, format=s.format, order=i, files=layout.downloaded_files(root, s))
        for i, s in enumerate(sources)
    ]
    options = MergeOptions(
        limits=ZipLimits(
            max_member_bytes=int(config.max_member_mb * 1024 * 1024),
            max_total_bytes=int(config.max_total_gb * 1024**3),
            max_ratio=config.max_compression_ratio,
        ),
        workers=config.workers,
        check_time_limit_s=config.check_time_limit_s,
        compute=isic.compute_choice(),
    )
    out_dir = root / layout.MERGED
    yield from materialize_unless_unchanged(
        context, root, isic.force,
        settings={"config": config.model_dump(), "sources": source_identity(sources)},
        reads=[path for archive in archives for path in archive.files.values()],
        writes=[*(out_dir / name for name in MERGE_TABLES), out_dir / "images",
                out_dir / layout.STATE_DIR / MERGE_STATE],
        run=lambda: _merge(context, archives, out_dir, options, root),
        zero_on_skip=("members_checked_this_run", "images_written_this_run", "images_deleted_this_run",
                      "MB_written_this_run", "seconds"),
    )


# Every table the merge writes; with merged_data/images/ they are what a no-change re-run compares.
MERGE_TABLES = (layout.METADATA_CSV, layout.METADATA_PARQUET, layout.DUPLICATES_CSV, layout.QUARANTINE_CSV,
                layout.CONFLICTS_CSV)


def _merge(context: dg.AssetExecutionContext, archives: list[SourceArchive], out_dir: Path, options: MergeOptions,
           root: Path) -> list[dg.MaterializeResult]:
    try:
        report = merge_sources(archives, out_dir, options, log=context.log.info)
    except ZipRefused as exc:
        # The core names its ZipLimits fields; a UI user needs the names of this asset's config.
        raise dg.Failure(
            description=f"{exc}\nIf the archive is trusted, raise the limit in the run config: "
                        "ops.merge_sources.config.max_member_mb, max_total_gb or max_compression_ratio.",
        ) from exc
    context.log.info(
        f"merged {len(report.table)} images: {report.scanned} members checked, {report.images_written} written, "
        f"{len(report.duplicates)} duplicates, {len(report.quarantine)} quarantined in {report.seconds:.1f} s"
    )
    return [
        dg.MaterializeResult(
            asset_key=MERGED_IMAGES,
            metadata={**_images_metadata(out_dir, report), **data_root_metadata(root)},
            data_version=dg.DataVersion(fingerprint(f"{i}:{h}" for i, h in ids_and_hashes(out_dir))),
        ),
        dg.MaterializeResult(
            asset_key=MERGED_METADATA,
            metadata={**_metadata_metadata(out_dir, report), **data_root_metadata(root)},
            data_version=dg.DataVersion(files_version(out_dir / layout.METADATA_CSV)),
        ),
    ]


def _images_metadata(out_dir: Path, report: MergeReport) -> dict:
    per_source = [
        {"source": name, "zip_members": s.members, "image_members": s.image_members, "other_members": s.other_members,
         "checked_this_run": s.scanned, "reused": s.reused, "rejected": s.rejected, "kept": s.kept}
        for name, s in report.per_source.items()
    ]
    dup_reasons = report.duplicates["reason"].value_counts().to_dict() if len(report.duplicates) else {}
    quarantine_reasons = report.quarantine["reason"].value_counts().to_dict() if len(report.quarantine) else {}
    suspicious = [n for s in report.per_source.values() for n in s.suspicious_names]
    return {
        "images": len(report.table),
        "dagster/row_count": len(report.table),
        "per_source": table_metadata(per_source),
        "duplicates_dropped": len(report.duplicates),
        "duplicates_by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in dup_reasons.items()}),
        "quarantined": len(report.quarantine),
        "quarantined_by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in quarantine_reasons.items()}),
        "suspicious_member_names": dg.MetadataValue.json(suspicious[:50]),
        "members_checked_this_run": report.scanned,
        "compute_backend": report.backend,
        "compute_workers": report.compute_workers,
        "images_written_this_run": report.images_written,
        "images_deleted_this_run": report.images_deleted,
        "MB_written_this_run": round(report.bytes_written / 1e6, 2),
        "total_MB": round(report.table.file_bytes / 1e6, 2),
        "seconds": round(report.seconds, 2),
        "path": dg.MetadataValue.path(str(out_dir / "images")),
        "duplicates_csv": dg.MetadataValue.path(str(out_dir / layout.DUPLICATES_CSV)),
        "quarantine_csv": dg.MetadataValue.path(str(out_dir / layout.QUARANTINE_CSV)),
    }


def _metadata_metadata(out_dir: Path, report: MergeReport) -> dict:
    table = report.table  # summed while metadata.csv was written: the table is never held whole
    preview_columns = ["isic_id", "source", "benign_malignant", "diagnosis", "age_approx", "sex",
                       "anatom_site_general", "image_type", "patient_id", "lesion_id", "width", "height"]
    return {
        "rows": len(table),
        "dagster/row_count": len(table),
        "class_counts": dg.MetadataValue.json(dict(sorted(table.class_counts.items())) if len(table) else {}),
        "image_types": dg.MetadataValue.json(
            dict(sorted(table.image_types.items(), key=lambda kv: (-kv[1], str(kv[0])))) if len(table) else {}),
        "classes_per_source": table_metadata(table.classes_by_source().to_dict("records")),
        "label_conflicts": len(report.conflicts),
        "images_without_metadata": report.images_without_metadata,
        "unlabelled_rows": table.unlabelled,
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "none"),
        "preview": dg.MetadataValue.md(table.preview[preview_columns].head(10).to_markdown(index=False)),
        "path": dg.MetadataValue.path(str(out_dir / layout.METADATA_CSV)),
        "parquet": dg.MetadataValue.path(str(out_dir / layout.METADATA_PARQUET)),
        "conflicts_csv": dg.MetadataValue.path(str(out_dir / layout.CONFLICTS_CSV)),
        # The types stored in metadata.parquet, which the CSV (read back as text) does not keep.
        "dagster/column_schema": column_schema(
            typed_columns(table.columns, parquet_column_types(out_dir / layout.METADATA_PARQUET), table.column_types)
        ),
    }


