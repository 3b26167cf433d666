"""Facts about a written split that the dataset card and the run metadata report: licences per
image and what each contributing source is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..sources.catalog import Source


def licence_counts(manifest: pd.DataFrame, metadata: pd.DataFrame) -> dict[str, int]:
    """Original images (augmented copies left out) per ``copyright_license``; empty: ``unknown``."""
    if "copyright_license" not in metadata:
        return {}
    originals = (manifest.loc[~manifest["is_augmented"].astype(bool), "isic_id"] if "is_augmented" in manifest
                 else manifest["isic_id"])
    # Only the rows the manifest names (the plan's few hundred of 400,000 when undersampling).
    named = metadata[metadata["isic_id"].isin(originals.to_numpy())]
    licences = named.set_index("isic_id")["copyright_license"]
    counts = licences.reindex(originals).fillna("").replace("", "unknown").value_counts()
    return {str(k): int(v) for k, v in counts.sort_index().items()}


def source_facts(sources: Iterable[Source], metadata: pd.DataFrame) -> list[dict[str, Any]]:
    """What the dataset card says about each selected source that contributed images."""
    cells = pd.unique(metadata.get("sources", pd.Series(dtype=str)))  # a few distinct cells, not one per image
    used = {name for cell in cells for name in str(cell).split(";") if name}
    facts = []
    for source in sources:
        if source.name not in used:
            continue
        fact: dict[str, Any] = {"name": source.name, "format": source.format, "description": source.description}
        if source.api is not None:
            fact.update(query=source.api.query, collections=list(source.api.collections), api_url=source.api.api_url)
        else:
            fact["files"] = ", ".join(spec.filename for spec in source.files.values())
        facts.append(fact)
    return facts
