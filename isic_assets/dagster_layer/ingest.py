"""raw_zips, merged_images and merged_metadata: the ingestion half of the graph."""


import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.catalog import Source
from ..core.download import DownloadJob, DownloadPolicy, FileRecord, download_all
from ..core.http_mirror import serve_folder
from ..core.isic_api import ApiDownloadReport, ApiQuery, api_token_from_env, download_api_source
from ..core.merge import MergeOptions, MergeReport, SourceArchive, merge_sources
from ..core.quality import class_counts
from ..core.zip_stream import ZipLimits, ZipRefused
from ..demo.generate import generate_demo_mirror
from .metadata import md_table, table_metadata
from .resources import WRITE_POOL, IsicSettings

GROUP = "ingest"
DEMO_PLACEHOLDER = "demo_mirror"
# A demo mirror served elsewhere (`python -m isic_assets.demo serve DIR`): raw_zips and the sources
# sensor then use that URL for {demo_mirror} instead of generating and serving one per run.
DEMO_MIRROR_URL_ENV = "ISIC_DEMO_MIRROR_URL"


def demo_mirror_url() -> str | None:
    """The external demo mirror's base URL from $ISIC_DEMO_MIRROR_URL, or None when unset."""
    return os.environ.get(DEMO_MIRROR_URL_ENV, "").strip().rstrip("/") or None


class RawZipsConfig(dg.Config):
    """Download behaviour (the defaults suit the real S3 buckets)."""

    concurrency: int = Field(default=3, ge=1, le=32, description="Files downloaded at once.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0, description="Longest silence before a retry.")
    max_attempts: int = Field(default=6, ge=1, le=50, description="Tries per URL before the next mirror.")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Cap of the exponential backoff.")
    progress_interval_s: float = Field(default=10.0, gt=0)
    demo_seed: int = Field(default=0, description="Seed of the generated demo mirror (same seed, same bytes).")


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"python", "http"},
    description="Downloads every file of the selected ISIC sources into downloaded_zips/<source>/.",
    pool=WRITE_POOL,
)
def raw_zips(context: dg.AssetExecutionContext, config: RawZipsConfig, isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    sources = isic.selected_sources()
    policy = DownloadPolicy(
        concurrency=config.concurrency,
        connect_timeout=config.connect_timeout_s,
        read_timeout=config.read_timeout_s,
        max_attempts=config.max_attempts,
        backoff_max=config.backoff_max_s,
        progress_interval_s=config.progress_interval_s,
    )
    with _substitutions(root, sources, config.demo_seed, context) as values:
        resolved = [s.with_substitutions(values) if s.placeholders else s for s in sources]
        jobs = [
            DownloadJob(source=s.name, role=role, urls=spec.urls, dest=layout.download_path(root, s, role),
                        sha256=spec.sha256)
            for s in resolved
            for role, spec in s.files.items()
        ]
        records = download_all(jobs, root / layout.DOWNLOADS, policy, log=context.log.info) if jobs else []
    api_reports = {s.name: _download_api(root, s, policy, config, context) for s in sources if s.api is not None}
    metadata = _download_metadata(root, sources, records)
    if api_reports:
        metadata["api_sources"] = dg.MetadataValue.json({k: v.summary() for k, v in api_reports.items()})
    api_parts = [f"{name}:{_file_sha256(layout.api_folder(root, s) / 'metadata.csv')}"
                 for name, s in ((s.name, s) for s in sources if s.api is not None)]
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(_fingerprint([*(f"{r.path}:{r.sha256}" for r in records), *api_parts])),
    )


def _download_api(root: Path, source: Source, policy: DownloadPolicy, config: RawZipsConfig,
                  context: dg.AssetExecutionContext) -> ApiDownloadReport:
    """Download an isic_api source: count and size first (disk check), then images and metadata."""
    assert source.api is not None
    query = ApiQuery(query=source.api.query, collections=source.api.collections, limit=source.api.limit,
                     api_url=source.api.api_url)
    context.log.info(f"{source.name}: searching {query.api_url} (query {query.query!r}, "
                     f"collections {list(query.collections)}, limit {query.limit or 'all'})")
    return download_api_source(query, layout.api_folder(root, source), policy, token=api_token_from_env(),
                               log=context.log.info, concurrency=config.concurrency)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


@contextlib.contextmanager
def _substitutions(root: Path, sources: list[Source], seed: int, context: dg.AssetExecutionContext
                   ) -> Iterator[dict[str, str]]:
    """Generate and serve the demo mirror over loopback while downloads run, when it is selected.

    With $ISIC_DEMO_MIRROR_URL set, the mirror is someone else's to serve (and to change, which is
    what the sources sensor watches): its URL is used as is, nothing is generated or served.
    """
    if not any(DEMO_PLACEHOLDER in s.placeholders for s in sources):
        yield {}
        return
    external = demo_mirror_url()
    if external:
        context.log.info(f"demo mirror: using {external} from ${DEMO_MIRROR_URL_ENV}; nothing generated or served")
        yield {DEMO_PLACEHOLDER: external}
        return
    mirror_dir = root / layout.DEMO_MIRROR
    info = generate_demo_mirror(mirror_dir, seed=seed)
    context.log.info(f"demo mirror ready in {mirror_dir} ({len(info['files'])} files, seed {seed})")
    with serve_folder(mirror_dir) as server:
        context.log.info(f"serving the demo mirror at {server.url}")
        yield {DEMO_PLACEHOLDER: server.url}


def _download_metadata(root: Path, sources: list[Source], records: list[FileRecord]) -> dict:
    rows = [
        {"source": r.source, "role": r.role, "file": Path(r.path).name, "MB": round(r.size / 1e6, 2),
         "status": r.status, "sha256": r.sha256[:16]}
        for r in sorted(records, key=lambda r: (r.source, r.role))
    ]
    transferred = sum(r.bytes_transferred for r in records)
    seconds = sum(r.seconds for r in records)
    statuses = pd.Series([r.status for r in records]).value_counts().to_dict() if records else {}
    return {
        "sources": ", ".join(s.name for s in sources),
        "files": len(records),
        "total_MB": round(sum(r.size for r in records) / 1e6, 2),
        "transferred_MB": round(transferred / 1e6, 2),
        "files_by_status": dg.MetadataValue.json({str(k): int(v) for k, v in statuses.items()}),
        "download_seconds": round(seconds, 2),
        "downloads": table_metadata(rows),
        "path": dg.MetadataValue.path(str(root / layout.DOWNLOADS)),
        "manifest": dg.MetadataValue.path(str(root / layout.DOWNLOADS / "manifest.json")),
    }


# ----------------------------------------------------------------------------------------------


class MergeConfig(dg.Config):
    """Zip-bomb limits and parallelism of the merge."""

    max_member_mb: float = Field(default=512.0, gt=0, description="Largest single image member accepted.")
    max_total_gb: float = Field(default=256.0, gt=0, description="Largest total uncompressed size of a zip.")
    max_compression_ratio: float = Field(default=100.0, gt=1, description="Refuse members compressed more.")
    workers: int = Field(default=2, ge=1, le=32, description="Threads checking images (decode + sha256).")


MERGED_IMAGES = dg.AssetKey("merged_images")
MERGED_METADATA = dg.AssetKey("merged_metadata")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(MERGED_IMAGES, deps=[raw_zips], group_name=GROUP, code_version="1", kinds={"python", "jpeg"},
                     description="Every kept image once, as merged_data/images/<isic_id>.<ext>; duplicates "
                                 "and corrupt files recorded, never silently dropped."),
        dg.AssetSpec(MERGED_METADATA, deps=[raw_zips], group_name=GROUP, code_version="1",
                     kinds={"python", "csv", "parquet"},
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
    )
    out_dir = root / layout.MERGED
    try:
        report = merge_sources(archives, out_dir, options, log=context.log.info)
    except ZipRefused as exc:
        # The core names its ZipLimits fields; a UI user needs the names of this asset's config.
        raise dg.Failure(
            description=f"{exc}\nIf the archive is trusted, raise the limit in the run config: "
                        "ops.merge_sources.config.max_member_mb, max_total_gb or max_compression_ratio.",
        ) from exc
    context.log.info(
        f"merged {len(report.metadata)} images: {report.scanned} members checked, {report.images_written} written, "
        f"{len(report.duplicates)} duplicates, {len(report.quarantine)} quarantined in {report.seconds:.1f} s"
    )
    yield dg.MaterializeResult(
        asset_key=MERGED_IMAGES,
        metadata=_images_metadata(out_dir, report),
        data_version=dg.DataVersion(
            _fingerprint(f"{i}:{h}" for i, h in zip(report.metadata["isic_id"], report.metadata["sha256"], strict=True))
        ),
    )
    yield dg.MaterializeResult(
        asset_key=MERGED_METADATA,
        metadata=_metadata_metadata(out_dir, report),
        data_version=dg.DataVersion(hashlib.sha256((out_dir / "metadata.csv").read_bytes()).hexdigest()[:32]),
    )


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
        "images": len(report.metadata),
        "dagster/row_count": len(report.metadata),
        "per_source": table_metadata(per_source),
        "duplicates_dropped": len(report.duplicates),
        "duplicates_by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in dup_reasons.items()}),
        "quarantined": len(report.quarantine),
        "quarantined_by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in quarantine_reasons.items()}),
        "suspicious_member_names": dg.MetadataValue.json(suspicious[:50]),
        "members_checked_this_run": report.scanned,
        "images_written_this_run": report.images_written,
        "images_deleted_this_run": report.images_deleted,
        "MB_written_this_run": round(report.bytes_written / 1e6, 2),
        "total_MB": round(float(report.metadata["file_bytes"].sum()) / 1e6, 2) if len(report.metadata) else 0.0,
        "seconds": round(report.seconds, 2),
        "path": dg.MetadataValue.path(str(out_dir / "images")),
        "duplicates_csv": dg.MetadataValue.path(str(out_dir / "duplicates.csv")),
        "quarantine_csv": dg.MetadataValue.path(str(out_dir / "quarantine.csv")),
    }


def _metadata_metadata(out_dir: Path, report: MergeReport) -> dict:
    frame = report.metadata
    by_source = (
        frame.assign(label=frame["benign_malignant"].replace("", "unlabelled"))
        .groupby(["source", "label"]).size().unstack(fill_value=0).reset_index()
        if len(frame) else pd.DataFrame()
    )
    preview_columns = ["isic_id", "source", "benign_malignant", "diagnosis", "age_approx", "sex",
                       "anatom_site_general", "patient_id", "lesion_id", "width", "height"]
    return {
        "rows": len(frame),
        "dagster/row_count": len(frame),
        "class_counts": dg.MetadataValue.json(class_counts(frame)),
        "classes_per_source": table_metadata(by_source.to_dict("records")),
        "label_conflicts": len(report.conflicts),
        "images_without_metadata": report.images_without_metadata,
        "unlabelled_rows": int(frame["benign_malignant"].eq("").sum()) if len(frame) else 0,
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "none"),
        "preview": dg.MetadataValue.md(md_table(frame[preview_columns].head(10))),
        "path": dg.MetadataValue.path(str(out_dir / "metadata.csv")),
        "parquet": dg.MetadataValue.path(str(out_dir / "metadata.parquet")),
        "conflicts_csv": dg.MetadataValue.path(str(out_dir / "conflicts.csv")),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(c, "integer" if c in ("age_approx", "width", "height", "file_bytes",
                                                          "exif_orientation") else "string")
                     for c in frame.columns]
        ),
    }


def _fingerprint(parts) -> str:
    digest = hashlib.sha256()
    for part in sorted(parts):
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]
