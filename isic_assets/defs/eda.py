"""eda_plots: figures and a self-contained report of the merged dataset (EDA stage)."""



import dagster as dg

from ..core import layout
from ..core.eda.figures import make_eda, markdown_gallery
from .merge import MERGED_IMAGES, MERGED_METADATA
from .metadata import md_table
from .resources import WRITE_POOL, IsicSettings
from .transform import GROUP


@dg.asset(
    deps=[MERGED_METADATA, MERGED_IMAGES],
    group_name=GROUP,
    code_version="1",
    kinds={"python", "matplotlib", "html"},
    description="Figures of the merged dataset (classes, sites, sex, age, dimensions, missing values, "
                "sources, duplicates) and a self-contained report.html in data_visual_repr/.",
    pool=WRITE_POOL,
)
def eda_plots(context: dg.AssetExecutionContext, isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    merged_dir = root / layout.MERGED
    result = make_eda(
        layout.read_table(merged_dir / layout.METADATA_CSV),
        layout.read_table(merged_dir / layout.DUPLICATES_CSV),
        layout.read_table(merged_dir / layout.QUARANTINE_CSV),
        root / layout.EDA,
    )
    context.log.info(f"wrote {len(result.figures)} figures and {result.report}")
    class_counts = result.tables.get("class_counts")
    return dg.MaterializeResult(
        metadata={
            "figures": dg.MetadataValue.md(markdown_gallery(result)),
            "class_counts": dg.MetadataValue.md(md_table(class_counts) if class_counts is not None else ""),
            "report": dg.MetadataValue.path(str(result.report)),
            "path": dg.MetadataValue.path(str(root / layout.EDA)),
            "figure_files": dg.MetadataValue.json({k: str(v) for k, v in result.figures.items()}),
        }
    )
