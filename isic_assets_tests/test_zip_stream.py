"""Streaming ISIC zips: classification, zip-bomb limits, corrupt and hostile archives.

Every archive is a real zip built in the test; the hostile ones are made by patching the bytes that
a real tool wrote, the way a bad download or a crafted file would differ from a good one.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isic_assets.core.merge.zip_stream import (
    ZipLimits,
    ZipMemberError,
    ZipRefused,
    ZipUnreadable,
    is_suspicious_member_name,
    iter_member_bytes,
    member_kind,
    read_member,
    scan_zip,
)

MiB = 1 << 20


def _jpeg(seed: int = 0, width: int = 48, height: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _make_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns on the duplicate-name case
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return path


def _info(path: Path, name: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo(name)


def _central_record_offsets(path: Path) -> dict[str, int]:
    """Offset of each member's central-directory record, walked from the directory start."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        position, count = archive.start_dir, len(archive.infolist())
    offsets = {}
    for _ in range(count):
        assert data[position : position + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, position + 28)
        offsets[data[position + 46 : position + 46 + name_len].decode()] = position
        position += 46 + name_len + extra_len + comment_len
    return offsets


def _patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def _data_offset(path: Path, name: str) -> int:
    header_offset = _info(path, name).header_offset
    name_len, extra_len = struct.unpack_from("<2H", path.read_bytes(), header_offset + 26)
    return header_offset + 30 + name_len + extra_len


def test_members_are_classified_by_isic_id_not_by_extension(tmp_path: Path) -> None:
    """Challenge zips mix images with superpixel PNGs, masks, licences, CSVs and macOS forks."""
    archive = _make_zip(
        tmp_path / "mixed.zip",
        [
            ("ISIC-images/", b""),
            ("ISIC-images/2019/ISIC_0000000.jpg", _jpeg(0)),
            ("ISIC_0000001_downsampled.JPG", _jpeg(1)),
            ("ISIC-images/ISIC_0000000_superpixels.png", b"png"),
            ("ISIC_0000000_segmentation.png", b"png"),
            ("LICENSE.txt", b"CC-BY-NC"),
            ("ISIC-images/metadata.csv", b"isic_id\n"),
            ("__MACOSX/ISIC-images/._ISIC_0000002.jpg", b"fork"),
            ("__MACOSX/._metadata.csv", b"fork"),
        ],
    )
    entries = scan_zip(archive)
    kinds = {entry.name: entry.kind for entry in entries}
    assert kinds == {
        "ISIC-images/": "dir",
        "ISIC-images/2019/ISIC_0000000.jpg": "image",
        "ISIC_0000001_downsampled.JPG": "image",
        "ISIC-images/ISIC_0000000_superpixels.png": "other",
        "ISIC_0000000_segmentation.png": "other",
        "LICENSE.txt": "other",
        "ISIC-images/metadata.csv": "csv",
        "__MACOSX/ISIC-images/._ISIC_0000002.jpg": "other",
        "__MACOSX/._metadata.csv": "other",
    }
    ids = {entry.name: entry.isic_id for entry in entries if entry.kind == "image"}
    assert ids == {
        "ISIC-images/2019/ISIC_0000000.jpg": "ISIC_0000000",
        "ISIC_0000001_downsampled.JPG": "ISIC_0000001",
    }
    assert [entry.is_dir for entry in entries].count(True) == 1
    assert member_kind("a\\b\\ISIC_0000009.png") == "image"


def test_entries_carry_declared_sizes_and_crc(tmp_path: Path) -> None:
    """(size, crc) from the directory is the merge's zero-read duplicate key (docs/PERFORMANCE.md 5)."""
    payload = _jpeg(3)
    archive = _make_zip(tmp_path / "one.zip", [("ISIC_0000003.jpg", payload)], zipfile.ZIP_DEFLATED)
    (entry,) = scan_zip(archive)
    assert entry.file_size == len(payload)
    assert entry.crc == zlib.crc32(payload)
    assert 0 < entry.compress_size <= len(payload) + 64


@pytest.mark.parametrize(
    ("name", "suspicious"),
    [
        ("../evil.jpg", True),
        ("ok/../../ISIC_0000005.jpg", True),
        ("/etc/ISIC_0000003.jpg", True),
        ("\\\\server\\share\\ISIC_0000003.jpg", True),
        ("C:\\evil\\ISIC_0000004.jpg", True),
        ("c:ISIC_0000004.jpg", True),
        ("images\\..\\..\\x.jpg", True),
        ("nul\x00byte.jpg", True),
        ("ISIC-images/ISIC_0000006.jpg", False),
        ("..hidden/notes..txt", False),
        ("ISIC_0000007.jpg", False),
    ],
)
def test_suspicious_member_names(name: str, suspicious: bool) -> None:
    """Names that would escape an extraction folder are reported; dots inside a name are fine."""
    assert is_suspicious_member_name(name) is suspicious


def test_traversal_names_are_flagged_readable_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crafted zip must not write outside (or inside) anything: we only hand bytes back."""
    members = [
        ("../evil.jpg", _jpeg(1)),
        ("/abs/ISIC_0000003.jpg", _jpeg(2)),
        ("C:\\evil\\ISIC_0000004.jpg", _jpeg(3)),
        ("fine/ISIC_0000006.jpg", _jpeg(4)),
    ]
    archive = _make_zip(tmp_path / "hostile.zip", members)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    before = sorted(tmp_path.rglob("*"))

    entries = scan_zip(archive)
    reads = list(iter_member_bytes(archive, entries))

    assert [is_suspicious_member_name(e.name) for e in entries] == [True, True, True, False]
    assert [(r.entry.name, r.data) for r in reads] == members
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "evil.jpg").exists()


def test_zip_bomb_is_refused_from_the_directory_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 MiB of zeros deflates ~1000:1; it must be refused without inflating a byte of it."""
    archive = _make_zip(tmp_path / "bomb.zip", [("ISIC_0000001.jpg", bytes(20 * MiB))], zipfile.ZIP_DEFLATED)
    loose = scan_zip(archive, ZipLimits(max_ratio=5000))

    def no_inflating(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was inflated before the limits were checked")

    monkeypatch.setattr(zlib, "decompressobj", no_inflating)
    with pytest.raises(ZipRefused) as refused:
        scan_zip(archive)
    message = str(refused.value)
    assert "bomb.zip" in message and "ISIC_0000001.jpg" in message
    assert f"{20 * MiB:,}" in message and "max_ratio=100" in message and "ZipLimits(max_ratio=" in message
    # Entries scanned under looser limits are refused again by the reader, still without inflating.
    with pytest.raises(ZipRefused):
        next(iter_member_bytes(archive, loose))


def test_ratio_limit_is_configurable(tmp_path: Path) -> None:
    """A trusted archive of very compressible members goes through once the limit is raised."""
    archive = _make_zip(tmp_path / "zeros.zip", [("blank.bin", bytes(20 * MiB))], zipfile.ZIP_DEFLATED)
    limits = ZipLimits(max_ratio=5000)
    (read,) = iter_member_bytes(archive, scan_zip(archive, limits), limits)
    assert read.data == bytes(20 * MiB)


def test_small_members_are_exempt_from_the_ratio_limit(tmp_path: Path) -> None:
    """A 500 KB all-blank CSV compresses 1000:1 and is harmless; only members over 1 MiB count."""
    archive = _make_zip(tmp_path / "csv.zip", [("blank.csv", b"," * 500_000)], zipfile.ZIP_DEFLATED)
    (entry,) = scan_zip(archive)
    assert entry.ratio > 100
    assert read_member(archive, "blank.csv") == b"," * 500_000


@pytest.mark.parametrize(
    ("limits", "limit_name"),
    [
        (ZipLimits(max_member_bytes=1_000), "max_member_bytes"),
        (ZipLimits(max_total_bytes=3_000), "max_total_bytes"),
        (ZipLimits(max_members=2), "max_members"),
    ],
)
def test_size_and_count_limits_refuse_the_archive(tmp_path: Path, limits: ZipLimits, limit_name: str) -> None:
    """Each limit refuses before reading and says which limit to raise."""
    archive = _make_zip(tmp_path / "three.zip", [(f"f{i}.bin", bytes(1_500)) for i in range(3)])
    with pytest.raises(ZipRefused, match=f"three.zip.*{limit_name}"):
        scan_zip(archive, limits)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"max_ratio"):
        ZipLimits(max_ratio=0)


def test_member_inflating_beyond_its_declared_size_is_caught(tmp_path: Path) -> None:
    """A member whose sizes and CRC were rewritten to describe only its first 1,000 bytes.

    zipfile returns that prefix with a matching CRC and says nothing; we keep inflating one byte
    past the declared size, notice, and stop there. The other member is still read.
    """
    text = b"".join(b"ISIC_%07d,melanoma\n" % i for i in range(400))
    archive = _make_zip(
        tmp_path / "liar.zip", [("meta.csv", text), ("ISIC_0000001.jpg", _jpeg(1))], zipfile.ZIP_DEFLATED
    )
    lie_crc, lie_size = zlib.crc32(text[:1000]), 1000
    local, central = _info(archive, "meta.csv").header_offset, _central_record_offsets(archive)["meta.csv"]
    _patch(archive, local + 14, "<L", lie_crc)  # APPNOTE 4.3.7: crc-32, then sizes at +18, +22
    _patch(archive, local + 22, "<L", lie_size)
    _patch(archive, central + 16, "<L", lie_crc)  # APPNOTE 4.3.12: crc-32, then sizes at +20, +24
    _patch(archive, central + 24, "<L", lie_size)

    liar, image = iter_member_bytes(archive, scan_zip(archive))

    assert liar.data is None
    assert "meta.csv" in str(liar.error) and "more than the 1,000 bytes it declares" in str(liar.error)
    assert image.data == _jpeg(1)


def test_local_header_that_disagrees_with_the_directory_is_a_member_error(tmp_path: Path) -> None:
    """The two size declarations of a member must agree; a mismatch means one of them lies."""
    archive = _make_zip(tmp_path / "split.zip", [("a.csv", b"x" * 100), ("b.csv", b"y" * 100)])
    _patch(archive, _info(archive, "a.csv").header_offset + 22, "<L", 5)
    first, second = iter_member_bytes(archive, scan_zip(archive))
    assert "local header declares 5 bytes" in str(first.error)
    assert second.data == b"y" * 100


def test_overlapping_members_are_refused(tmp_path: Path) -> None:
    """Entries sharing compressed data are the non-recursive zip bomb; the directory shows it."""
    archive = _make_zip(tmp_path / "overlap.zip", [("a.jpg", _jpeg(1)), ("b.jpg", _jpeg(2))])
    _patch(archive, _central_record_offsets(archive)["b.jpg"] + 42, "<L", 0)
    with pytest.raises(ZipRefused, match=r"overlap"):
        scan_zip(archive)


def test_truncated_zip_is_unreadable_and_says_to_download_again(tmp_path: Path) -> None:
    """An interrupted download loses the central directory at the end of the file."""
    archive = _make_zip(tmp_path / "cut.zip", [(f"ISIC_000000{i}.jpg", _jpeg(i)) for i in range(4)])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ZipUnreadable, match=r"cut\.zip.*(?i:delete).*download"):
        scan_zip(archive)


def test_archive_truncated_after_the_scan_stops_the_iteration(tmp_path: Path) -> None:
    """Every later member would fail the same way, so this raises instead of reporting each."""
    archive = _make_zip(tmp_path / "shrunk.zip", [(f"ISIC_000000{i}.jpg", _jpeg(i)) for i in range(4)])
    entries = scan_zip(archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ZipUnreadable, match=r"shrunk.zip"):
        list(iter_member_bytes(archive, entries))


def test_a_file_that_is_not_a_zip_is_unreadable(tmp_path: Path) -> None:
    """A server error page saved under the zip's name."""
    page = tmp_path / "ISIC_2020_Training_JPEG.zip"
    page.write_bytes(b"<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(ZipUnreadable, match=r"ISIC_2020_Training_JPEG.zip"):
        scan_zip(page)
    with pytest.raises(FileNotFoundError):
        scan_zip(tmp_path / "absent.zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_flipped_byte_is_a_per_member_error_and_the_rest_is_read(tmp_path: Path, compression: int) -> None:
    """Bit rot in one member must cost that member only."""
    members = [(f"ISIC_000000{i}.jpg", _jpeg(i)) for i in range(3)]
    archive = _make_zip(tmp_path / "rot.zip", members, compression)
    middle = _data_offset(archive, "ISIC_0000001.jpg") + _info(archive, "ISIC_0000001.jpg").compress_size // 2
    corrupted = bytearray(archive.read_bytes())
    corrupted[middle] ^= 0xFF
    archive.write_bytes(bytes(corrupted))

    reads = list(iter_member_bytes(archive, scan_zip(archive)))

    assert [read.ok for read in reads] == [True, False, True]
    assert reads[0].data == members[0][1] and reads[2].data == members[2][1]
    assert "rot.zip" in str(reads[1].error) and "ISIC_0000001.jpg" in str(reads[1].error)
    if compression == zipfile.ZIP_STORED:
        assert "CRC-32 mismatch" in str(reads[1].error)


def test_reads_follow_the_given_entries_and_order(tmp_path: Path) -> None:
    """The caller picks the members (only new images, say) and gets them back in its order."""
    members = [(f"ISIC_000000{i}.jpg", _jpeg(i)) for i in range(4)]
    archive = _make_zip(tmp_path / "pick.zip", members)
    entries = scan_zip(archive)
    picked = [entries[3], entries[1]]
    assert [(r.entry.name, r.data) for r in iter_member_bytes(archive, picked)] == [members[3], members[1]]


def test_read_member_returns_a_csv_inside_the_images_zip(tmp_path: Path) -> None:
    """The 2017 training zip carries its metadata CSV next to the images."""
    csv = b"image_id,age_approximate,sex\nISIC_0000000,55,female\n"
    archive = _make_zip(
        tmp_path / "2017.zip",
        [
            ("ISIC-2017_Training_Data/ISIC_0000000.jpg", _jpeg(0)),
            ("ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv", csv),
        ],
        zipfile.ZIP_DEFLATED,
    )
    assert read_member(archive, "ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv") == csv
    with pytest.raises(ZipMemberError, match=r"no member named 'metadata.csv'"):
        read_member(archive, "metadata.csv")


def test_read_member_refuses_ambiguous_and_corrupt_members(tmp_path: Path) -> None:
    """Two members with one name, or a CRC failure, must not silently pick or return bytes."""
    twice = _make_zip(tmp_path / "twice.zip", [("metadata.csv", b"a\n"), ("metadata.csv", b"b\n")])
    with pytest.raises(ZipMemberError, match=r"appears 2 times"):
        read_member(twice, "metadata.csv")

    rotten = _make_zip(tmp_path / "rotten.zip", [("metadata.csv", b"isic_id\nISIC_0000000\n")])
    data = bytearray(rotten.read_bytes())
    data[_data_offset(rotten, "metadata.csv") + 3] ^= 0x01
    rotten.write_bytes(bytes(data))
    with pytest.raises(ZipMemberError, match=r"rotten.zip.*metadata.csv.*CRC-32 mismatch"):
        read_member(rotten, "metadata.csv")
