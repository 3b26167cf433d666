"""eda_plots: figures and a self-contained report of the merged dataset (EDA stage)."""

import dagster as dg

from ..core import layout
from ..core.eda.review_sheet import image_paths
from ..core.eda.tables import EDA_COLUMNS, MetadataFacts, text_fingerprint
from ..core.splits.near_duplicates import read_pairs
from .merge import MERGED_IMAGES, MERGED_METADATA
from .metadata import data_root_metadata, fingerprint, table_metadata
from .near_duplicates import near_duplicates
from .policies import DOWNSTREAM_AUTOMATION, OWNERS, USER_FACING_FRESHNESS, stage_tags
from .resources import WRITE_POOL, IsicSettings
from .transform import GROUP
from .unchanged import materialize_unless_unchanged

EDA_CODE_VERSION = "3"  # 3: report.html gains the near-duplicate review sheet
# The tables every figure is drawn from; their bytes and the code version are the data version.
INPUT_TABLES = (layout.METADATA_CSV, layout.DUPLICATES_CSV, layout.QUARANTINE_CSV)


@dg.asset(
    # near_duplicates: the source-overlap figure counts its confirmed pairs.
    deps=[MERGED_METADATA, MERGED_IMAGES, near_duplicates],
    group_name=GROUP,
    code_version=EDA_CODE_VERSION,
    kinds={"python", "matplotlib", "html"},
    description="Figures of the merged dataset (classes, sites, sex, age, dimensions, missing values, "
                "sources, duplicates, images shared between sources) and a self-contained report.html in "
                "data_visual_repr/.",
    pool=WRITE_POOL,
    automation_condition=DOWNSTREAM_AUTOMATION,
    freshness_policy=USER_FACING_FRESHNESS,
    owners=OWNERS,
    tags=stage_tags("eda"),
)
def eda_plots(context: dg.AssetExecutionContext, isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    merged_dir = root / layout.MERGED
    [result] = materialize_unless_unchanged(
        context, root, isic.force, settings={"sources": [s.name for s in isic.selected_sources()]},
        reads=[*(merged_dir / name for name in (*INPUT_TABLES, layout.NEAR_DUPLICATES_CSV)),
               root / layout.TRANSFORMED / layout.METADATA_CSV],
        writes=[root / layout.EDA],
        run=lambda: [_eda(context, isic, root)],
    )
    return result


def _eda(context: dg.AssetExecutionContext, isic: IsicSettings, root) -> dg.MaterializeResult:
    # Imported here: matplotlib and seaborn take about a second to import, which every process loading
    # the code location would pay, and a no-change re-run never draws.
    from ..core.eda.figures import make_eda, markdown_gallery

    merged_dir = root / layout.MERGED
    metadata_csv = merged_dir / layout.METADATA_CSV
    pairs = read_pairs(root)
    result = make_eda(
        layout.read_table(metadata_csv, columns=EDA_COLUMNS),
        layout.read_table(merged_dir / layout.DUPLICATES_CSV),
        layout.read_table(merged_dir / layout.QUARANTINE_CSV),
        root / layout.EDA,
        pairs,
        tuple(s.name for s in isic.selected_sources()),
        MetadataFacts.from_chunks(layout.read_table_chunks(metadata_csv), layout.table_columns(metadata_csv)),
        review_images=_transformed_images(root, pairs),
    )
    context.log.info(f"wrote {len(result.figures)} figures and {result.report}")
    class_counts = result.tables.get("class_counts")
    # The figures are a function of the merged tables and this code: hashing those is stable where the
    # PNG and HTML bytes are not guaranteed to be (renderer versions).
    pairs = merged_dir / layout.NEAR_DUPLICATES_CSV
    version = fingerprint([f"code:{EDA_CODE_VERSION}",
                           *(f"{name}:{text_fingerprint(merged_dir / name)}" for name in INPUT_TABLES),
                           f"pairs:{fingerprint([pairs.read_text()]) if pairs.is_file() else ''}"])
    overlap = result.tables["source_overlap"]
    return dg.MaterializeResult(
        metadata={
            **data_root_metadata(root),
            "figures": dg.MetadataValue.md(markdown_gallery(result)),
            "class_counts": dg.MetadataValue.md(class_counts.to_markdown(index=False)
                                                if class_counts is not None else ""),
            "source_overlap": table_metadata(overlap.to_dict(orient="records")) if len(overlap)
            else dg.MetadataValue.md("no two selected sources share an image"),
            "report": dg.MetadataValue.path(str(result.report)),
            "path": dg.MetadataValue.path(str(root / layout.EDA)),
            "figure_files": dg.MetadataValue.json({k: str(v) for k, v in result.figures.items()}),
        },
        data_version=dg.DataVersion(version),
    )


def _transformed_images(root, pairs):
    """``isic_id`` -> transformed image of the ids in ``pairs``, for the report's review sheet (empty
    before transformed_images ran); two columns read, and only the paired ids kept."""
    table = root / layout.TRANSFORMED / layout.METADATA_CSV
    if not table.is_file() or pairs is None or pairs.empty:
        return {}
    images = layout.read_table(table, columns=["isic_id", "image"])
    paired = images["isic_id"].isin(set(pairs["isic_id_a"]) | set(pairs["isic_id_b"]))
    return image_paths(images[paired], root / layout.TRANSFORMED)
