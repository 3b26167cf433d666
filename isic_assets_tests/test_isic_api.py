"""The ISIC Archive API v2 source against a loopback fake of the API (real sockets, real JPEGs)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from isic_assets.core.merge.harmonize import harmonize_isic_archive
from isic_assets.core.sources.download import DownloadPolicy
from isic_assets.core.sources.isic_api import (
    LEAD_COLUMNS,
    MAX_URL_REFRESHES,
    ApiDownloadError,
    ApiQuery,
    InsufficientDiskSpaceError,
    IsicApiClient,
    IsicApiError,
    api_token_from_env,
    bytes_still_needed,
    download_api_source,
    downloaded_image_ids,
    image_extension,
    iter_images,
    new_image_ids,
    search_fingerprint,
    search_size,
)
from isic_assets_tests.fake_isic_api import LICENSE_TEXTS, FakeImage, FakeIsicApi, sample_images
from isic_assets_tests.fault_server import ErrorStatus, LogLines

TOKEN = "tok-3a9f0c17e2b84d5d9a61c0ffee5ec2e7"
SEARCH = "api/v2/images/search"
PUBLIC_IDS = [f"ISIC_{n:07d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)]


def file_name(isic_id: str) -> str:
    return f"{isic_id}.png" if isic_id == "ISIC_0000009" else f"{isic_id}.jpg"


@pytest.fixture
def fake(tmp_path: Path):
    """The sample archive, five records per page so that paging takes three pages."""
    with FakeIsicApi(tmp_path / "server", sample_images(), max_page_size=5, token=TOKEN) as server:
        yield server


@pytest.fixture
def policy() -> DownloadPolicy:
    """Tiny backoffs, and a read timeout short enough that a 2.2 s stall is a timeout, long enough for a busy CI."""
    return DownloadPolicy(connect_timeout=2.0, read_timeout=1.0, max_attempts=5, backoff_initial=0.01,
                          backoff_max=1.0, progress_interval_s=0.0)


def query_for(fake: FakeIsicApi, **kwargs) -> ApiQuery:
    return ApiQuery(api_url=fake.api_url, **kwargs)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def written_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


# ---------------------------------------------------------------------------------------------
# The whole download
# ---------------------------------------------------------------------------------------------


def test_download_completes_despite_429_burst_page_timeout_and_expired_urls(fake, policy, tmp_path):
    """The archive throttles, a page times out and listed URLs expire: the download still completes.

    isic-cli users lost whole runs to a read timeout while paging (isic-cli #4, #11, #28); signed URLs
    are time-limited and must be re-queried, never reused (docs/ISIC_SOURCES.md 2.2).
    """
    fake.add_fault(SEARCH, ErrorStatus(429, times=3, retry_after="0.3"))
    fake.stall_pages[2] = 2.2
    fake.stale_search_urls = {"ISIC_0000002", "ISIC_0000007", "ISIC_0000009"}
    dest = tmp_path / "downloaded_zips" / "melanoma_2024"

    report = download_api_source(query_for(fake), dest, policy, log=LogLines(), concurrency=3)

    images = dest / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(file_name(i) for i in PUBLIC_IDS)
    for isic_id in PUBLIC_IDS:
        assert (images / file_name(isic_id)).read_bytes() == fake.image_bytes(isic_id)
    assert (report.downloaded, report.skipped, report.failures) == (11, 0, ())
    assert report.url_refreshes == 3 and report.count == 11 and report.metadata_rows == 11
    assert [row["isic_id"] for row in read_rows(dest / "metadata.csv")] == PUBLIC_IDS

    statuses = [r.status for r in fake.records(SEARCH)]
    # count (3 x 429 then 200), page 1, page 2 stalled (no answer) then retried, page 3
    assert statuses == [429, 429, 429, 200, 200, None, 200, 200]
    arrivals = [r.at for r in fake.records(SEARCH)][:4]
    assert all(later - earlier >= 0.28 for earlier, later in itertools.pairwise(arrivals)), (
        "Retry-After: 0.3 must be waited out although the backoff alone would retry at once"
    )
    for isic_id in fake.stale_search_urls:
        assert fake.count(f"api/v2/images/{isic_id}") == 1  # one fresh record each
        assert [r.status for r in fake.records(fake.content_path(isic_id))] == [403, 200]
    assert len([r for r in fake.content_requests() if r.status == 403]) == 3
    assert not list(dest.rglob(".tmp-*"))
    assert not [p for p, data in written_bytes(dest) if b"Signature=" in data or b"Expires=" in data]


def test_rerun_skips_present_files_without_any_content_request(fake, policy, tmp_path):
    """A refresh must not fetch the archive again: present files of the right size are skipped."""
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    before = len(fake.content_requests())
    metadata_stat = (dest / "metadata.csv").stat()

    report = download_api_source(query_for(fake), dest, policy, log=LogLines())

    assert len(fake.content_requests()) == before
    assert (report.downloaded, report.skipped, report.bytes_downloaded) == (0, 11, 0)
    assert report.needed_bytes == 0
    assert (dest / "metadata.csv").stat().st_mtime_ns == metadata_stat.st_mtime_ns  # not even rewritten


def test_a_file_of_the_wrong_size_is_fetched_again(fake, policy, tmp_path):
    """A truncated image left by a crash elsewhere is not "present": its size differs from files.full.size."""
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    damaged = dest / "images" / "ISIC_0000003.jpg"
    damaged.write_bytes(damaged.read_bytes()[:100])
    before = len(fake.content_requests())

    report = download_api_source(query_for(fake), dest, policy, log=LogLines())

    assert len(fake.content_requests()) == before + 1
    assert (report.downloaded, report.skipped) == (1, 10)
    assert damaged.read_bytes() == fake.image_bytes("ISIC_0000003")


@pytest.mark.parametrize("case", ["huge archive", "huge margin"])
def test_refuses_to_start_when_the_disk_is_too_small(fake, policy, tmp_path, case):
    """Refuse before the first byte, saying what is needed, what is free and where (isic-cli PR #99)."""
    margin = 1 << 20
    if case == "huge archive":
        fake.size_override = 10**18
    else:
        margin = 10**18
    dest = tmp_path / "downloaded_zips" / "api"

    with pytest.raises(InsufficientDiskSpaceError) as caught:
        download_api_source(query_for(fake), dest, policy, log=LogLines(), min_free_bytes_margin=margin)

    message = str(caught.value)
    assert "not enough free disk space" in message and str(dest) in message
    assert "still needs" in message and "is free" in message
    assert caught.value.free < caught.value.needed + caught.value.margin
    assert fake.content_requests() == [] and not dest.exists()
    assert len(fake.records(SEARCH)) == 1  # only the count: no page was listed


def test_failures_are_collected_and_reported_while_the_rest_completes(fake, policy, tmp_path):
    """One image is gone (404) and one URL is refused even when fresh: both are listed, nine arrive.

    The official client's thread pool drops such errors; here they surface in the report and in the
    exception raised at the very end, after metadata.csv was written for every listed image.
    """
    fake.remove_content("ISIC_0000004")
    fake.forbidden_ids = {"ISIC_0000005"}
    dest = tmp_path / "src"
    lines = LogLines()

    with pytest.raises(ApiDownloadError) as caught:
        download_api_source(query_for(fake), dest, policy, log=lines)

    error = caught.value
    assert sorted(f.item for f in error.failures) == ["ISIC_0000004", "ISIC_0000005"]
    assert "ISIC_0000004" in str(error) and "ISIC_0000005" in str(error) and "404" in str(error)
    assert error.report.downloaded == 9 and error.report.failures == error.failures
    present = {p.name for p in (dest / "images").iterdir()}
    assert present == {file_name(i) for i in PUBLIC_IDS} - {"ISIC_0000004.jpg", "ISIC_0000005.jpg"}
    assert len(read_rows(dest / "metadata.csv")) == 11
    assert fake.count("api/v2/images/ISIC_0000005") == MAX_URL_REFRESHES
    assert fake.count("api/v2/images/ISIC_0000004") == 0  # a 404 is not an expired URL


def test_the_token_goes_to_the_api_only_and_never_leaks(fake, policy, tmp_path, monkeypatch):
    """The bearer token opens private images but must never reach content URLs, logs, errors or files."""
    monkeypatch.setenv("ISIC_API_TOKEN", f"  {TOKEN}\n")
    token = api_token_from_env()
    assert token == TOKEN
    fake.add_fault(SEARCH, ErrorStatus(503, times=1))
    fake.remove_content("ISIC_0000004")
    fake.stale_search_urls = {"ISIC_0000011"}
    dest = tmp_path / "src"
    lines = LogLines()

    with pytest.raises(ApiDownloadError) as caught:
        download_api_source(query_for(fake), dest, policy, token=token, log=lines)

    assert (dest / "images" / "ISIC_0000011.jpg").read_bytes() == fake.image_bytes("ISIC_0000011")
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.api_requests())
    assert fake.content_requests() and all("authorization" not in r.headers for r in fake.content_requests())
    texts = [*lines.lines, str(caught.value), repr(caught.value.report),
             json.dumps(caught.value.report.summary()), repr(IsicApiClient(token=TOKEN))]
    assert not [t for t in texts if TOKEN in t]
    assert not [p for p, data in written_bytes(dest) if TOKEN.encode() in data]


def test_private_images_stay_out_without_a_token(fake, policy, tmp_path):
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    assert "ISIC_0000011" not in downloaded_image_ids(dest)
    assert all("authorization" not in r.headers for r in fake.records())


# ---------------------------------------------------------------------------------------------
# metadata.csv, attribution.txt, licenses/
# ---------------------------------------------------------------------------------------------

#: isic_id -> (diagnosis_1 in the fake, expected benign_malignant, anatom_site_1..3, expected site)
DOCUMENTED = {
    "ISIC_0000001": ("Benign", "benign", "Head and neck", "head/neck"),
    "ISIC_0000002": ("Malignant", "malignant", "Trunk > Posterior trunk", "posterior torso"),
    "ISIC_0000003": ("Indeterminate", "indeterminate", "Upper extremity", "upper extremity"),
    "ISIC_0000004": ("Benign", "benign", "Lower extremity", "lower extremity"),
    "ISIC_0000005": ("Malignant", "malignant", "Anogenital region", "oral/genital"),
    "ISIC_0000006": ("", "", "", ""),
    "ISIC_0000007": ("Benign", "benign", "Trunk", "torso"),
    "ISIC_0000008": ("Malignant", "malignant", "Upper extremity > Hand > Palm of hand", "palms/soles"),
    "ISIC_0000009": ("Benign", "benign", "Lower extremity > Foot > Sole of foot", "palms/soles"),
    "ISIC_0000010": ("Benign", "benign", "Trunk > Anterior trunk", "anterior torso"),
    "ISIC_0000012": ("Benign", "benign", "Head and neck", "head/neck"),
}


def test_benign_malignant_and_site_are_derived_for_every_documented_value(fake, policy, tmp_path):
    """The archive removed benign_malignant and anatom_site_general (docs/ISIC_SOURCES.md 2.3).

    The written metadata.csv, read by the same harmonizer as an archive export, must give each
    documented diagnosis_1 (Benign, Indeterminate, Malignant) and anatom_site_1 value its unified
    value, deeper site levels the finer one, and absent keys an empty label.
    """
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    rows = {row["isic_id"]: row for row in read_rows(dest / "metadata.csv")}
    assert {row["diagnosis_1"] for row in rows.values()} == {"Benign", "Indeterminate", "Malignant", ""}
    assert {row["anatom_site_1"] for row in rows.values()} == {
        "Head and neck", "Trunk", "Upper extremity", "Lower extremity", "Anogenital region", "",
    }

    frame = harmonize_isic_archive(dest / "metadata.csv").frame.set_index("isic_id")

    for isic_id, (diagnosis_1, label, sites, site) in DOCUMENTED.items():
        row = rows[isic_id]
        levels = " > ".join(row[f"anatom_site_{n}"] for n in (1, 2, 3) if row[f"anatom_site_{n}"])
        assert (row["diagnosis_1"], levels) == (diagnosis_1, sites), isic_id
        assert frame.loc[isic_id, "benign_malignant"] == label, isic_id
        assert frame.loc[isic_id, "anatom_site_general"] == site, isic_id
    assert frame.loc["ISIC_0000002", "diagnosis"] == "melanoma"
    assert frame.loc["ISIC_0000003", "copyright_license"] == "CC-BY-NC"


def test_metadata_csv_has_the_isic_cli_columns_and_empty_cells_for_absent_keys(fake, policy, tmp_path):
    """isic-cli: isic_id, attribution, copyright_license + sorted union of acquisition/clinical keys."""
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    header = (dest / "metadata.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    keys = set()
    for image in sample_images():
        if image.public:
            keys |= set(image.acquisition) | set(image.clinical)
    assert header == [*LEAD_COLUMNS, *sorted(keys)]

    rows = {row["isic_id"]: row for row in read_rows(dest / "metadata.csv")}
    bare = rows["ISIC_0000006"]
    assert {k for k, v in bare.items() if v} == {"isic_id", "attribution", "copyright_license", "pixels_x",
                                                 "pixels_y"}
    assert rows["ISIC_0000001"]["melanocytic"] == "True" and rows["ISIC_0000008"]["personal_hx_mm"] == "False"
    assert rows["ISIC_0000007"]["clin_size_long_diam_mm"] == "4.5" and rows["ISIC_0000001"]["age_approx"] == "35"


def test_attributions_are_ordered_as_the_archive_orders_them(fake, policy, tmp_path):
    """Most images first, ties by name, Anonymous last even though it has the most (docs/ISIC_SOURCES.md 2.4)."""
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    expected = [
        "ViDIR Group, Department of Dermatology, Medical University of Vienna",  # 3 images
        "Hospital Clínic de Barcelona",  # 2
        "Department of Dermatology, University of Athens",  # 1, ties broken by name
        "Memorial Sloan Kettering Cancer Center",  # 1
        "Anonymous",  # 4, but always last
    ]
    assert (dest / "attribution.txt").read_text(encoding="utf-8").split("\n\n") == expected


def test_licence_texts_come_from_the_archive_and_follow_the_result_set(fake, policy, tmp_path):
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    texts = {p.name: p.read_text(encoding="utf-8") for p in (dest / "licenses").iterdir()}
    assert texts == {f"{name}.txt": text for name, text in LICENSE_TEXTS.items()}

    download_api_source(query_for(fake, query="copyright_license:CC-0"), dest, policy, log=LogLines())

    assert sorted(p.name for p in (dest / "licenses").iterdir()) == ["CC-0.txt"]
    assert [row["copyright_license"] for row in read_rows(dest / "metadata.csv")] == ["CC-0"] * 3


# ---------------------------------------------------------------------------------------------
# Search, paging and the sensor helpers
# ---------------------------------------------------------------------------------------------


def test_paging_follows_next_cursors_with_clamped_pages_and_stops_at_the_limit(fake, policy):
    """``limit`` is clamped to 100 per page, ``next`` is followed as given, a limit stops paging early."""
    with IsicApiClient.for_query(query_for(fake), policy) as client:
        everything = list(iter_images(client, query_for(fake), page_size=500))
        assert [r["isic_id"] for r in everything] == PUBLIC_IDS
        assert "limit=100" in fake.api_paths[0] and "cursor=" not in fake.api_paths[0]
        assert all("cursor=" in path for path in fake.api_paths[1:3]) and len(fake.api_paths) == 3

        limited = list(iter_images(client, query_for(fake, limit=7), page_size=100))

    assert [r["isic_id"] for r in limited] == PUBLIC_IDS[:7]
    assert len(fake.api_paths) == 5  # two more pages, not three


def test_collections_filter_the_search(fake, policy, tmp_path):
    dest = tmp_path / "ham"
    report = download_api_source(query_for(fake, collections=(212,)), dest, policy, log=LogLines())
    assert downloaded_image_ids(dest) == {"ISIC_0000003", "ISIC_0000004"} and report.count == 2
    assert "collections=212" in fake.api_paths[0]


def test_a_query_matching_nothing_writes_empty_outputs(fake, policy, tmp_path):
    """An empty result is a valid source state, not an error: header-only metadata, no licences."""
    dest = tmp_path / "none"
    report = download_api_source(query_for(fake, query="sex:unknown"), dest, policy, log=LogLines())
    assert (report.count, report.listed, report.failures) == (0, 0, ())
    assert (dest / "metadata.csv").read_text() == ",".join(LEAD_COLUMNS) + "\n"
    assert (dest / "attribution.txt").read_text() == "" and list((dest / "licenses").iterdir()) == []


def test_a_bad_query_fails_at_once_with_the_servers_message(fake, policy, tmp_path):
    """A 400 is the user's mistake: no retries, and the archive's own words in the error."""
    with pytest.raises(IsicApiError) as caught:
        download_api_source(query_for(fake, query='diagnosis_1:"Benign'), tmp_path / "x", policy, log=LogLines())
    assert caught.value.status == 400 and "Could not parse search query." in str(caught.value)
    assert len(fake.records(SEARCH)) == 1


def test_fingerprint_and_new_image_ids_detect_a_new_image_cheaply(fake, policy, tmp_path):
    """A sensor compares two small requests; only on a change does it list the ids to fetch."""
    dest = tmp_path / "src"
    download_api_source(query_for(fake), dest, policy, log=LogLines())
    with IsicApiClient.for_query(query_for(fake), policy) as client:
        count, total = search_size(client, query_for(fake))
        assert (count, total) == (11, sum(len(fake.image_bytes(i)) for i in PUBLIC_IDS))
        before = search_fingerprint(client, query_for(fake))
        assert search_fingerprint(client, query_for(fake)) == before
        assert new_image_ids(client, query_for(fake), downloaded_image_ids(dest)) == []

        fake.add_image(FakeImage("ISIC_0000013", "2024-02-01T00:00:00+00:00", "CC-BY", "Anonymous",
                                 clinical={"diagnosis_1": "Malignant"}))

        assert search_fingerprint(client, query_for(fake)) != before
        assert new_image_ids(client, query_for(fake), downloaded_image_ids(dest)) == ["ISIC_0000013"]
    contents_before = len(fake.content_requests())
    report = download_api_source(query_for(fake), dest, policy, log=LogLines())
    assert (report.downloaded, report.skipped) == (1, 11)
    assert len(fake.content_requests()) == contents_before + 1


# ---------------------------------------------------------------------------------------------
# Small pure parts
# ---------------------------------------------------------------------------------------------


def test_bytes_still_needed_subtracts_what_is_present_and_estimates_under_a_limit():
    assert bytes_still_needed(10, 1000, 0, 0) == (1000, False)
    assert bytes_still_needed(10, 1000, 0, 300) == (700, False)
    assert bytes_still_needed(10, 1000, 2, 0) == (200, True)
    assert bytes_still_needed(10, 1000, 50, 0) == (1000, False)
    assert bytes_still_needed(10, 1000, 0, 5000) == (0, False)


def test_the_extension_comes_from_the_url_path():
    """isic-cli PR #94: not every archive file is a JPEG; the name's extension must follow the URL."""
    assert image_extension("https://content.isic-archive.com/u/abc.png?Expires=1&Signature=x") == ".png"
    assert image_extension("https://content.isic-archive.com/u/abc.JPEG?Expires=1") == ".jpg"
    assert image_extension("https://content.isic-archive.com/u/abc") == ".jpg"
    assert image_extension("https://host/u/abc.j%2Fpg") == ".jpg"


def test_api_query_validates_and_reads_catalog_entries():
    assert ApiQuery.from_mapping({"collections": 70}).collections == (70,)
    query = ApiQuery.from_mapping({"query": ' sex:male ', "collections": [70, 249], "limit": 5,
                                   "api_url": "https://api-sandbox.isic-archive.com/api/v2"})
    assert query == ApiQuery("sex:male", (70, 249), 5, "https://api-sandbox.isic-archive.com/api/v2/")
    assert query.search_params() == {"query": "sex:male", "collections": "70,249"}
    assert ApiQuery.from_mapping({}).api_url == "https://api.isic-archive.com/api/v2/"
    for bad in ({"limit": -1}, {"collections": (0,)}, {"api_url": "ftp://x/"}, {"collections": ("70",)}):
        with pytest.raises(ValueError):
            ApiQuery(**bad)


def test_retries_give_up_after_max_attempts_with_a_clear_error(fake, policy):
    fake.add_fault(SEARCH, ErrorStatus(503, times=50))
    with IsicApiClient.for_query(query_for(fake), policy) as client, pytest.raises(IsicApiError) as caught:
        search_size(client, query_for(fake))
    assert "503" in str(caught.value) and "5 attempts" in str(caught.value)
    assert len(fake.records(SEARCH)) == policy.max_attempts
