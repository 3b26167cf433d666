"""Downloading an ``isic_api`` source: bounded paging window, signed URLs, failures collected."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...atomic import remove_stale_temporaries, write_bytes_if_changed
from ...splits.dataset_card import order_attributions
from ..download import DownloadPolicy
from ..retry import describe_exception
from .client import (
    _ARCHIVE_LICENSE_NAMES,
    ATTRIBUTION_NAME,
    DEFAULT_FREE_SPACE_MARGIN,
    IMAGES_DIR,
    LICENSES_DIR,
    MAX_PAGE_SIZE,
    MAX_URL_REFRESHES,
    METADATA_NAME,
    ApiDownloadError,
    ApiDownloadReport,
    ApiFailure,
    ApiQuery,
    IsicApiClient,
    IsicApiError,
    _SignedUrlRefused,
    format_bytes,
)
from .records import (
    _csv_bytes,
    _ImageRef,
    bytes_still_needed,
    ensure_free_space,
    metadata_table,
    present_image_bytes,
)
from .search import get_image, iter_images, search_size

# Logged under the package's name, as before the package was split.
_logger = logging.getLogger(__package__)


@dataclass
class _Outcome:
    isic_id: str
    status: Literal["downloaded", "skipped", "failed"]
    bytes: int = 0
    refreshes: int = 0
    reason: str = ""


@dataclass
class _Tally:
    """Running totals, kept by the coordinating thread only."""

    listed: int = 0
    downloaded: int = 0
    skipped: int = 0
    bytes: int = 0
    refreshes: int = 0
    failures: list[ApiFailure] = field(default_factory=list)

    def add(self, outcome: _Outcome) -> None:
        self.refreshes += outcome.refreshes
        if outcome.status == "downloaded":
            self.downloaded += 1
            self.bytes += outcome.bytes
        elif outcome.status == "skipped":
            self.skipped += 1
        else:
            self.failures.append(ApiFailure(outcome.isic_id, outcome.reason))


class _ImageDownloads:
    """Fetches the images of a record stream with bounded concurrency and a bounded look-ahead."""

    def __init__(self, client: IsicApiClient, query: ApiQuery, images_dir: Path, concurrency: int,
                 log: Callable[[str], None]) -> None:
        self.client, self.query, self.images_dir, self.log = client, query, images_dir, log
        self.concurrency = concurrency
        self.window = 2 * concurrency  # records in flight: pages are fetched only as images complete
        self.tally = _Tally()
        self.records: list[dict] = []
        self._last_log = time.monotonic()

    def run(self, records: Iterable[Any], planned: int) -> None:
        """Download every record's image; a paging error propagates after in-flight images finish."""
        pending: set[Future[_Outcome]] = set()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="isic-api") as pool:
            try:
                for position, record in enumerate(records):
                    self.tally.listed += 1
                    try:
                        ref = _ImageRef.from_record(record)
                    except (ValueError, TypeError) as exc:
                        self.tally.failures.append(ApiFailure(_record_label(record, position), str(exc)))
                        continue
                    self.records.append(record)
                    pending.add(pool.submit(self._one, ref))
                    if len(pending) >= self.window:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        self._collect(done, planned)
            finally:
                done, _ = wait(pending)
                self._collect(done, planned)

    def _collect(self, done: Iterable[Future[_Outcome]], planned: int) -> None:
        for future in done:
            self.tally.add(future.result())
        now = time.monotonic()
        if now - self._last_log >= self.client.policy.progress_interval_s:
            self._last_log = now
            t = self.tally
            self.log(f"isic_api: {t.downloaded + t.skipped + len(t.failures)} of {planned} images done "
                     f"({t.downloaded} downloaded, {t.skipped} already present, {len(t.failures)} failed, "
                     f"{t.bytes / 1e6:.1f} MB)")

    def _one(self, ref: _ImageRef) -> _Outcome:
        """One image: skip when present with the right size, else fetch, re-querying a refused URL."""
        refreshes = 0
        try:
            while True:
                dest = self.images_dir / f"{ref.isic_id}{ref.extension}"
                if _has_size(dest, ref.size):
                    return _Outcome(ref.isic_id, "skipped", refreshes=refreshes)
                try:
                    written = self.client.fetch_content(ref.url, dest, ref.size, what=f"{ref.isic_id} image")
                except _SignedUrlRefused as exc:
                    if refreshes >= MAX_URL_REFRESHES:
                        raise IsicApiError(f"signed URL refused ({exc}) even after {refreshes} fresh URLs "
                                           f"from images/{ref.isic_id}/") from None
                    refreshes += 1
                    self.log(f"isic_api: {ref.isic_id}: signed URL refused ({exc}), probably expired; "
                             f"asking images/{ref.isic_id}/ for a fresh one")
                    ref = _ImageRef.from_record(get_image(self.client, self.query, ref.isic_id))
                    continue
                return _Outcome(ref.isic_id, "downloaded", bytes=written, refreshes=refreshes)
        except (IsicApiError, ValueError, TypeError) as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"local I/O error: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported with its type; the other images must finish
            reason = f"unexpected {describe_exception(exc)}"
        self.log(f"isic_api: {ref.isic_id} failed: {reason}")
        return _Outcome(ref.isic_id, "failed", refreshes=refreshes, reason=reason)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _record_label(record: Any, position: int) -> str:
    isic_id = record.get("isic_id") if isinstance(record, dict) else None
    return isic_id if isinstance(isic_id, str) and isic_id else f"record #{position + 1}"


def _write_licenses(client: IsicApiClient, query: ApiQuery, folder: Path, licenses: Iterable[str],
                    failures: list[ApiFailure]) -> list[str]:
    """Fetch each licence text from ``zip-download/license-file/{licence}/`` (docs/ISIC_SOURCES.md 2.1).

    Texts of archive licences no longer present are removed so the folder matches metadata.csv.
    """
    written = []
    for license_ in sorted(set(licenses)):
        if license_ not in _ARCHIVE_LICENSE_NAMES:
            failures.append(ApiFailure(f"licenses/{license_}.txt", f"unknown licence {license_!r}; the archive "
                                       f"has {', '.join(_ARCHIVE_LICENSE_NAMES)} (docs/ISIC_SOURCES.md 2.4)"))
            continue
        try:
            text = client.get_text(query.endpoint(f"zip-download/license-file/{license_}/"),
                                   what=f"{license_} licence text")
        except IsicApiError as exc:
            failures.append(ApiFailure(f"licenses/{license_}.txt", str(exc)))
            continue
        write_bytes_if_changed(folder / f"{license_}.txt", text.encode("utf-8"))
        written.append(license_)
    for name in _ARCHIVE_LICENSE_NAMES:
        if name not in licenses:
            (folder / f"{name}.txt").unlink(missing_ok=True)
    return written


def _write_outputs(client: IsicApiClient, query: ApiQuery, dest_dir: Path, records: list[dict],
                   failures: list[ApiFailure]) -> tuple[int, list[str]]:
    """metadata.csv, attribution.txt and licenses/ for the listed records; returns (rows, licences)."""
    header, rows = metadata_table(records)
    write_bytes_if_changed(dest_dir / METADATA_NAME, _csv_bytes(header, rows))
    attributions = order_attributions(row["attribution"] for row in rows if row["attribution"])
    write_bytes_if_changed(dest_dir / ATTRIBUTION_NAME, "\n\n".join(attributions).encode("utf-8"))
    folder = dest_dir / LICENSES_DIR
    folder.mkdir(exist_ok=True)
    licenses = {row["copyright_license"] for row in rows if row["copyright_license"]}
    return len(rows), _write_licenses(client, query, folder, licenses, failures)


def download_api_source(
    query: ApiQuery,
    dest_dir: Path,
    policy: DownloadPolicy | None = None,
    token: str | None = None,
    log: Callable[[str], None] = _logger.info,
    concurrency: int = 4,
    min_free_bytes_margin: int = DEFAULT_FREE_SPACE_MARGIN,
    page_size: int = MAX_PAGE_SIZE,
) -> ApiDownloadReport:
    """Download every image matching ``query`` plus metadata.csv, attribution.txt and licenses/.

    Order of work: (1) count and total size (:func:`search_size`) and the disk check, which raises
    :class:`InsufficientDiskSpaceError` before anything is written; (2) paging and downloading with
    ``concurrency`` threads, images already present with the right size skipped; (3) the three
    outputs, only when the listing completed. Failures of single images or licence texts never stop
    the others; they are raised together as :class:`ApiDownloadError` (carrying the report) at the
    end. An :class:`IsicApiError` from the paging itself (a bad query, a page that keeps failing)
    propagates once the images in flight are done. ``log`` is called from worker threads and never
    receives the token or a signed URL's query string.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    policy = policy or DownloadPolicy()
    dest_dir = Path(os.path.abspath(dest_dir))
    images_dir = dest_dir / IMAGES_DIR
    with IsicApiClient.for_query(query, policy, token, log, max_connections=concurrency) as client:
        count, total = search_size(client, query)
        planned = min(count, query.limit) if query.limit else count
        needed, estimated = bytes_still_needed(count, total, query.limit, present_image_bytes(dest_dir))
        detail = f"{planned:,} images of {query.describe()} ({format_bytes(total)} in all); "
        free = ensure_free_space(dest_dir, needed, min_free_bytes_margin, detail)
        log(f"isic_api: {planned:,} of {count:,} matching images for {query.describe()}; "
            f"{format_bytes(needed)} still to download{' (estimated from the mean size)' if estimated else ''}, "
            f"{format_bytes(free)} free at {dest_dir}")
        images_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(images_dir)
        downloads = _ImageDownloads(client, query, images_dir, concurrency, log)
        downloads.run(iter_images(client, query, page_size), planned)
        tally = downloads.tally
        rows, licenses = _write_outputs(client, query, dest_dir, downloads.records, tally.failures)
    report = ApiDownloadReport(
        dest_dir=dest_dir, query=query, count=count, total_bytes=total, planned=planned,
        needed_bytes=needed, estimated=estimated, free_bytes=free, listed=tally.listed,
        downloaded=tally.downloaded, skipped=tally.skipped, bytes_downloaded=tally.bytes,
        url_refreshes=tally.refreshes, metadata_rows=rows, licenses=tuple(licenses),
        failures=tuple(tally.failures),
    )
    log(f"isic_api: done: {report.downloaded} downloaded ({report.bytes_downloaded / 1e6:.1f} MB), "
        f"{report.skipped} already present, {len(report.failures)} failed, {report.url_refreshes} URLs "
        f"refreshed; {rows} metadata rows, licences {', '.join(licenses) or 'none'}")
    if report.failures:
        raise ApiDownloadError(report)
    return report
