"""The live ISIC Archive as a source: API v2 search, cursor paging, signed-URL image downloads.

The challenge files are frozen; new images appear only in the archive (docs/ISIC_SOURCES.md 2). This
module pages ``images/search/`` and writes what the official client ``isic image download`` writes
(docs/ISIC_SOURCES.md 2.5), so ``merge`` can read the folder like an archive export::

    <dest_dir>/images/<isic_id><ext>     one file per image, extension from the URL path (isic-cli PR #94)
    <dest_dir>/metadata.csv              isic_id, attribution, copyright_license + sorted union of keys
    <dest_dir>/attribution.txt           attributions as the archive orders them (docs/ISIC_SOURCES.md 2.4)
    <dest_dir>/licenses/<licence>.txt    zip-download/license-file/{CC-0|CC-BY|CC-BY-NC}/

What it does differently from isic-cli, because of what its users report (docs/ISIC_SOURCES.md 3):

* every request (pages, records, images, licence texts) goes through the downloader's retry policy
  (:class:`~isic_assets.core.sources.download.DownloadPolicy`: 429/5xx, timeouts and dropped connections,
  full-jitter backoff, ``Retry-After``), because paging 71k records times out (isic-cli #4, #11, #28);
* the count and total size are asked first and the download is **refused** before any byte moves
  when the free disk space cannot hold what is still missing plus a margin (isic-cli only prompts);
* ``files.full.url`` is a time-limited signed URL (docs/ISIC_SOURCES.md 2.2): it is used at once, never
  written anywhere, never logged with its query string, and when it is refused (403: expired or bad
  signature) ``images/{isic_id}/`` is asked for a fresh one;
* pages are fetched only as fast as images download (a bounded window), so a URL is used minutes
  after it was issued, not hours;
* a failed image is recorded and the others continue; the failures are listed in the report and
  raised together at the end (isic-cli's thread pool loses them); ``metadata.csv`` is written only
  after a complete listing, so a partial listing never shrinks a source (isic-cli #19).

An optional token (``ISIC_API_TOKEN``, see :func:`api_token_from_env`) is sent as
``Authorization: Bearer`` to the API's own origin only: never to the signed content URLs (they carry
their own credentials, isic-cli ``io/http.py``), never logged, never written.
"""

from __future__ import annotations

from .client import (
    ATTRIBUTION_NAME,
    DEFAULT_API_URL,
    DEFAULT_FREE_SPACE_MARGIN,
    IMAGES_DIR,
    LEAD_COLUMNS,
    LICENSES_DIR,
    MAX_PAGE_SIZE,
    MAX_URL_REFRESHES,
    METADATA_NAME,
    TOKEN_ENV_VAR,
    ApiDownloadError,
    ApiDownloadReport,
    ApiFailure,
    ApiQuery,
    InsufficientDiskSpaceError,
    IsicApiClient,
    IsicApiError,
    api_token_from_env,
    format_bytes,
)
from .download_source import (
    download_api_source,
)
from .records import (
    bytes_still_needed,
    ensure_free_space,
    image_extension,
    metadata_table,
    present_image_bytes,
)
from .search import (
    downloaded_image_ids,
    get_image,
    iter_images,
    new_image_ids,
    search_fingerprint,
    search_size,
)

__all__ = [
    "ATTRIBUTION_NAME",
    "DEFAULT_API_URL",
    "DEFAULT_FREE_SPACE_MARGIN",
    "IMAGES_DIR",
    "LEAD_COLUMNS",
    "LICENSES_DIR",
    "MAX_PAGE_SIZE",
    "MAX_URL_REFRESHES",
    "METADATA_NAME",
    "TOKEN_ENV_VAR",
    "ApiDownloadError",
    "ApiDownloadReport",
    "ApiFailure",
    "ApiQuery",
    "InsufficientDiskSpaceError",
    "IsicApiClient",
    "IsicApiError",
    "api_token_from_env",
    "bytes_still_needed",
    "download_api_source",
    "downloaded_image_ids",
    "ensure_free_space",
    "format_bytes",
    "get_image",
    "image_extension",
    "iter_images",
    "metadata_table",
    "new_image_ids",
    "present_image_bytes",
    "search_fingerprint",
    "search_size",
]
