"""raw_zips: every file of the selected ISIC sources, downloaded (sources and downloads stage)."""



import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.sources.catalog import CatalogError, Source
from ..core.sources.demo_url import DEMO_MIRROR_URL_ENV, DEMO_PLACEHOLDER, demo_mirror_url
from ..core.sources.download import DownloadJob, DownloadPolicy, FileRecord, download_all
from ..core.sources.http_mirror import serve_folder
from ..core.sources.isic_api import ApiDownloadReport, ApiQuery, api_token_from_env, download_api_source
from ..demo.generate import generate_demo_mirror
from .metadata import data_root_metadata, fingerprint, table_metadata
from .policies import NETWORK_RETRY, OWNERS, RAW_ZIPS_AUTOMATION, stage_tags
from .resources import WRITE_POOL, IsicSettings

GROUP = "ingest"


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
    automation_condition=RAW_ZIPS_AUTOMATION,
    retry_policy=NETWORK_RETRY,
    owners=OWNERS,
    tags=stage_tags("sources"),
)
def raw_zips(context: dg.AssetExecutionContext, config: RawZipsConfig, isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    try:
        sources = isic.selected_sources()
    except CatalogError as exc:
        # A wrong selection or catalog is not fixed by waiting: fail at once instead of retrying.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
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
        metadata={**metadata, **data_root_metadata(root)},
        data_version=dg.DataVersion(fingerprint([*(f"{r.path}:{r.sha256}" for r in records), *api_parts])),
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
        "manifest": dg.MetadataValue.path(str(root / layout.DOWNLOADS / layout.DOWNLOAD_MANIFEST)),
    }


