"""The query, the errors and the API client: token only to the API's origin, redacted URLs, retries."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from ... import layout
from ...atomic import atomic_open
from ...operation.disk_space import NotEnoughSpaceError, format_bytes  # noqa: F401 - format_bytes re-exported
from ..download import DownloadPolicy
from ..retry import RetriesExhausted, Transient, call_with_retries, describe_exception, http_status, parse_retry_after

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
# Logged under the package's name, as before the package was split.
_logger = logging.getLogger(__package__)
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


class InsufficientDiskSpaceError(NotEnoughSpaceError):
    """Refusal to start: the free space at ``where`` is below the bytes still to download + margin."""

    def __init__(self, where: Path, needed: int, margin: int, free: int, detail: str = "") -> None:
        super().__init__(where, needed, margin, free, detail, stage="",
                         advice="Free some space, point ISIC_DATA_DIR elsewhere, or narrow the source "
                                "(query, collections, limit).")


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

        The one retry loop of retry.py, as the zip downloader uses it: full jitter, ``Retry-After`` honoured
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

