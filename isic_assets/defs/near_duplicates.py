"""near_duplicates: look-alike pairs of different ids among the transformed images, for leakage grouping."""

import base64
import hashlib
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.atomic import write_bytes_if_changed
from ..core.eda.review_sheet import closest, image_paths, pair_jpeg
from ..core.splits.near_dup_store import ImageColumns
from ..core.splits.near_duplicates import (
    CHECKS_STATE,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MAX_FINE_DISTANCE,
    DEFAULT_MIN_SIMILARITY,
    HASHES_STATE,
    PAIR_COLUMNS,
    find_near_duplicates,
)
from .metadata import data_root_metadata
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .transform import transformed_images
from .unchanged import materialize_unless_unchanged

GROUP = "train"
REVIEW_PAIRS = 6  # the sheet lives in the event log: a handful of 64-px pairs, about 30 KB
REVIEW_TILE = 64


class NearDuplicatesConfig(dg.Config):
    """How close two hashes must be to be compared, and how alike the aligned detail must be to call it a copy."""

    max_distance: int = Field(default=DEFAULT_MAX_DISTANCE, ge=0, le=16,
                              description="Candidate radius in bits of the 64-bit window keys.")
    max_fine_distance: int = Field(default=DEFAULT_MAX_FINE_DISTANCE, ge=0, le=256,
                                   description="Bits of the 256-bit window hash a candidate may differ by.")
    min_similarity: float = Field(default=DEFAULT_MIN_SIMILARITY, ge=0.0, le=1.0,
                                  description="Correlation of the aligned fine detail that confirms a pair.")


@dg.asset(
    deps=[transformed_images],
    group_name=GROUP,
    code_version="7",
    kinds={"python", "csv"},
    description="merged_data/near_duplicates.csv: pairs of different ids showing the same photo re-encoded, "
                "resized, cropped or recoloured (LSH on windowed DCT hashes, a thumbnail check, then aligned detail).",
    pool=WRITE_POOL,
    automation_condition=DOWNSTREAM_AUTOMATION,
    owners=OWNERS,
    tags=stage_tags("splits"),
)
def near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig,
                    isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    transformed = root / layout.TRANSFORMED
    state = root / layout.MERGED / layout.STATE_DIR
    [result] = materialize_unless_unchanged(
        context, root, isic.force, settings={"config": config.model_dump()},
        reads=[transformed / layout.METADATA_CSV, transformed / "images"],
        writes=[root / layout.MERGED / layout.NEAR_DUPLICATES_CSV, state / HASHES_STATE, state / CHECKS_STATE],
        run=lambda: [_near_duplicates(context, config, root)],
        zero_on_skip=("hashed_this_run", "candidates_checked_this_run"),
    )
    return result


def _near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig,
                     root: Path) -> dg.MaterializeResult:
    transformed = root / layout.TRANSFORMED
    # Bytes columns read a chunk at a time: at 401,059 images the table of Python strings was 88 MB.
    images = ImageColumns.read(transformed / layout.METADATA_CSV)
    report = find_near_duplicates(
        images, transformed, root / layout.MERGED / layout.STATE_DIR,
        max_distance=config.max_distance, max_fine_distance=config.max_fine_distance,
        min_similarity=config.min_similarity, log=context.log.info,
    )
    for isic_id in report.unreadable[:20]:
        context.log.warning(f"near-duplicates: {isic_id} does not decode and was not compared")
    out = root / layout.MERGED / layout.NEAR_DUPLICATES_CSV
    # Rewritten only when the pairs differ: an unchanged file keeps its mtime, so the stages reading
    # it see no change (defs/unchanged.py).
    write_bytes_if_changed(out, report.pairs.to_csv(index=False, lineterminator="\n",
                                                     columns=PAIR_COLUMNS).encode())
    return dg.MaterializeResult(
        metadata={
            **data_root_metadata(root),
            "pairs": len(report.pairs),
            "dagster/row_count": len(report.pairs),
            "images_compared": report.images,
            "hashed_this_run": report.hashed,
            "bucket_entries_read": report.bucket_reads,
            "search_candidates": report.candidates_found,
            "candidate_pairs": report.candidates,
            "candidates_checked_this_run": report.confirmed_checked,
            "unreadable": len(report.unreadable),
            "seconds_by_phase": dg.MetadataValue.json(report.seconds),
            "review_sheet": dg.MetadataValue.md(review_sheet(report.pairs, transformed, images)),
            "path": dg.MetadataValue.path(str(out)),
        },
        data_version=dg.DataVersion(hashlib.sha256(out.read_bytes()).hexdigest()[:32]),
    )


def review_sheet(pairs: pd.DataFrame, transformed: Path, images: ImageColumns, limit: int = REVIEW_PAIRS) -> str:
    """The closest pairs side by side, as small embedded JPEGs, for a person to judge at a glance."""
    if pairs.empty:
        return "no near-duplicate pairs"
    paired = np.isin(images.ids, [str(i).encode() for i in set(pairs["isic_id_a"]) | set(pairs["isic_id_b"])])
    rows = pd.DataFrame({"isic_id": [v.decode() for v in images.ids[paired]],
                         "image": [v.decode() for v in images.paths[paired]]})
    paths = image_paths(rows, transformed)  # only the paired ids, not a path per image
    shown = closest(pairs, limit)
    lines = ["| pair | bits of 256 | similarity | images |", "|---|---:|---:|---|"]
    for row in shown.itertuples(index=False):
        encoded = base64.b64encode(pair_jpeg(paths[row.isic_id_a], paths[row.isic_id_b], REVIEW_TILE, 75)).decode()
        lines.append(f"| {row.isic_id_a} / {row.isic_id_b} | {row.distance} | {row.similarity} | "
                     f"![pair](data:image/jpeg;base64,{encoded}) |")
    return "\n".join(lines) + f"\n\n{len(pairs)} pair(s) in total; the {len(shown)} closest shown."
