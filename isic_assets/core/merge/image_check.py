"""One read of an image: decode check, sha256, stored width and height, EXIF orientation.

Merging keeps only images that decode completely, so every member is entropy-decoded once here.
JPEGs (nearly all of ISIC) go through libjpeg-turbo via simplejpeg at the 1/8 DCT scale: the whole
Huffman stream is still decoded, so truncation and corrupt scan data are caught, but the inverse
DCT and colour conversion shrink 64-fold (docs/PERFORMANCE.md 9: 1/8 is ~60% of a full decode, within 5%
of the entropy-decode floor). simplejpeg's ``strict=True`` turns libjpeg's recoverable warnings
("Premature end of JPEG file", "Corrupt JPEG data: ...") into errors; Pillow's draft-mode load
accepts garbage in the middle of the scan data without a word, so it is not used for JPEG.

Other formats (PNG, TIFF, BMP, WebP; rare in ISIC) are decoded in full by Pillow, and PNGs also
have their chunk CRCs verified because ``load()`` does not check them.

Sizes are the *stored* orientation, as in the file; the EXIF orientation is reported alongside so
the transform stage can rotate (docs/PERFORMANCE.md 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from io import BytesIO
from typing import Literal, TypeVar

import simplejpeg
from PIL import Image, ImageFile

RejectReason = Literal[
    "empty", "not_an_image", "truncated", "corrupt", "too_small", "too_large", "unsupported_format",
    "time_limit",
]
# Per-image wall-clock limit of the check. The worst 6000x4000 JPEG measured (noise, q95) checked in
# 1.2 s on a loaded 2-vCPU machine (bench/bench_time_limit.py), so only a decoder that hangs reaches it.
DEFAULT_CHECK_TIME_LIMIT_S = 60.0

# Anything smaller cannot be a dermoscopy image and breaks the 1/8 DCT decode arithmetic.
MIN_SIDE = 8
# Pillow's own hard decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS by default); the largest
# ISIC images are about 24 MP, so this only stops crafted headers from allocating gigabytes.
MAX_PIXELS = 178_956_970

_EXIF_ORIENTATION = 0x0112
_JPEG_SCALE = 8  # the largest power-of-two DCT scale libjpeg-turbo has (docs/PERFORMANCE.md 2)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
# simplejpeg header colourspace -> the cheapest output that still decodes every component's data.
_JPEG_OUTPUT = {"Gray": "GRAY", "YCbCr": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}
_BMP_INFO_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}

K = TypeVar("K")


@dataclass(frozen=True)
class ImageFacts:
    """What the merge records about an image that decoded completely.

    ``width``/``height`` are as stored (EXIF rotation not applied); ``extension`` comes from the
    detected format, so a PNG shipped as ``.jpg`` is written as ``.png``.
    """

    sha256: str
    width: int
    height: int
    format: str
    exif_orientation: int
    file_bytes: int
    extension: str


class ImageRejected(ValueError):
    """An image that must not be kept; ``reason`` is a short code for quarantine.csv.

    Codes: empty, not_an_image, truncated, corrupt, too_small, too_large, unsupported_format.
    """

    def __init__(self, reason: RejectReason, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail} [{reason}]")
        self.reason = reason
        self.name = name
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str, str]]:
        # Keeps the exception picklable (process pools, Dagster event logs) despite the custom init.
        return (type(self), (self.reason, self.name, self.detail))


def inspect_image(data: bytes, name: str) -> ImageFacts:
    """Check that ``data`` is a complete, decodable image and return its facts.

    ``name`` (the member or file name) only appears in error messages: the format comes from the
    magic bytes. Raises ``ImageRejected``.
    """
    if not data:
        raise ImageRejected("empty", name, "0 bytes")
    image_format = detect_format(data)
    if image_format is None:
        raise ImageRejected("not_an_image", name, f"no known image signature (starts with {data[:8]!r})")
    if image_format not in _EXTENSIONS:
        raise ImageRejected("unsupported_format", name, f"{image_format} images are not supported")
    if image_format == "JPEG":
        width, height = _check_jpeg(data, name)
        orientation = _jpeg_orientation(data)
    else:
        width, height, orientation = _check_with_pillow(data, name, image_format)
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=image_format,
        exif_orientation=orientation,
        file_bytes=len(data),
        extension=_EXTENSIONS[image_format],
    )


def detect_format(data: bytes) -> str | None:
    """The image format from the magic bytes, or None; names follow Pillow (``JPEG``, ``PNG``...).

    Formats no ISIC source uses (GIF, JPEG 2000, HEIF/AVIF) are recognized so the rejection can say
    "unsupported GIF" rather than "not an image".
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return "BMP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
        return "HEIF"
    return None


def inspect_many(
    items: Iterable[tuple[K, bytes, str]], workers: int = 2, max_in_flight: int = 8,
    time_limit_s: float = DEFAULT_CHECK_TIME_LIMIT_S,
) -> Iterator[tuple[K, ImageFacts | ImageRejected]]:
    """``inspect_image`` over ``(key, data, name)`` items on a thread pool, yielding in input order.

    Threads suffice because the decode and sha256 release the GIL (docs/PERFORMANCE.md 7: 2.0x on two
    cores for 1/8-scale decodes) and they avoid copying every member to a worker process. At most
    ``max_in_flight`` items are held (submitted and not yet yielded), so memory stays bounded by that
    many members however long the input is; the input is consumed lazily, in the calling thread.
    Rejections are yielded as values; any other exception, from a check or from ``items`` itself
    (say ``ZipUnreadable``), propagates at once and the results still in flight are dropped.

    An item still running ``time_limit_s`` after it started (0: no limit) is rejected with reason
    ``time_limit``, and its thread is replaced: a thread cannot be killed, so the stuck one is
    abandoned (a daemon thread, so it never holds up the process's exit) and a fresh one takes its
    place, and the other items go on.
    """
    if workers < 1 or max_in_flight < workers:
        raise ValueError(f"need workers >= 1 and max_in_flight >= workers, got {workers} and {max_in_flight}")
    return _inspect_in_order(items, workers, max_in_flight, time_limit_s)


class _Task:
    """One check: its future and when a thread started it (None while it waits)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name = data, name
        self.future: Future[ImageFacts] = Future()
        self.started: float | None = None
        self.thread: threading.Thread | None = None


class _DaemonPool:
    """Daemon worker threads whose stuck members can be replaced (ThreadPoolExecutor's cannot)."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        for _ in range(workers):
            self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._work, name="inspect_image", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while me in self._threads:
            task = self._queue.get()
            if task is None:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            task.thread = me
            task.started = time.monotonic()
            try:
                task.future.set_result(inspect_image(task.data, task.name))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                with contextlib.suppress(InvalidStateError):
                    task.future.set_exception(exc)

    def submit(self, data: bytes, name: str) -> _Task:
        task = _Task(data, name)
        self._queue.put(task)
        return task

    def abandon(self, task: _Task) -> None:
        """Give up on a stuck task: its thread leaves the pool (it exits if the call ever returns)
        and a fresh thread takes its place."""
        self._threads.discard(task.thread)  # type: ignore[arg-type]
        self._start()

    def shutdown(self) -> None:
        for _ in list(self._threads):
            self._queue.put(None)
        self._threads.clear()


def _inspect_in_order(
    items: Iterable[tuple[K, bytes, str]], workers: int, max_in_flight: int, time_limit_s: float
) -> Iterator[tuple[K, ImageFacts | ImageRejected]]:
    pending: deque[tuple[K, _Task]] = deque()
    pool = _DaemonPool(workers)
    try:
        for key, data, name in items:
            pending.append((key, pool.submit(data, name)))
            if len(pending) >= max_in_flight:
                # Hand one back before pulling the next item, so the input is never ahead.
                yield _outcome(*pending.popleft(), pool, time_limit_s)
        while pending:
            yield _outcome(*pending.popleft(), pool, time_limit_s)
    finally:
        for _, task in pending:
            task.future.cancel()
        pool.shutdown()


def _outcome(key: K, task: _Task, pool: _DaemonPool, time_limit_s: float
             ) -> tuple[K, ImageFacts | ImageRejected]:
    while True:
        wait_s = 1.0
        if time_limit_s > 0 and task.started is not None:
            wait_s = min(wait_s, max(0.0, task.started + time_limit_s - time.monotonic()))
        try:
            return key, task.future.result(timeout=wait_s)
        except ImageRejected as rejected:
            return key, rejected
        except FutureTimeout:
            if time_limit_s > 0 and task.started is not None and time.monotonic() - task.started >= time_limit_s:
                pool.abandon(task)
                return key, ImageRejected(
                    "time_limit", task.name,
                    f"checking it took longer than the per-image time limit of {time_limit_s:g} s (a decoder "
                    "that hangs); its thread was replaced")


# --- JPEG --------------------------------------------------------------------------------------


def _check_jpeg(data: bytes, name: str) -> tuple[int, int]:
    """Stored (width, height) of a JPEG whose entropy-coded data decodes without any warning."""
    try:
        height, width, colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError as err:
        raise _jpeg_header_rejection(data, name, err) from None
    _check_dimensions(width, height, name)
    try:
        # min_width/min_height of exactly 1/8 make libjpeg-turbo pick the 1/8 scale, never an M/8
        # one (those have no SIMD IDCT and are slower, docs/PERFORMANCE.md 2).
        simplejpeg.decode_jpeg(
            data,
            colorspace=_JPEG_OUTPUT.get(colorspace, "RGB"),
            min_width=math.ceil(width / _JPEG_SCALE),
            min_height=math.ceil(height / _JPEG_SCALE),
            strict=True,
        )
    except ValueError as err:
        raise ImageRejected(
            _jpeg_reason(str(err)), name, f"JPEG {width}x{height} does not decode: {err}"
        ) from None
    return width, height


def _jpeg_reason(message: str) -> RejectReason:
    """Map libjpeg-turbo's message to a reason code (messages from jerror.h)."""
    if message.startswith("Premature end of JPEG file"):
        return "truncated"
    if "Unsupported" in message or "not supported" in message:
        return "unsupported_format"
    return "corrupt"


def _jpeg_header_rejection(data: bytes, name: str, err: ValueError) -> ImageRejected:
    """Explain a header failure: TurboJPEG says "Could not determine subsampling level" for anything.

    Pillow's marker parser gives the real story: if it reads the header, the file is a JPEG flavour
    TurboJPEG cannot decode (lossless, odd sampling); if it finds the file cut short, it is truncated.
    """
    try:
        with Image.open(BytesIO(data), formats=["JPEG"]) as image:
            size, mode = image.size, image.mode
    except Exception as pillow_err:  # Pillow raises many types for broken headers
        if isinstance(pillow_err, MemoryError):
            raise
        truncated = "truncated" in str(pillow_err).lower() or b"\xff\xda" not in data
        detail = f"JPEG header unreadable ({err}; Pillow: {pillow_err})"
        return ImageRejected("truncated" if truncated else "corrupt", name, detail)
    detail = f"JPEG {size[0]}x{size[1]} {mode} that libjpeg-turbo cannot decode ({err})"
    return ImageRejected("unsupported_format", name, detail)


def _jpeg_orientation(data: bytes) -> int:
    """EXIF orientation of a JPEG; Pillow's open parses markers up to the scan only (~0.1 ms).

    The pixels already decoded strictly; a marker Pillow dislikes leaves the image unrotated, as
    in any viewer built on Pillow, instead of throwing the image away.
    """
    try:
        with Image.open(BytesIO(data), formats=["JPEG"]) as image:
            return _orientation(image)
    except (OSError, SyntaxError, ValueError):
        return 1


# --- everything else ---------------------------------------------------------------------------


def _check_with_pillow(data: bytes, name: str, image_format: str) -> tuple[int, int, int]:
    """Full Pillow decode (plus PNG CRC verification); return (width, height, orientation)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide Pillow switch; with it on, truncated files decode "successfully".
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; image checks "
            "would accept truncated files. Leave it False."
        )
    try:
        with Image.open(BytesIO(data), formats=[image_format]) as image:
            width, height = image.size
            _check_dimensions(width, height, name)
            if image_format == "PNG":
                image.verify()
        with Image.open(BytesIO(data), formats=[image_format]) as image:
            image.load()
            orientation = _orientation(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_large", name, str(err)) from None
    except Exception as err:  # Pillow plugins raise OSError, SyntaxError, struct.error...
        if isinstance(err, MemoryError):
            raise
        reason: RejectReason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise ImageRejected(
            reason, name, f"{image_format} does not decode ({type(err).__name__}: {err})"
        ) from None
    return width, height, orientation


# --- shared ------------------------------------------------------------------------------------


def _check_dimensions(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageRejected("too_small", name, f"{width}x{height} pixels, below {MIN_SIDE}x{MIN_SIDE}")
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            "too_large", name, f"{width}x{height} = {width * height:,} pixels, above {MAX_PIXELS:,}"
        )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8; 1 when absent, unreadable or out of range.

    1 is what every viewer shows in those cases (Pillow's ``exif_transpose`` ignores other values),
    so it is the orientation the image is actually seen in.
    """
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is ignored by viewers, so by us too
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
