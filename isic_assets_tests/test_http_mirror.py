"""The loopback mirror: what the downloader relies on (ranges, validators, 304) and its safety."""

from __future__ import annotations

import email.utils
import http.client
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from isic_assets.core.sources.http_mirror import (
    MirrorServer,
    UnsatisfiableRange,
    make_etag,
    parse_byte_range,
    serve_folder,
)
from isic_assets_tests.fault_server import rewrite_with_new_version, write_random_file

SIZE = 300_000


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    write_random_file(root / "zips" / "a.bin", SIZE, seed=1)
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return root


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorServer]:
    with serve_folder(mirror_root) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


def raw_get(server: MirrorServer, path: str) -> tuple[int, bytes]:
    """GET a path byte-for-byte: httpx would normalise ``..`` away before sending it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_get_serves_the_file_with_strong_validators(server, mirror_root, client):
    """The downloader stores ETag and Last-Modified to ask "changed?" next run; both must be there."""
    path = mirror_root / "zips" / "a.bin"
    response = client.get(server.url_for("zips/a.bin"))
    stat = path.stat()
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == make_etag(SIZE, stat.st_mtime_ns)
    assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith("W/")
    last_modified = email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
    assert int(last_modified.timestamp()) == int(stat.st_mtime)


def test_head_has_the_get_headers_and_no_body(server, client):
    """HEAD is the size check for servers without validators; keep-alive must survive it."""
    head = client.head(server.url_for("zips/a.bin"))
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(SIZE)
    assert head.content == b""
    assert len(client.get(server.url_for("zips/a.bin")).content) == SIZE


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=1000-", 1000, SIZE - 1), ("bytes=-500", SIZE - 500, SIZE - 1),
     ("bytes=100-99999999", 100, SIZE - 1)],
)
def test_single_byte_ranges_give_206(server, mirror_root, client, header, first, last):
    """Resume asks for ``bytes=N-``; the other forms are part of the same contract (RFC 9110 14.1.2)."""
    data = (mirror_root / "zips" / "a.bin").read_bytes()
    response = client.get(server.url_for("zips/a.bin"), headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.content == data[first : last + 1]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"])
def test_unsatisfiable_range_gives_416_with_the_size(server, client, header):
    """A partial as long as the remote file asks past the end; 416 + size lets the client restart."""
    response = client.get(server.url_for("zips/a.bin"), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    assert response.content == b""


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=-"])
def test_multiple_or_malformed_ranges_get_the_whole_file(server, client, header):
    """Only single ranges are supported; RFC 9110 lets a server ignore the rest with a plain 200."""
    response = client.get(server.url_for("zips/a.bin"), headers={"Range": header})
    assert response.status_code == 200
    assert len(response.content) == SIZE


def test_if_none_match_gives_304_until_the_file_changes(server, mirror_root, client):
    """An unchanged file must cost no body; a rewritten one must get a new ETag and a 200."""
    url = server.url_for("zips/a.bin")
    etag = client.get(url).headers["ETag"]
    not_modified = client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["ETag"] == etag
    assert client.get(url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304

    rewrite_with_new_version(mirror_root / "zips" / "a.bin", b"new content")
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.content == b"new content"
    assert changed.headers["ETag"] != etag


def test_if_modified_since_gives_304_only_for_a_current_copy(server, client):
    url = server.url_for("zips/a.bin")
    last_modified = client.get(url).headers["Last-Modified"]
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    an_hour_before = email.utils.formatdate(
        email.utils.parsedate_to_datetime(last_modified).timestamp() - 3600, usegmt=True
    )
    assert client.get(url, headers={"If-Modified-Since": an_hour_before}).status_code == 200


def test_if_range_sends_the_whole_file_when_the_validator_is_stale(server, mirror_root, client):
    """A resume must never splice two versions: a stale If-Range turns the range into a full 200."""
    url = server.url_for("zips/a.bin")
    first = client.get(url)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert client.get(url, headers={"Range": "bytes=10-", "If-Range": etag}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=10-", "If-Range": last_modified}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=10-", "If-Range": f"W/{etag}"}).status_code == 200

    rewrite_with_new_version(mirror_root / "zips" / "a.bin", b"0123456789abcdef")
    stale = client.get(url, headers={"Range": "bytes=10-", "If-Range": etag})
    assert stale.status_code == 200
    assert stale.content == b"0123456789abcdef"


def test_missing_files_and_directories_are_404(server, client):
    assert client.get(server.url_for("zips/nope.bin")).status_code == 404
    assert client.get(server.url_for("zips")).status_code == 404
    assert client.get(server.url + "/").status_code == 404
    assert client.head(server.url_for("nope.bin")).status_code == 404


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/../secret.txt", 400), ("/zips/../../secret.txt", 400), ("/%2e%2e/secret.txt", 400),
     ("/..%2fsecret.txt", 400), ("/zips/..\\..\\secret.txt", 400), ("/./zips/a.bin", 400),
     ("/zips//a.bin", 400),
     # the stdlib folds leading slashes into one (gh-87389), so this is looked up inside the mirror
     ("//etc/passwd", 404)],
)
def test_paths_that_climb_out_are_refused(server, path, expected):
    """A mirror must never hand out files beside it, however the path is spelled."""
    status, body = raw_get(server, path)
    assert status == expected
    assert b"TOP SECRET" not in body and b"root:" not in body


def test_symlinks_leading_outside_are_forbidden_and_inside_allowed(server, mirror_root, client):
    outside = mirror_root.parent / "secret.txt"
    (mirror_root / "escape.txt").symlink_to(outside)
    (mirror_root / "alias.bin").symlink_to(mirror_root / "zips" / "a.bin")
    refused = client.get(server.url_for("escape.txt"))
    assert refused.status_code == 403
    assert b"TOP SECRET" not in refused.content
    assert client.get(server.url_for("alias.bin")).status_code == 200


def test_the_server_is_silent_even_when_clients_hang_up(tmp_path, capfd):
    """Thousands of demo requests must not flood the terminal; a dropped client is not an error."""
    write_random_file(tmp_path / "big.bin", 8_000_000, seed=2)
    with serve_folder(tmp_path) as server:
        with httpx.Client(timeout=5) as http:
            http.get(server.url_for("big.bin"))
            http.get(server.url_for("missing.bin"))
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1000)
            # linger 0: close with a reset, as a killed client does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.3)
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_stop_closes_the_port_and_a_missing_root_is_refused(tmp_path):
    server = serve_folder(tmp_path)
    url = server.url
    assert url.startswith("http://127.0.0.1:") and server.port > 0
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/x", timeout=2)
    with pytest.raises(NotADirectoryError, match="no-such-dir"):
        MirrorServer(tmp_path / "no-such-dir")


def test_parse_byte_range_edge_cases():
    assert parse_byte_range(None, 10) is None
    assert parse_byte_range("bytes=2-4", 10) == (2, 4)
    assert parse_byte_range("bytes=-20", 10) == (0, 9)
    with pytest.raises(UnsatisfiableRange):
        parse_byte_range("bytes=0-", 0)
