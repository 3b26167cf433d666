"""Searching the archive: count and size, cursor paging, single records, new image ids."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

from ...ids import ISIC_ID_RE
from .client import IMAGES_DIR, MAX_PAGE_SIZE, ApiQuery, IsicApiClient, IsicApiError, _origin

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
