"""Small builders for the metadata the Dagster UI shows (tables, markdown previews)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg


def table_metadata(rows: Sequence[dict[str, Any]]) -> dg.TableMetadataValue:
    """A UI table from records, with a schema inferred from the first row's value types."""
    if not rows:
        return dg.MetadataValue.table(records=[], schema=dg.TableSchema(columns=[]))
    columns = list(rows[0])
    kinds = {c: _kind(_plain(rows[0][c])) for c in columns}
    records = [dg.TableRecord({str(c): _plain(r.get(c)) for c in columns}) for r in rows]
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), kinds[c]) for c in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def column_schema(types: Mapping[str, str]) -> dg.TableSchema:
    """``dagster/column_schema`` of a table from its column types (``core/table_schema.py``)."""
    return dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in types.items()])


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def files_version(*paths: Path) -> str:
    """The sha256 of the files' bytes one after the other (32 hex digits), read a megabyte at a time:
    a 401,059-row metadata.csv is about 200 MB, which ``read_bytes()`` held whole just to hash it."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def fingerprint(parts: Iterable[str]) -> str:
    """A short, order-independent digest of ``parts``: the data version of a set of files."""
    digest = hashlib.sha256()
    for part in sorted(parts):
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


# Every materialization records the data root it wrote to, so whatever reads the event log to decide
# (clean_intermediates) considers only the materializations of its own data root: several roots can
# share one Dagster instance.
DATA_ROOT_KEY = "isic/data_root"


def data_root_metadata(root: Path) -> dict[str, dg.MetadataValue]:
    return {DATA_ROOT_KEY: dg.MetadataValue.path(str(root))}
