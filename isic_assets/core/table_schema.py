"""Column types of the pipeline's tables, taken from the data itself (for column schemas in the UI).

The CSV files are read back as text (``layout.read_table``), so their types come from where they are
still known: the frame before it was written, or merged_data/metadata.parquet, which stores them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd


def _pandas_type(dtype: object) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def column_types(frame: pd.DataFrame) -> dict[str, str]:
    """``int``, ``float``, ``bool``, ``datetime`` or ``string`` per column, from the frame's dtypes."""
    return {str(name): _pandas_type(dtype) for name, dtype in frame.dtypes.items()}


def parquet_column_types(path: Path) -> dict[str, str]:
    """The same names for the columns of a parquet file, from its stored schema (no rows read)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return column_types(schema.empty_table().to_pandas())


def typed_columns(columns: Iterable[str], *known: Mapping[str, str]) -> dict[str, str]:
    """Each column's type from the first mapping that knows it; ``string`` when none does."""
    out = {}
    for column in columns:
        out[column] = next((types[column] for types in known if column in types), "string")
    return out
