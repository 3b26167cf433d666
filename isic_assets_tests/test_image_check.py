"""One read of each image: strict decode check, sha256, stored size, EXIF orientation.

Every image is a real file encoded by Pillow in the test; broken ones are real files cut short or
overwritten, the way interrupted downloads and bit rot leave them.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFile

from isic_assets.core.merge.image_check import (
    ImageFacts,
    ImageRejected,
    detect_format,
    inspect_image,
    inspect_many,
)


def _pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: compresses like a photograph, not like flat colour."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 20, (height, width, 3))
    return np.clip(ramp + noise + 30, 0, 255).astype(np.uint8)


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _jpeg(width: int = 640, height: int = 480, seed: int = 0, **options: object) -> bytes:
    return _encode(Image.fromarray(_pixels(width, height, seed)), "JPEG", quality=90, **options)


def _png(width: int = 64, height: int = 48) -> bytes:
    return _encode(Image.fromarray(_pixels(width, height)), "PNG")


def _reason(data: bytes, name: str = "ISIC_0000000.jpg") -> str:
    with pytest.raises(ImageRejected) as rejected:
        inspect_image(data, name)
    assert name in str(rejected.value)
    return rejected.value.reason


def test_a_good_jpeg_yields_its_facts() -> None:
    """Size, hash and byte count are what merged metadata.csv records for every kept image."""
    data = _jpeg(640, 480)
    facts = inspect_image(data, "ISIC_0000000.jpg")
    assert facts == ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        width=640,
        height=480,
        format="JPEG",
        exif_orientation=1,
        file_bytes=len(data),
        extension=".jpg",
    )


def test_odd_sizes_and_jpeg_flavours_decode() -> None:
    """Sides that are not multiples of 8, progressive, 4:4:4, grayscale and CMYK files all occur."""
    flavours = {
        "odd": _jpeg(641, 479),
        "progressive": _jpeg(320, 240, progressive=True),
        "444": _jpeg(320, 240, subsampling=0),
        "gray": _encode(Image.fromarray(_pixels(320, 240)).convert("L"), "JPEG"),
        "cmyk": _encode(Image.fromarray(_pixels(320, 240)).convert("CMYK"), "JPEG"),
    }
    facts = {label: inspect_image(data, f"{label}.jpg") for label, data in flavours.items()}
    assert {label: (f.width, f.height) for label, f in facts.items()} == {
        "odd": (641, 479),
        "progressive": (320, 240),
        "444": (320, 240),
        "gray": (320, 240),
        "cmyk": (320, 240),
    }


def test_jpeg_cut_in_half_is_rejected() -> None:
    """An interrupted download: the header is fine, half of the scan data is missing."""
    data = _jpeg()
    assert _reason(data[: len(data) // 2]) == "truncated"


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_missing_only_its_last_bytes_is_rejected(progressive: bool) -> None:
    """The last scan of a progressive JPEG is the one a short read loses; it must not pass."""
    data = _jpeg(progressive=progressive)
    assert _reason(data[:-200]) == "truncated"


def test_jpeg_cut_inside_its_header_is_truncated() -> None:
    """TurboJPEG says 'cannot determine subsampling' for this; the reason must still be right."""
    data = _jpeg()
    assert _reason(data[:300]) == "truncated"


def test_garbage_in_the_middle_of_the_scan_data_is_rejected() -> None:
    """Pillow's draft decode accepts this file silently; the strict decode must not."""
    data = bytearray(_jpeg())
    middle = len(data) // 2
    data[middle : middle + 200] = np.random.default_rng(7).integers(0, 256, 200, dtype=np.uint8).tobytes()
    assert _reason(bytes(data)) == "corrupt"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>404 Not Found</body></html>", "not_an_image"),
        (bytes(range(256)) * 40, "not_an_image"),
        (b"GIF89a" + bytes(100), "unsupported_format"),
    ],
)
def test_files_that_are_not_images(data: bytes, reason: str) -> None:
    """Error pages and junk saved under an image name are named for what they are."""
    assert _reason(data) == reason


def test_tiny_images_are_rejected() -> None:
    """A 4x4 thumbnail is no dermoscopy image; both decode paths check the size."""
    assert _reason(_jpeg(4, 4)) == "too_small"
    assert _reason(_png(16, 7), "tiny.png") == "too_small"
    assert inspect_image(_jpeg(8, 8), "smallest.jpg").width == 8


def test_a_header_declaring_gigapixels_is_refused_before_decoding() -> None:
    """A crafted 40000x40000 header would allocate gigabytes; it is refused from the header."""
    data = bytearray(_jpeg(64, 64))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 40000, 40000)  # SOF0: length, precision, height, width
    assert _reason(bytes(data)) == "too_large"


def test_exif_orientation_is_reported_and_sizes_stay_as_stored() -> None:
    """Phones store portrait shots as landscape + orientation 6; the transform rotates later."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(_pixels(64, 32)), "JPEG", exif=exif.tobytes())
    facts = inspect_image(data, "ISIC_0000001.jpg")
    assert (facts.width, facts.height, facts.exif_orientation) == (64, 32, 6)


def test_out_of_range_orientation_counts_as_absent() -> None:
    """Viewers ignore orientation values outside 1-8, so the image is seen unrotated."""
    exif = Image.Exif()
    exif[0x0112] = 42
    data = _encode(Image.fromarray(_pixels(64, 32)), "JPEG", exif=exif.tobytes())
    assert inspect_image(data, "odd.jpg").exif_orientation == 1


def test_png_is_detected_from_its_bytes_not_its_name() -> None:
    """A PNG shipped with a .jpg name must be written as .png."""
    data = _png()
    facts = inspect_image(data, "ISIC_0000002.jpg")
    assert (facts.format, facts.extension, facts.width, facts.height) == ("PNG", ".png", 64, 48)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_jpeg_with_a_png_name_gets_the_jpeg_extension() -> None:
    assert inspect_image(_jpeg(64, 48), "ISIC_0000003.png").extension == ".jpg"


def test_broken_pngs_are_rejected() -> None:
    """Truncation, a flipped pixel byte and a missing IEND chunk (Pillow's load() accepts the last)."""
    data = _png(200, 150)
    assert _reason(data[: len(data) // 2], "cut.png") == "truncated"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    assert _reason(bytes(flipped), "flipped.png") == "corrupt"
    assert _reason(data[:-12], "no_iend.png") in {"truncated", "corrupt"}


def test_other_pillow_formats_are_accepted() -> None:
    image = Image.fromarray(_pixels(40, 30))
    for image_format, extension in [("TIFF", ".tif"), ("BMP", ".bmp"), ("WEBP", ".webp")]:
        facts = inspect_image(_encode(image, image_format), f"x.{image_format}")
        assert (facts.format, facts.extension, facts.width, facts.height) == (image_format, extension, 40, 30)


def test_pillow_truncated_images_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """With LOAD_TRUNCATED_IMAGES on anywhere in the process, truncated PNGs would pass."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        inspect_image(_png(), "x.png")


def test_detect_format_needs_the_real_signature() -> None:
    """'BM' alone is not a bitmap: plain text starting with BM is not an image."""
    assert detect_format(b"BMW service record, 1998") is None
    assert detect_format(_encode(Image.fromarray(_pixels(16, 16)), "BMP")) == "BMP"


def test_rejection_keeps_its_reason_through_pickling() -> None:
    """Rejections cross process and event-log boundaries."""
    rejected = ImageRejected("truncated", "ISIC_0000004.jpg", "Premature end of JPEG file")
    restored = pickle.loads(pickle.dumps(rejected))
    assert (restored.reason, restored.name, str(restored)) == (rejected.reason, rejected.name, str(rejected))


def test_inspect_many_yields_in_input_order_with_rejections_in_place() -> None:
    """The first item is the slowest to decode; results must still come back in input order."""
    items = [(0, _jpeg(2400, 1800, seed=1), "big.jpg")]
    items += [(i, _jpeg(64, 48, seed=i), f"small{i}.jpg") for i in range(1, 8)]
    items[4] = (4, b"not an image", "bad.jpg")

    results = list(inspect_many(items, workers=2, max_in_flight=4))

    assert [key for key, _ in results] == list(range(8))
    assert isinstance(results[4][1], ImageRejected) and results[4][1].reason == "not_an_image"
    assert all(isinstance(result, ImageFacts) for key, result in results if key != 4)
    assert results[0][1].width == 2400  # type: ignore[union-attr]


def test_inspect_many_holds_at_most_max_in_flight_items() -> None:
    """A 23 GB zip streams through here; only a bounded number of members may be held at once."""
    pulled = 0
    lock = threading.Lock()

    def items() -> Iterator[tuple[int, bytes, str]]:
        nonlocal pulled
        for i in range(20):
            with lock:
                pulled += 1
            yield i, _jpeg(96, 64, seed=i), f"{i}.jpg"

    held = []
    for key, _ in inspect_many(items(), workers=2, max_in_flight=3):
        held.append(pulled - key)  # items pulled from the input but not yet handed back, this one included
        time.sleep(0.002)  # a slow consumer must not let the pool run ahead
    assert max(held) == 3


def test_inspect_many_checks_its_arguments() -> None:
    """A bad setting fails at the call, not at the first item of a long run."""
    with pytest.raises(ValueError, match="max_in_flight"):
        inspect_many([], workers=2, max_in_flight=1)
