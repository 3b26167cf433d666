"""The catalog of ISIC sources: what can be downloaded, in which format, from where.

A source is a named set of files (role -> URL list) in one of the ISIC formats. The built-in catalog
(``isic_assets/catalog.yaml``) holds the real challenge training sets and the demo mirror; a user
catalog (``ISIC_CATALOG``) adds sources of its own in the same shape. Catalog order matters: it is the
order in which sources fill each other's metadata gaps and break ties between duplicate images.

A source's ``purpose`` is ``training`` (the default) or ``evaluation``: an official test or validation
set whose images must never be trained on. Selected evaluation sources come first in the merge order,
so that where an evaluation image and a training image are the same (id or bytes) the evaluation copy,
its label and its metadata win.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

BUILTIN_CATALOG = Path(__file__).resolve().parents[2] / "catalog.yaml"

# Roles per format (the foundation issue; docs/ISIC_SOURCES.md 1.2): required first, then optional.
FORMAT_ROLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "isic2016": (frozenset({"images", "ground_truth"}), frozenset()),
    # The 2017 metadata CSV may sit inside the images zip instead of beside it.
    "isic2017": (frozenset({"images", "ground_truth"}), frozenset({"metadata"})),
    "isic2018": (frozenset({"images", "ground_truth"}), frozenset({"metadata", "lesion_groupings"})),
    "isic2019": (frozenset({"images", "ground_truth", "metadata"}), frozenset()),
    "isic2020": (frozenset({"images", "ground_truth"}), frozenset({"duplicates"})),
    # ISIC 2024: Kaggle (images = HDF5, metadata = train-metadata.csv) or the challenge layout (images =
    # zip, metadata = supplement, ground_truth = isic_id,malignant); docs/ISIC_SOURCES.md 1.6.
    "isic2024": (frozenset({"images", "metadata"}), frozenset({"ground_truth"})),
    "isic_archive_zip": (frozenset({"archive"}), frozenset()),
    # The live Archive: no files, a query (issue 6; docs/ISIC_SOURCES.md 2).
    "isic_api": (frozenset(), frozenset()),
}
DEFAULT_API_URL = "https://api.isic-archive.com/api/v2/"
FORMATS = tuple(FORMAT_ROLES)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
TRAINING = "training"
EVALUATION = "evaluation"
PURPOSES = (TRAINING, EVALUATION)


class CatalogError(ValueError):
    """A catalog entry is unusable; the message names the catalog file and the source."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: its role, mirror URLs in the order to try, and an optional checksum."""

    role: str
    urls: tuple[str, ...]
    sha256: str | None = None

    @property
    def filename(self) -> str:
        """Local file name: the last path component of the first URL, as published."""
        return PurePosixPath(unquote(urlparse(self.urls[0]).path)).name


@dataclass(frozen=True)
class ApiSpec:
    """What an ``isic_api`` source downloads: a search query and/or collections, up to ``limit`` images."""

    query: str = ""
    collections: tuple[int, ...] = ()
    limit: int = 0
    api_url: str = DEFAULT_API_URL


@dataclass(frozen=True)
class Source:
    """A named ISIC source in one format."""

    name: str
    format: str
    files: Mapping[str, SourceFile]
    description: str = ""
    origin: str = "built-in"
    api: ApiSpec | None = None
    purpose: str = TRAINING

    @property
    def is_evaluation(self) -> bool:
        """An official evaluation set: held out of train/validation/test, written to evaluation_data/."""
        return self.purpose == EVALUATION

    def with_substitutions(self, values: Mapping[str, str]) -> Source:
        """Return the source with ``{placeholder}`` URL parts filled in (e.g. the demo mirror URL)."""
        files = {}
        for role, spec in self.files.items():
            urls = tuple(_substitute(url, values, self.name) for url in spec.urls)
            files[role] = SourceFile(role=role, urls=urls, sha256=spec.sha256)
        return Source(self.name, self.format, files, self.description, self.origin, self.api, self.purpose)

    @property
    def placeholders(self) -> set[str]:
        """Placeholders its URLs still contain."""
        return {m for spec in self.files.values() for url in spec.urls for m in _PLACEHOLDER_RE.findall(url)}


@dataclass
class Catalog:
    """Sources by name, in catalog order, plus groups that expand to several sources."""

    sources: dict[str, Source] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def select(self, names: str | Iterable[str]) -> list[Source]:
        """Sources for a comma-separated selection (``ISIC_SOURCES``), expanded, evaluation sources first,
        each kind in catalog order.

        Catalog order, not selection order, so that the same set of sources always merges the same
        way however the user spelled the list. Evaluation sources first because the merge keeps the
        copy of the earliest source: an image that is both an official evaluation image and a training
        image must stay the evaluation image (with the evaluation set's label).
        """
        wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        if not wanted:
            raise CatalogError("no source selected: ISIC_SOURCES is empty")
        chosen: set[str] = set()
        for name in wanted:
            if name in self.groups:
                chosen.update(self.groups[name])
            elif name in self.sources:
                chosen.add(name)
            else:
                known = ", ".join([*self.groups, *self.sources])
                raise CatalogError(f"unknown source {name!r} in the selection; known names: {known}")
        picked = [source for name, source in self.sources.items() if name in chosen]
        return [s for s in picked if s.is_evaluation] + [s for s in picked if not s.is_evaluation]


def load_catalog(user_catalog: str | Path | None = None) -> Catalog:
    """The built-in catalog, plus the sources of a user catalog file when one is given.

    A user source may not reuse a built-in name: silently replacing ``isic2019`` would make two
    machines with the same ``ISIC_SOURCES`` download different data.
    """
    catalog = parse_catalog(_read_yaml(BUILTIN_CATALOG), origin="built-in")
    if user_catalog:
        path = Path(user_catalog).expanduser()
        if not path.is_file():
            raise CatalogError(f"ISIC_CATALOG points at {path}, which is not a file")
        user = parse_catalog(_read_yaml(path), origin=str(path))
        for name in [*user.sources, *user.groups]:
            if name in catalog.sources or name in catalog.groups:
                raise CatalogError(f"{path}: source {name!r} is already defined in the built-in catalog")
        catalog.sources.update(user.sources)
        catalog.groups.update(user.groups)
    return catalog


def parse_catalog(document: Any, origin: str) -> Catalog:
    """Validate a catalog document (the YAML shape in the README) into a Catalog."""
    if not isinstance(document, dict) or not isinstance(document.get("sources"), dict):
        raise CatalogError(f"{origin}: a catalog is a mapping with a 'sources:' mapping at the top")
    unknown_keys = set(document) - {"sources", "groups"}
    if unknown_keys:
        raise CatalogError(f"{origin}: unknown top-level keys {sorted(unknown_keys)}; expected sources, groups")
    catalog = Catalog()
    for name, entry in document["sources"].items():
        catalog.sources[str(name)] = _parse_source(str(name), entry, origin)
    for name, members in (document.get("groups") or {}).items():
        if not isinstance(members, list) or not members:
            raise CatalogError(f"{origin}: group {name!r} must be a non-empty list of source names")
        missing = [m for m in members if m not in catalog.sources]
        if missing:
            raise CatalogError(f"{origin}: group {name!r} names unknown sources {missing}")
        catalog.groups[str(name)] = tuple(members)
    return catalog


def _parse_source(name: str, entry: Any, origin: str) -> Source:
    where = f"{origin}: source {name!r}"
    if not _NAME_RE.match(name):
        raise CatalogError(f"{where}: names use letters, digits, '_', '.', '-' (they become folder names)")
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping with 'format' and 'files'")
    unknown_keys = set(entry) - {"format", "files", "sha256", "description", "purpose", *_API_KEYS}
    if unknown_keys:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown_keys)}; expected format, files, sha256, "
                           "description, purpose")
    purpose = entry.get("purpose", TRAINING)
    if purpose not in PURPOSES:
        raise CatalogError(f"{where}: purpose must be one of {', '.join(PURPOSES)} (default {TRAINING}); "
                           f"got {purpose!r}")
    fmt = entry.get("format")
    if fmt not in FORMAT_ROLES:
        raise CatalogError(f"{where}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "isic_api":
        return _parse_api_source(name, entry, where, origin, purpose)
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        raise CatalogError(f"{where}: 'files' must map roles to URLs")
    required, optional = FORMAT_ROLES[fmt]
    missing = sorted(required - set(files))
    if missing:
        raise CatalogError(f"{where}: format {fmt} needs the role(s) {missing}; got {sorted(files)}")
    extra = sorted(set(files) - required - optional)
    if extra:
        allowed = sorted(required | optional)
        raise CatalogError(f"{where}: format {fmt} has no role(s) {extra}; its roles are {allowed}")
    checksums = entry.get("sha256") or {}
    if not isinstance(checksums, dict):
        raise CatalogError(f"{where}: 'sha256' must map roles to hex digests")
    for role, digest in checksums.items():
        if role not in files:
            raise CatalogError(f"{where}: sha256 given for role {role!r}, which has no file")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise CatalogError(f"{where}: sha256 of {role!r} must be 64 hex digits, got {digest!r}")
    parsed = {}
    for role, urls in files.items():
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list or not all(isinstance(u, str) for u in url_list):
            raise CatalogError(f"{where}: role {role!r} must be a URL or a list of mirror URLs")
        for url in url_list:
            _validate_url(url, f"{where}, role {role!r}")
        digest = checksums.get(role)
        parsed[role] = SourceFile(role=role, urls=tuple(url_list), sha256=digest.lower() if digest else None)
    filenames = [spec.filename for spec in parsed.values()]
    if len(set(filenames)) != len(filenames):
        raise CatalogError(f"{where}: two roles share a file name {filenames}; each file needs its own name")
    return Source(name, fmt, parsed, str(entry.get("description", "")), origin, purpose=purpose)


_API_KEYS = ("query", "collections", "limit", "api_url")


def _parse_api_source(name: str, entry: dict, where: str, origin: str, purpose: str) -> Source:
    """An ``isic_api`` source: the live ISIC Archive searched with a query and/or collections."""
    stray = sorted(set(entry) - {"format", "description", "purpose", *_API_KEYS})
    if stray:
        raise CatalogError(f"{where}: format isic_api takes {', '.join(_API_KEYS)}; unexpected {stray}")
    query = entry.get("query") or ""
    if not isinstance(query, str):
        raise CatalogError(f"{where}: 'query' must be a search string like 'diagnosis_1:\"Malignant\"'")
    collections = entry.get("collections") or []
    if not isinstance(collections, list) or not all(isinstance(c, int) and c > 0 for c in collections):
        raise CatalogError(f"{where}: 'collections' must be a list of collection ids, e.g. [70, 249]")
    limit = entry.get("limit", 0)
    if not isinstance(limit, int) or limit < 0:
        raise CatalogError(f"{where}: 'limit' must be an integer >= 0 (0 = all matching images)")
    api_url = entry.get("api_url") or DEFAULT_API_URL
    _validate_url(api_url.rstrip("/") + "/x", f"{where}, api_url")
    if not api_url.endswith("/"):
        api_url += "/"
    spec = ApiSpec(query=query, collections=tuple(collections), limit=limit, api_url=api_url)
    return Source(name, "isic_api", {}, str(entry.get("description", "")), origin, spec, purpose)


def _validate_url(url: str, where: str) -> None:
    probe = _PLACEHOLDER_RE.sub("http://placeholder", url) if url.startswith("{") else url
    parsed = urlparse(probe)
    if parsed.scheme in ("http", "https"):
        ok = bool(parsed.netloc)
    elif parsed.scheme == "file":
        ok = bool(parsed.path) and parsed.path.startswith("/")
    else:
        ok = False
    if not ok or not PurePosixPath(unquote(parsed.path)).name:
        raise CatalogError(
            f"{where}: {url!r} is not a usable URL; expected http(s)://host/path/file or file:///abs/path/file"
        )


def _substitute(url: str, values: Mapping[str, str], source: str) -> str:
    def repl(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise CatalogError(f"source {source!r}: URL placeholder {{{key}}} has no value at run time")
        return values[key].rstrip("/")

    return _PLACEHOLDER_RE.sub(repl, url)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
