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

import csv
import io
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx

from .. import layout
from ..atomic import atomic_open, remove_stale_temporaries, write_bytes_if_changed
from ..ids import ISIC_ID_RE, member_extension
from ..splits.dataset_card import order_attributions
from .download import DownloadPolicy
from .retry import RetriesExhausted, Transient, call_with_retries, describe_exception, http_status, parse_retry_after

DEFAULT_API_URL = "https://api.isic-archive.com/api/v2/"
#: The server clamps ``limit`` to 100 per page (isic : ``isic/core/pagination.py``, docs/ISIC_SOURCES.md 2.1).
MAX_PAGE_SIZE = 100
#: Free space kept on top of the bytes still to download: a full disk corrupts more than the download.
DEFAULT_FREE_SPACE_MARGIN = 1 << 30
TOKEN_ENV_VAR = "ISIC_API_TOKEN"
IMAGES_DIR = "images"
METADATA_NAME = layout.METADATA_CSV
ATTRIBUTION_NAME = "attribution.txt"
LICENSES_DIR = "licenses"
#: Fresh signed URLs asked for one image before its download counts as failed.
MAX_URL_REFRESHES = 2
#: Columns isic-cli puts first; the acquisition and clinical keys follow, sorted (docs/ISIC_SOURCES.md 2.5).
LEAD_COLUMNS: tuple[str, ...] = ("isic_id", "attribution", "copyright_license")

_SAFE_EXTENSION = re.compile(r"^\.[a-z0-9]{1,5}$")
_ARCHIVE_LICENSE_NAMES = ("CC-0", "CC-BY", "CC-BY-NC")
_USER_AGENT = "isic-assets (isic_api source; httpx)"
_logger = logging.getLogger(__name__)
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# The query and the errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiQuery:
    """One ``isic_api`` catalog source: a search DSL query, collection ids, a limit and the API root.

    ``query`` uses the archive's DSL (``diagnosis_3:"Melanoma Invasive" AND age_approx:[20 TO 80]``,
    docs/ISIC_SOURCES.md 2.1); ``collections`` are collection ids (e.g. 70 = 2020 training); ``limit`` 0
    means every matching image (isic-cli #16: a default of 1000 silently truncated downloads).
    """

    query: str = ""
    collections: tuple[int, ...] = ()
    limit: int = 0
    api_url: str = DEFAULT_API_URL

    def __post_init__(self) -> None:
        if not isinstance(self.query, str):
            raise TypeError(f"query must be a string, got {self.query!r}")
        collections = (self.collections,) if isinstance(self.collections, int) else tuple(self.collections)
        for value in collections:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"collections must be positive integer ids, got {self.collections!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"limit must be a non-negative integer (0 = all images), got {self.limit!r}")
        parts = urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an http(s) URL such as {DEFAULT_API_URL}, got {self.api_url!r}")
        object.__setattr__(self, "query", self.query.strip())
        object.__setattr__(self, "collections", collections)
        object.__setattr__(self, "api_url", self.api_url if self.api_url.endswith("/") else self.api_url + "/")

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any]) -> ApiQuery:
        """Build from a catalog entry's ``query``/``collections``/``limit``/``api_url`` (all optional)."""
        return cls(
            query=entry.get("query") or "",
            collections=entry.get("collections") or (),
            limit=entry.get("limit") or 0,
            api_url=entry.get("api_url") or DEFAULT_API_URL,
        )

    def search_params(self) -> dict[str, str]:
        """``query`` and ``collections`` as the search endpoints take them (both always sent, like isic-cli)."""
        return {"query": self.query, "collections": ",".join(str(c) for c in self.collections)}

    def endpoint(self, path: str) -> str:
        """Absolute URL of an API path such as ``images/search/``."""
        return urljoin(self.api_url, path)

    def describe(self) -> str:
        """Human-readable one-liner for logs and errors."""
        parts = [f"query {self.query!r}" if self.query else "no query"]
        if self.collections:
            parts.append(f"collections {','.join(str(c) for c in self.collections)}")
        parts.append(f"limit {self.limit}" if self.limit else "no limit")
        return f"{self.api_url} ({', '.join(parts)})"


class IsicApiError(Exception):
    """The API (or a content URL) refused a request for good, or kept failing after every retry.

    ``status`` is the HTTP status when there was one (400 for a query the server cannot parse).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InsufficientDiskSpaceError(Exception):
    """Refusal to start: the free space at ``where`` is below the bytes still to download + margin."""

    def __init__(self, where: Path, needed: int, margin: int, free: int, detail: str = "") -> None:
        self.where, self.needed, self.margin, self.free = where, needed, margin, free
        super().__init__(
            f"not enough free disk space at {where}: {detail}the download still needs "
            f"{format_bytes(needed)} plus a safety margin of {format_bytes(margin)} "
            f"(= {format_bytes(needed + margin)}), but only {format_bytes(free)} is free. Free some "
            "space, point ISIC_DATA_DIR elsewhere, or narrow the source (query, collections, limit)."
        )


@dataclass(frozen=True)
class ApiFailure:
    """One item that could not be fetched: an image (``item`` = its isic_id) or a licence text."""

    item: str
    reason: str

    def describe(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass(frozen=True)
class ApiDownloadReport:
    """What one :func:`download_api_source` call found and did; :meth:`summary` is JSON-ready.

    ``count`` and ``total_bytes`` are what the API announced before the start; ``needed_bytes`` is the
    estimate the disk check used (``estimated`` when a ``limit`` smaller than ``count`` forced a
    mean-size estimate); ``listed`` is how many records the paging returned.
    """

    dest_dir: Path
    query: ApiQuery
    count: int
    total_bytes: int
    planned: int
    needed_bytes: int
    estimated: bool
    free_bytes: int
    listed: int = 0
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    url_refreshes: int = 0
    metadata_rows: int = 0
    licenses: tuple[str, ...] = ()
    failures: tuple[ApiFailure, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able form for run metadata (paths as strings, failures as text)."""
        out = asdict(self)
        out["dest_dir"] = str(self.dest_dir)
        out["query"] = asdict(self.query)
        out["query"]["collections"] = list(self.query.collections)
        out["licenses"] = list(self.licenses)
        out["failures"] = [failure.describe() for failure in self.failures]
        return out


class ApiDownloadError(Exception):
    """Raised at the end of a download that had failures; the rest completed and is on disk.

    ``report`` is the full :class:`ApiDownloadReport` and ``failures`` its failure list.
    """

    def __init__(self, report: ApiDownloadReport) -> None:
        self.report = report
        self.failures = report.failures
        header = (
            f"{len(report.failures)} of {report.listed} ISIC API items failed for "
            f"{report.query.describe()} ({report.downloaded} downloaded, {report.skipped} already present):"
        )
        super().__init__("\n".join([header, *(f"    {f.describe()}" for f in report.failures)]))


class _SignedUrlRefused(Exception):
    """403 from a signed content URL: expired or bad signature, so ask the API for a fresh one."""


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def api_token_from_env(name: str = TOKEN_ENV_VAR) -> str | None:
    """The API token from environment variable ``name`` (stripped), or None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


class IsicApiClient:
    """An httpx client plus the retry policy, the log and the optional token.

    The token is held privately and added per request, only to URLs on the origin (scheme, host,
    port) of ``api_url``, so a ``next`` link or a redirect elsewhere, and every signed content URL,
    goes out without it; build it with :meth:`for_query` so that origin is the query's. Use it as a
    context manager; it is safe to share between threads.
    """

    def __init__(self, api_url: str = DEFAULT_API_URL, policy: DownloadPolicy | None = None,
                 token: str | None = None, log: Callable[[str], None] = _logger.info,
                 max_connections: int = 4) -> None:
        self.policy = policy or DownloadPolicy()
        self.log = log
        self._token = token or None
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._origin = _origin(api_url)
        timeout = httpx.Timeout(
            connect=self.policy.connect_timeout, read=self.policy.read_timeout,
            write=self.policy.read_timeout, pool=self.policy.read_timeout,
        )
        limits = httpx.Limits(max_connections=max_connections + 1, max_keepalive_connections=max_connections + 1)
        self._http = httpx.Client(timeout=timeout, limits=limits, follow_redirects=True,
                                  headers={"User-Agent": _USER_AGENT})

    @classmethod
    def for_query(cls, query: ApiQuery, policy: DownloadPolicy | None = None, token: str | None = None,
                  log: Callable[[str], None] = _logger.info, max_connections: int = 4) -> IsicApiClient:
        """A client whose token goes to ``query.api_url``'s origin: the way a sensor should build one."""
        return cls(query.api_url, policy, token, log, max_connections)

    def __repr__(self) -> str:  # never show the token
        return f"IsicApiClient(origin={self._origin!r}, token={'set' if self._token else 'none'})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def shown(self, url: str) -> str:
        """``url`` as logs and errors may show it (signed query strings cut, see :func:`_redact`)."""
        return _redact(url, self._api_url)

    # ------------------------------------------------------------------ API requests
    def get_json(self, url: str, params: Mapping[str, str] | None = None, what: str = "API request") -> Any:
        """GET an API URL and decode its JSON, with retries; 4xx other than 429 raise at once."""
        response = self._with_retries(what, url, lambda: self._api_get(url, params))
        try:
            return response.json()
        except ValueError:
            raise IsicApiError(f"{what}: {self.shown(url)} answered {http_status(response)} that is not "
                               f"JSON: {response.text[:200]!r}", response.status_code) from None

    def get_text(self, url: str, what: str = "API request") -> str:
        """GET an API URL as text, with retries (licence files)."""
        return self._with_retries(what, url, lambda: self._api_get(url, None)).text

    def _api_get(self, url: str, params: Mapping[str, str] | None) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if self._token and _origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.get(url, params=params, headers=headers)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise Transient(describe_exception(exc)) from None
        except httpx.HTTPError as exc:
            raise IsicApiError(f"{self.shown(url)}: {describe_exception(exc)}") from None
        _raise_for_status(response, self.shown(url))
        return response

    # ------------------------------------------------------------------ signed content
    def fetch_content(self, url: str, dest: Path, expected_size: int, what: str) -> int:
        """Stream a signed content URL into ``dest`` atomically; return the bytes written.

        No ``Authorization`` header, ever: the URL carries its own credentials (docs/ISIC_SOURCES.md 2.2).
        Raises :class:`_SignedUrlRefused` on 403 so the caller can ask for a fresh URL.
        """
        return self._with_retries(what, url, lambda: self._content_attempt(url, dest, expected_size))

    def _content_attempt(self, url: str, dest: Path, expected_size: int) -> int:
        try:
            with self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code == 403:
                    raise _SignedUrlRefused(http_status(response))
                _raise_for_status(response, self.shown(url))
                return _write_body(response, dest, expected_size)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise Transient(describe_exception(exc)) from None
        except httpx.HTTPError as exc:
            raise IsicApiError(f"{self.shown(url)}: {describe_exception(exc)}") from None

    # ------------------------------------------------------------------ retries
    def _with_retries(self, what: str, url: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` until it succeeds, raises a non-transient error, or ``max_attempts`` is hit.

        The same schedule as the zip downloader (download.py): full jitter, ``Retry-After`` honoured
        and both capped at ``backoff_max``.
        """
        def on_retry(failure: Transient, attempts: int, wait: float) -> None:
            self.log(f"isic_api: {what}: {failure.reason} from {self.shown(url)} (attempt {attempts}/"
                     f"{self.policy.max_attempts}); retrying in {wait:.2f} s")

        try:
            return call_with_retries(attempt, max_attempts=self.policy.max_attempts,
                                     delay=self.policy.backoff_delay, on_retry=on_retry)
        except RetriesExhausted as exc:
            raise IsicApiError(f"{what}: {exc.last.reason} from {self.shown(url)} "
                               f"(gave up after {exc.attempts} attempts)") from None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _redact(url: str, api_url: str | None = None) -> str:
    """``url`` fit for logs and errors: the query string is cut unless the URL is under ``api_url``.

    Signed content URLs carry their credentials in the query (``Signature``, ``Key-Pair-Id``,
    docs/ISIC_SOURCES.md 2.2); API URLs carry only the search DSL and the cursor, worth keeping.
    """
    if api_url and url.startswith(api_url):
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?<signature>" if parts.query else "")


def _server_message(response: httpx.Response) -> str:
    """The ``message``/``detail`` of a django-ninja error body, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])[:200]
    return str(body)[:200]


def _raise_for_status(response: httpx.Response, shown_url: str) -> None:
    """Retry 429 and 5xx (with Retry-After), refuse every other status >= 300 for good."""
    status = response.status_code
    if status == 429 or 500 <= status <= 599:
        raise Transient(http_status(response), parse_retry_after(response.headers.get("Retry-After")))
    if status >= 300:
        response.read()
        raise IsicApiError(f"{shown_url} answered {http_status(response)}: {_server_message(response)}",
                           status)


def _write_body(response: httpx.Response, dest: Path, expected_size: int) -> int:
    """Stream the body to a temporary sibling and rename it over ``dest`` only if the size is right."""
    written = 0
    with atomic_open(dest, "wb") as out:
        for chunk in response.iter_raw():
            out.write(chunk)
            written += len(chunk)
        if written != expected_size:
            # A complete body (httpx checks Content-Length) of the wrong size will not improve.
            raise IsicApiError(f"received {written} bytes but the API record says files.full.size = "
                               f"{expected_size}")
    return written


# ---------------------------------------------------------------------------------------------
# Search: count, size, paging, new images
# ---------------------------------------------------------------------------------------------


def search_size(client: IsicApiClient, query: ApiQuery) -> tuple[int, int]:
    """``(count, total_bytes)`` of the images matching ``query``, before downloading anything.

    The count comes from ``images/search/?limit=1`` (computed on the first page only) and the bytes
    from ``images/search/size/`` (``{"size": n}``), as isic-cli does (docs/ISIC_SOURCES.md 2.1, 2.5).
    """
    page = client.get_json(query.endpoint("images/search/"), {**query.search_params(), "limit": "1"},
                           what="image count")
    size = client.get_json(query.endpoint("images/search/size/"), query.search_params(), what="total size")
    count = page.get("count") if isinstance(page, dict) else None
    total = size.get("size") if isinstance(size, dict) else None
    if not isinstance(count, int) or not isinstance(total, int) or count < 0 or total < 0:
        raise IsicApiError(f"unexpected count/size answer for {query.describe()}: count={count!r}, size={total!r}")
    return count, total


def iter_images(client: IsicApiClient, query: ApiQuery, page_size: int = MAX_PAGE_SIZE) -> Iterator[dict]:
    """Image records matching ``query``, page by page, following the opaque ``next`` cursor URLs.

    ``page_size`` is clamped to 1..100 as the server does; ``count`` is only on the first page and is
    not needed here; iteration stops after ``query.limit`` records when it is positive. A page is
    fetched only when the caller has consumed the previous one, which keeps signed URLs fresh.
    """
    size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    if query.limit:
        size = min(size, query.limit)
    url: str | None = query.endpoint("images/search/")
    params: dict[str, str] | None = {**query.search_params(), "limit": str(size)}
    yielded, page_number = 0, 0
    while url:
        page_number += 1
        page = client.get_json(url, params, what=f"search page {page_number}")
        if not isinstance(page, dict) or not isinstance(page.get("results"), list):
            raise IsicApiError(f"search page {page_number} of {query.describe()} has no results list")
        for record in page["results"]:
            yield record
            yielded += 1
            if query.limit and yielded >= query.limit:
                return
        url, params = page.get("next") or None, None  # next carries every parameter, cursor included
        if url and _origin(url) != _origin(query.api_url) and page_number == 1:
            client.log(f"isic_api: the next-page links point to {_origin(url)[1]}, not the API's origin; "
                       "following them without the token")


def get_image(client: IsicApiClient, query: ApiQuery, isic_id: str) -> dict:
    """One image record from ``images/{isic_id}/``: the way to get a fresh signed URL."""
    record = client.get_json(query.endpoint(f"images/{quote(isic_id)}/"), what=f"{isic_id} record")
    if not isinstance(record, dict):
        raise IsicApiError(f"images/{isic_id}/ did not answer an image record")
    return record


def search_fingerprint(client: IsicApiClient, query: ApiQuery) -> str:
    """A cheap cursor for a sensor: ``count=<n>;bytes=<total>`` (two small requests).

    Any image added to or removed from the result set changes the count or the byte total; only
    when it changed does a sensor need :func:`new_image_ids` (a full listing, no image bytes).
    """
    count, total = search_size(client, query)
    return f"count={count};bytes={total}"


def new_image_ids(client: IsicApiClient, query: ApiQuery, known_ids: Iterable[str]) -> list[str]:
    """Sorted ids matching ``query`` (within its ``limit``) that are not in ``known_ids``.

    Pages the metadata only; pair it with :func:`search_fingerprint` so it runs only on a change, and
    with :func:`downloaded_image_ids` for the ids already on disk.
    """
    known = set(known_ids)
    found = {record.get("isic_id") for record in iter_images(client, query) if isinstance(record, dict)}
    return sorted(i for i in found if isinstance(i, str) and i not in known)


def downloaded_image_ids(dest_dir: Path) -> set[str]:
    """Ids of the images already downloaded under ``dest_dir/images/`` (temporaries excluded)."""
    folder = Path(dest_dir) / IMAGES_DIR
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.iterdir() if p.is_file() and ISIC_ID_RE.match(p.stem)}


# ---------------------------------------------------------------------------------------------
# Records -> files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageRef:
    """The parts of a record needed to fetch its image (the URL is used at once, never stored)."""

    isic_id: str
    url: str
    size: int
    extension: str

    @classmethod
    def from_record(cls, record: Any) -> _ImageRef:
        if not isinstance(record, dict):
            raise TypeError(f"not an image record: {type(record).__name__}")
        isic_id = record.get("isic_id")
        if not isinstance(isic_id, str) or not ISIC_ID_RE.match(isic_id):
            raise ValueError(f"record has no valid isic_id ({isic_id!r})")
        full = (record.get("files") or {}).get("full") or {}
        url, size = full.get("url"), full.get("size")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{isic_id}: record has no files.full.url")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{isic_id}: record has no valid files.full.size ({size!r})")
        return cls(isic_id, url, size, image_extension(url))


def image_extension(url: str) -> str:
    """Lower-case extension of the URL's path (``.jpeg`` -> ``.jpg``), ``.jpg`` when there is none.

    The archive also serves non-JPEG files, so the extension must come from the URL (isic-cli PR #94);
    anything that is not a short alphanumeric suffix falls back to ``.jpg`` so it can never shape a path.
    """
    suffix = member_extension(PurePosixPath(urlsplit(url).path).name)
    return suffix if _SAFE_EXTENSION.match(suffix) else ".jpg"


def metadata_table(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of the isic-cli ``metadata.csv``, rows sorted by isic_id.

    Columns are ``isic_id, attribution, copyright_license`` + the sorted union of every
    ``metadata.acquisition`` and ``metadata.clinical`` key (docs/ISIC_SOURCES.md 2.5). Keys are absent when
    a value is missing (docs/ISIC_SOURCES.md 2.2), which leaves an empty cell. Values are written as
    isic-cli's csv writer writes them (``55``, ``3.5``, ``True``).
    """
    rows: dict[str, dict[str, str]] = {}
    keys: set[str] = set()
    for record in records:
        row = {name: _cell(record.get(name)) for name in LEAD_COLUMNS}
        metadata = record.get("metadata") or {}
        for section in ("acquisition", "clinical"):
            for key, value in (metadata.get(section) or {}).items():
                if key not in LEAD_COLUMNS:
                    row[key] = _cell(value)
                    keys.add(key)
        rows[row["isic_id"]] = row
    header = [*LEAD_COLUMNS, *sorted(keys)]
    return header, [rows[isic_id] for isic_id in sorted(rows)]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _csv_bytes(header: list[str], rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")




def format_bytes(n: int) -> str:
    """``1.23 GB (1,234,567,890 bytes)``: decimal units, as disk tools and the archive report sizes."""
    value, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            break
        value /= 1000
    short = f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
    return f"{short} ({n:,} bytes)"


# ---------------------------------------------------------------------------------------------
# Disk space
# ---------------------------------------------------------------------------------------------


def present_image_bytes(dest_dir: Path) -> int:
    """Bytes of the images already under ``dest_dir/images/`` (what a re-run will not fetch again)."""
    folder = Path(dest_dir) / IMAGES_DIR
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and ISIC_ID_RE.match(p.stem))


def bytes_still_needed(count: int, total_bytes: int, limit: int, present_bytes: int) -> tuple[int, bool]:
    """``(bytes, estimated)`` still to download for the disk check.

    Without a limit (or one >= count) it is the announced total minus what is on disk. With a smaller
    limit the API cannot say which images it will be, so the mean image size times the limit is
    used, and ``estimated`` is True.
    """
    estimated = bool(limit) and 0 < limit < count
    planned = math.ceil(total_bytes * limit / count) if estimated else total_bytes
    return max(0, planned - present_bytes), estimated


def ensure_free_space(where: Path, needed: int, margin: int, detail: str = "") -> int:
    """Free bytes at ``where`` (or its nearest existing parent); raise if below ``needed + margin``."""
    probe = Path(os.path.abspath(where))
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + margin:
        raise InsufficientDiskSpaceError(Path(where), needed, margin, free, detail)
    return free


# ---------------------------------------------------------------------------------------------
# The download
# ---------------------------------------------------------------------------------------------


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
