"""Download the raw archive files with httpx: retries, resume, conditional requests, checksums.

ISIC zips are up to ~10 GB and are fetched over flaky links, so every file goes through one
documented decision per run (the idea of pooch's "download, update or fetch from cache"):

* **not modified**: the manifest (``<root>/manifest.json``) says which URL served the local copy,
  with its size, sha256 and validators. If the file is still there with that size (and the catalog
  sha256, when given, is the recorded one), that URL is asked first, with ``If-None-Match`` /
  ``If-Modified-Since``; a 304 means nothing is transferred. Another URL of the job (a mirror, or
  the demo mirror on a new port) is offered the strong ETag only. A server that gave no validators
  is asked with ``HEAD`` instead and the file counts as unchanged when ``Content-Length`` equals the
  recorded size. That can miss a same-size rewrite, but it is the only cheap signal such a server
  offers; a catalog sha256 still guards the content of new downloads. The local file is *not*
  re-hashed (that would read every GB zip on every run).
* **resumed**: an interrupted download leaves ``<dest>.part`` plus a small sidecar
  ``<dest>.part.json`` (URL, ETag, Last-Modified, total size). The next attempt, in this run or a
  later one, asks for ``Range: bytes=<have>-`` with ``If-Range`` set to the strong ETag (else the
  Last-Modified date). A 206 continues the file; a 200 (the server ignores ranges, or the remote
  changed) restarts it from zero with that same response. A partial is only resumed from the URL
  that started it: validators mean nothing across mirrors.
* **downloaded**: everything else streams the whole body into ``<dest>.part``.

The sha256 is computed while streaming; only a partial inherited from an earlier run is hashed once
before resuming. ``<dest>`` is replaced atomically (rename) only after the received size equals
``Content-Length`` (or the ``Content-Range`` total) and an expected sha256 matches, so a reader never
sees a truncated or corrupt file. A sha256 mismatch deletes the partial and re-downloads once from
scratch before that URL is given up. After a final failure, a resumable partial and its sidecar are
deliberately kept so the next run continues where this one stopped; a partial that cannot be resumed
(the server gave no validators) is deleted.

Retries (per URL, up to ``max_attempts``) cover connection errors, timeouts, incomplete bodies, 429
and 5xx, with exponential backoff and full jitter ("Exponential Backoff And Jitter", AWS
Architecture Blog, 2015), or the server's ``Retry-After`` (seconds or HTTP-date) capped at
``backoff_max``. Any other 4xx fails that URL at once, and the next mirror URL is tried.

``file://`` URLs are copied with the same size/sha256 checks and atomic rename; they are "not
modified" when the manifest's ETag (size + mtime, as the mirror server computes it) still matches.

One ``download_all`` call per downloads root at a time: it owns the manifest and the partials.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ..atomic import remove_stale_temporaries
from ..operation.disk_space import DiskFullError, NotEnoughSpaceError, free_bytes, is_disk_full
from .download_types import (
    FILE_STATUSES,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    PART_SUFFIX,
    SIDECAR_SUFFIX,
    DownloadError,
    DownloadJob,
    DownloadPolicy,
    FileRecord,
    FileStatus,
    JobFailure,
    UrlFailure,
    _Manifest,
    read_manifest,
)
from .file_transfer import STAGE, SpaceBook, _JobFailed, _JobRun

# The downloader's public names; its types live in download_types.py, one file's transfer in
# file_transfer.py.
__all__ = [
    "FILE_STATUSES",
    "MANIFEST_FIELDS",
    "MANIFEST_NAME",
    "PART_SUFFIX",
    "SIDECAR_SUFFIX",
    "DownloadError",
    "DownloadJob",
    "DownloadPolicy",
    "FileRecord",
    "FileStatus",
    "JobFailure",
    "UrlFailure",
    "download_all",
    "read_manifest",
]

_logger = logging.getLogger(__name__)


def download_all(
    jobs: Sequence[DownloadJob],
    root: Path,
    policy: DownloadPolicy | None = None,
    log: Callable[[str], None] = _logger.info,
) -> list[FileRecord]:
    """Fetch every job into ``root`` and return their records in job order.

    Jobs run ``policy.concurrency`` at a time on one shared ``httpx.Client``. The manifest is
    rewritten (atomically, sorted) after each success, so a killed run keeps what it finished.
    Every job runs; failures are raised together as one :class:`DownloadError` at the end.
    ``log`` is called from worker threads.
    """
    policy = policy or DownloadPolicy()
    root = Path(os.path.abspath(root))
    rel_paths = _relative_paths(jobs, root)
    root.mkdir(parents=True, exist_ok=True)
    for folder in {root, *(job.dest.parent for job in jobs)}:
        remove_stale_temporaries(folder)  # .tmp-* sidecar/manifest writes of a killed run
    manifest = _Manifest(root)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout, read=policy.read_timeout,
        write=policy.read_timeout, pool=policy.read_timeout,
    )
    limits = httpx.Limits(max_connections=policy.concurrency, max_keepalive_connections=policy.concurrency)
    with (
        httpx.Client(timeout=timeout, limits=limits, follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="download") as pool,
    ):
        space = SpaceBook(root)
        runs = [_JobRun(job, rel, client, policy, log, manifest) for job, rel in zip(jobs, rel_paths, strict=True)]
        for run in runs:
            run.space = space
        futures = [pool.submit(_run_job, run) for run in runs]
        outcomes = [future.exception() or future.result() for future in futures]
    # A disk that is full (or too small) fails every file alike: one clear error, not one per file.
    disk = [o for o in outcomes if isinstance(o, (NotEnoughSpaceError, DiskFullError))]
    if disk:
        raise disk[0]
    unexpected = [o for o in outcomes if isinstance(o, BaseException)]
    if unexpected:
        raise unexpected[0]
    records = [outcome for outcome in outcomes if isinstance(outcome, FileRecord)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, JobFailure)]
    if failures:
        raise DownloadError(failures, records)
    return records


def _relative_paths(jobs: Sequence[DownloadJob], root: Path) -> list[str]:
    """Posix paths of each dest under root; rejects dests outside root, duplicates, the manifest."""
    seen: dict[str, str] = {}
    rel_paths = []
    for job in jobs:
        dest = Path(os.path.abspath(job.dest))
        try:
            rel = dest.relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"{job.label}: dest {dest} is not inside the downloads root {root}") from None
        if rel in (".", MANIFEST_NAME):
            raise ValueError(f"{job.label}: dest {dest} would overwrite the downloads root or its manifest")
        if rel in seen:
            raise ValueError(f"{job.label} and {seen[rel]} both download to {rel}")
        seen[rel] = job.label
        rel_paths.append(rel)
    return rel_paths


def _run_job(run: _JobRun) -> FileRecord | JobFailure:
    """Run one job, turning every failure into a JobFailure so the other jobs keep going."""
    try:
        return run.run()
    except _JobFailed as exc:
        return exc.failure
    except OSError as exc:
        if is_disk_full(exc):
            # Every other file would hit the same wall; the resumable .part is kept for the next run.
            raise DiskFullError(STAGE, run.job.dest.parent, free_bytes(run.job.dest.parent), None, exc) from exc
        return run.failure(error=f"local I/O error: {exc}")
    except NotEnoughSpaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with its type; the other jobs must finish
        return run.failure(error=f"unexpected {type(exc).__name__}: {exc}")
