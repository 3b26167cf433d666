"""A loopback fake of the ISIC Archive API v2, built from the documented shapes (docs/ISIC_SOURCES.md 2.1-2.4).

No real API response was ever captured (docs/ISIC_SOURCES.md 4), so this fake follows the server code as
documented: ``ImageOut`` records with absent keys for missing values, cursor pagination with an opaque
base64 ``cursor`` (``p=<created>``), a full ``next`` URL, ``count`` only on the first page and ``limit``
clamped (to 100, or less for tests), ``images/search/size/``, ``images/{id}/``,
``zip-download/license-file/{licence}/``, and content URLs
``/content/<uuid>/<name>.<ext>?Expires=<t>&Signature=<hmac>&Key-Pair-Id=...`` that answer 403 once
expired or tampered with, like CloudFront signed URLs.

It extends :class:`~isic_assets_tests.fault_server.FaultServer`, so every request is recorded (method,
path, headers, status, body bytes) and the path faults work on the API paths too (e.g. an
``ErrorStatus(429, times=3, retry_after="0.2")`` on ``api/v2/images/search`` is a 429 burst). Knobs of
its own: ``stall_pages`` (page number -> seconds to stall once, longer than the client's read timeout),
``stale_search_urls`` (ids whose search-result URLs are already expired), ``size_override``,
``forbidden_ids`` (content always 403) and ``token`` (private images need ``Authorization: Bearer``).
Images are real JPEGs (and one PNG in :func:`sample_images`) written under the served folder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from PIL import Image, ImageDraw

from isic_assets_tests.fault_server import FaultServer, FaultyHandler

API_PREFIX = "/api/v2/"
CONTENT_PREFIX = "/content/"
LICENSE_TEXTS = {
    "CC-0": "fake archive text of CC0 1.0\n",
    "CC-BY": "fake archive text of CC BY 4.0\n",
    "CC-BY-NC": "fake archive text of CC BY-NC 4.0\n",
}
_TERM = re.compile(r'^([a-z_0-9]+):(?:"([^"]*)"|([^\s"]+))$')


@dataclass
class FakeImage:
    """One archive image: the fields of ``ImageOut`` plus what the fake needs to serve and filter it."""

    isic_id: str
    created: str  # ISO timestamp: the search order and the cursor position
    copyright_license: str
    attribution: str
    acquisition: dict[str, Any] = field(default_factory=dict)
    clinical: dict[str, Any] = field(default_factory=dict)
    collections: tuple[int, ...] = ()
    public: bool = True
    extension: str = ".jpg"
    color: tuple[int, int, int] = (150, 90, 70)


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (48, 36), fmt: str = "JPEG") -> bytes:
    """A small real image: a skin-toned field with a darker lesion-like ellipse."""
    image = Image.new("RGB", size, (224, 180, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def sample_images() -> list[FakeImage]:
    """Eleven public images and one private one covering every documented value that matters.

    Every ``diagnosis_1`` (Benign, Indeterminate, Malignant, absent) and every ``anatom_site_1`` (Head
    and neck, Trunk, Upper extremity, Lower extremity, Anogenital region) alone, plus deeper sites
    (Posterior/Anterior trunk, Palm of hand, Sole of foot); all three licences; attributions whose
    archive order is: ViDIR (3), Hospital Clinic (2), Department... (1), Memorial... (1), then
    Anonymous (4, the most, but last). ISIC_0000009 is served as PNG, ISIC_0000011 is private.
    """
    vidir = "ViDIR Group, Department of Dermatology, Medical University of Vienna"
    clinic = "Hospital Clínic de Barcelona"
    athens = "Department of Dermatology, University of Athens"
    mskcc = "Memorial Sloan Kettering Cancer Center"

    def image(n: int, license_: str, attribution: str, clinical: dict[str, Any], **extra: Any) -> FakeImage:
        acquisition = {"pixels_x": 48, "pixels_y": 36, **extra.pop("acquisition", {"image_type": "dermoscopic"})}
        return FakeImage(
            isic_id=f"ISIC_{n:07d}", created=f"2024-01-{n:02d}T10:00:00.000000+00:00",
            copyright_license=license_, attribution=attribution, acquisition=acquisition,
            clinical=clinical, color=(40 + 15 * n, 30 + 5 * n, 20 + 10 * n), **extra,
        )

    melanoma = {"diagnosis_2": "Malignant melanocytic proliferations (Melanoma)", "diagnosis_3": "Melanoma Invasive"}
    return [
        image(1, "CC-0", "Anonymous", {"diagnosis_1": "Benign", "diagnosis_2": "Benign melanocytic proliferations",
                                       "diagnosis_3": "Nevus", "anatom_site_1": "Head and neck", "age_approx": 35,
                                       "sex": "female", "patient_id": "IP_0000001", "lesion_id": "IL_0000001",
                                       "diagnosis_confirm_type": "histopathology", "melanocytic": True},
              collections=(70,)),
        image(2, "CC-BY", clinic, {"diagnosis_1": "Malignant", **melanoma, "anatom_site_1": "Trunk",
                                   "anatom_site_2": "Posterior trunk", "age_approx": 60, "sex": "male",
                                   "patient_id": "IP_0000002", "mel_thick_mm": 0.6, "melanocytic": True},
              collections=(70, 249), acquisition={"image_type": "dermoscopic",
                                                  "dermoscopic_type": "contact polarized"}),
        image(3, "CC-BY-NC", vidir, {"diagnosis_1": "Indeterminate",
                                     "diagnosis_2": "Indeterminate epidermal proliferations",
                                     "diagnosis_3": "Solar or actinic keratosis", "anatom_site_1": "Upper extremity",
                                     "age_approx": 75, "sex": "male"}, collections=(212,)),
        image(4, "CC-BY-NC", vidir, {"diagnosis_1": "Benign", "anatom_site_1": "Lower extremity",
                                     "age_approx": 40, "fitzpatrick_skin_type": "III"}, collections=(212,)),
        image(5, "CC-BY", clinic, {"diagnosis_1": "Malignant",
                                   "diagnosis_2": "Malignant adnexal epithelial proliferations - Follicular",
                                   "diagnosis_3": "Basal cell carcinoma", "anatom_site_1": "Anogenital region",
                                   "sex": "female"}, collections=(249,)),
        image(6, "CC-0", "Anonymous", {}, acquisition={}),  # nothing known: every optional key absent
        image(7, "CC-BY-NC", "Anonymous", {"diagnosis_1": "Benign", "anatom_site_1": "Trunk",
                                           "clin_size_long_diam_mm": 4.5}),
        image(8, "CC-BY", mskcc, {"diagnosis_1": "Malignant", **melanoma, "anatom_site_1": "Upper extremity",
                                  "anatom_site_2": "Hand", "anatom_site_3": "Palm of hand",
                                  "personal_hx_mm": False}, acquisition={"image_type": "clinical: close-up"}),
        image(9, "CC-BY-NC", vidir, {"diagnosis_1": "Benign", "anatom_site_1": "Lower extremity",
                                     "anatom_site_2": "Foot", "anatom_site_3": "Sole of foot"}, extension=".png"),
        image(10, "CC-0", "Anonymous", {"diagnosis_1": "Benign", "anatom_site_1": "Trunk",
                                        "anatom_site_2": "Anterior trunk"}),
        image(11, "CC-BY", "Private Collaborator Clinic", {"diagnosis_1": "Malignant", **melanoma}, public=False),
        image(12, "CC-BY", athens, {"diagnosis_1": "Benign", "anatom_site_1": "Head and neck", "age_approx": 85}),
    ]


class FakeIsicApi(FaultServer):
    """The fake API on an ephemeral loopback port; ``api_url`` is what an ``ApiQuery`` points at."""

    def __init__(self, root: Path, images: Sequence[FakeImage], *, max_page_size: int = 100,
                 url_ttl: float = 3600.0, token: str | None = None) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        super().__init__(Path(root))
        # FaultServer binds its own handler; swapping the class the socket server instantiates per
        # request keeps every fault and record hook and adds the API routes.
        self._httpd.RequestHandlerClass = FakeApiHandler
        self.max_page_size = max_page_size
        self.url_ttl = url_ttl
        self.token = token
        self.stall_pages: dict[int, float] = {}
        self.stale_search_urls: set[str] = set()
        self.forbidden_ids: set[str] = set()
        self.size_override: int | None = None
        self.api_paths: list[str] = []  # every API request's path with its query string, in order
        self._secret = uuid.uuid4().bytes
        self._images: dict[str, FakeImage] = {}
        self._content: dict[str, tuple[str, int]] = {}  # isic_id -> (content path, size)
        self._state_lock = threading.Lock()
        for image in images:
            self.add_image(image)

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    # ------------------------------------------------------------------ data
    def add_image(self, image: FakeImage) -> bytes:
        """Publish an image (also while running: a new image for the sensor); returns its bytes."""
        fmt = "PNG" if image.extension == ".png" else "JPEG"
        data = jpeg_bytes(image.color, fmt=fmt)
        rel = f"content/{uuid.uuid5(uuid.NAMESPACE_URL, image.isic_id)}/{uuid.uuid4().hex[:12]}{image.extension}"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with self._state_lock:
            self._images[image.isic_id] = image
            self._content[image.isic_id] = ("/" + rel, len(data))
        return data

    def image_bytes(self, isic_id: str) -> bytes:
        return (self.root / self._content[isic_id][0].lstrip("/")).read_bytes()

    def content_path(self, isic_id: str) -> str:
        """The content path of an image as requests are recorded (``content/<uuid>/<name>.<ext>``)."""
        return self._content[isic_id][0].lstrip("/")

    def remove_content(self, isic_id: str) -> None:
        """Delete the stored file: its URL then answers 404, for good."""
        (self.root / self._content[isic_id][0].lstrip("/")).unlink()

    def visible(self, authorized: bool) -> list[FakeImage]:
        with self._state_lock:
            images = list(self._images.values())
        return sorted((i for i in images if i.public or authorized), key=lambda i: (i.created, i.isic_id))

    # ------------------------------------------------------------------ signed URLs
    def sign(self, path: str, ttl: float) -> str:
        expires = int(time.time() + ttl)
        signature = hmac.new(self._secret, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{self.url}{path}?" + urlencode({"Expires": expires, "Signature": signature, "Key-Pair-Id": "FAKEKEY"})

    def signature_ok(self, path: str, query: str) -> bool:
        params = parse_qs(query)
        try:
            expires = int(params["Expires"][0])
            signature = params["Signature"][0]
        except (KeyError, ValueError, IndexError):
            return False
        wanted = hmac.new(self._secret, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(wanted, signature) and expires >= time.time()

    def record_of(self, image: FakeImage, ttl: float) -> dict[str, Any]:
        """``ImageOut``: absent keys for missing values (docs/ISIC_SOURCES.md 2.2)."""
        path, size = self._content[image.isic_id]
        return {
            "isic_id": image.isic_id,
            "public": image.public,
            "copyright_license": image.copyright_license,
            "attribution": image.attribution,
            "files": {
                "full": {"url": self.sign(path, ttl), "size": size},
                "thumbnail_256": {"url": self.sign(path, ttl), "size": size},
            },
            "metadata": {"acquisition": dict(image.acquisition), "clinical": dict(image.clinical)},
        }

    # ------------------------------------------------------------------ requests seen
    def content_requests(self) -> list:
        return [r for r in self.records() if r.path.startswith("content/")]

    def api_requests(self) -> list:
        return [r for r in self.records() if r.path.startswith("api/")]


def _matches(image: FakeImage, query: str, collections: set[int]) -> bool:
    if collections and not collections & set(image.collections):
        return False
    if not query:
        return True
    fields = {"isic_id": image.isic_id, "copyright_license": image.copyright_license,
              "public": str(image.public).lower(), **image.acquisition, **image.clinical}
    for term in query.split(" AND "):
        name, quoted, bare = _TERM.match(term.strip()).groups()  # type: ignore[union-attr]
        value = quoted if quoted is not None else bare
        if name not in fields or str(fields[name]) != value:
            return False
    return True


def _query_ok(query: str) -> bool:
    return not query or all(_TERM.match(term.strip()) for term in query.split(" AND "))


def _encode_cursor(created: str) -> str:
    return base64.b64encode(urlencode({"p": created}).encode()).decode()


def _decode_cursor(cursor: str) -> str | None:
    try:
        return parse_qs(base64.b64decode(cursor, validate=True).decode())["p"][0]
    except (ValueError, KeyError, IndexError):
        return None


class FakeApiHandler(FaultyHandler):
    """Routes ``/api/v2/...`` to the fake API and checks content signatures before the mirror serves."""

    # Headers and body leave in separate writes; without TCP_NODELAY every small JSON answer waits
    # ~40 ms for the client's delayed ACK (Nagle), which would make each test a second slower.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> FakeIsicApi:
        return self.server.mirror  # type: ignore[return-value]

    def do_GET(self) -> None:  # name fixed by BaseHTTPRequestHandler
        path, _, query = self.path.partition("?")
        if path.startswith(API_PREFIX):
            self.fake.api_paths.append(self.path)
            if not self.before_serving(path.strip("/")):  # records it and applies path faults
                self.route(path[len(API_PREFIX):].strip("/"), parse_qs(query, keep_blank_values=True))
            return
        if path.startswith(CONTENT_PREFIX):
            isic_id = next((i for i, (p, _) in self.fake._content.items() if p == path), None)
            if isic_id in self.fake.forbidden_ids or not self.fake.signature_ok(path, query):
                if not self.before_serving(path.strip("/")):
                    self.send_text(403, "<Error><Code>AccessDenied</Code><Message>Request has expired"
                                        "</Message></Error>")
                return
        super().do_GET()

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self) -> bool:
        token = self.fake.token
        return bool(token) and self.headers.get("Authorization") == f"Bearer {token}"

    def route(self, route: str, params: dict[str, list[str]]) -> None:
        def param(name: str) -> str:
            return params.get(name, [""])[0]

        if route == "images/search":
            self.search(param("query"), param("collections"), param("limit"), param("cursor"))
        elif route == "images/search/size":
            images = self.matching(param("query"), param("collections"))
            if images is not None:
                size = sum(self.fake._content[i.isic_id][1] for i in images)
                self.send_json(200, {"size": self.fake.size_override if self.fake.size_override is not None
                                     else size})
        elif route.startswith("images/") and route.count("/") == 1:
            isic_id = route.split("/")[1]
            image = next((i for i in self.fake.visible(self.authorized()) if i.isic_id == isic_id), None)
            if image is None:
                self.send_json(404, {"detail": "Not Found"})
            else:
                self.send_json(200, self.fake.record_of(image, self.fake.url_ttl))
        elif route.startswith("zip-download/license-file/"):
            text = LICENSE_TEXTS.get(route.rsplit("/", 1)[1])
            if text is None:
                self.send_json(404, {"detail": "Not Found"})
            else:
                self.send_text(200, text.rstrip("\n"))
        else:
            self.send_json(404, {"detail": "Not Found"})

    def matching(self, query: str, collections: str) -> list[FakeImage] | None:
        """Images of a search, or None after answering 400 like the server does for a bad query."""
        if not _query_ok(query):
            self.send_json(400, {"message": "Could not parse search query."})
            return None
        try:
            wanted = {int(c) for c in collections.split(",") if c}
        except ValueError:
            self.send_json(422, {"detail": "collections must be integers"})
            return None
        return [i for i in self.fake.visible(self.authorized()) if _matches(i, query.strip(), wanted)]

    def search(self, query: str, collections: str, limit: str, cursor: str) -> None:
        images = self.matching(query, collections)
        if images is None:
            return
        page_size = max(1, min(int(limit) if limit.isdigit() else 100, 100, self.fake.max_page_size))
        start = 0
        if cursor:
            position = _decode_cursor(cursor)
            if position is None:
                self.send_json(400, {"detail": "Value error, Invalid cursor."})
                return
            start = sum(1 for i in images if i.created <= position)
        page_number = start // page_size + 1
        stall = self.fake.stall_pages.pop(page_number, None)
        if stall is not None:
            time.sleep(stall)  # longer than the client's read timeout: it gives up and retries
            self.close_connection = True
            return
        page = images[start:start + page_size]
        next_url = None
        if start + page_size < len(images):
            next_params = {"query": query, "collections": collections, "limit": str(page_size),
                           "cursor": _encode_cursor(page[-1].created)}
            next_url = f"{self.fake.api_url}images/search/?{urlencode(next_params)}"
        results = [
            self.fake.record_of(i, -60.0 if i.isic_id in self.fake.stale_search_urls else self.fake.url_ttl)
            for i in page
        ]
        self.send_json(200, {"count": len(images) if not cursor else None, "next": next_url,
                             "previous": None, "results": results})
