"""balanced_splits: the leakage-free, class-balanced train/validation/test folders users train on."""

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from ..core import layout
from ..core.splits.assign import SPLITS, SplitConfig, SplitPlan, assign_splits
from ..core.splits.dataset_card import write_dataset_card
from ..core.splits.grouping import build_groups
from ..core.splits.writer import write_splits
from ..core.transform.augment import DEFAULT_AUGMENTATIONS, augment_file
from .metadata import md_table
from .resources import WRITE_POOL, IsicSettings
from .transform import transformed_images

GROUP = "train"
PLAN_FILE = layout.PLAN_JSON


class SplitsConfig(dg.Config):
    """How the dataset is split and balanced; the seed makes every choice reproducible."""

    train: float = Field(default=0.70, gt=0, lt=1)
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, ge=0, lt=1)
    seed: int = 0
    strategy: Literal["undersample", "oversample", "none"] = Field(
        default="undersample",
        description="undersample: cap every class at the minority's count with whole groups; oversample: "
                    "top up the train minority with seeded augmented copies; none: natural ratio + class weights.",
    )
    cap_per_class: int | None = Field(
        default=None, ge=1, description="Total images per class across splits (e.g. 1000), shared by the ratios."
    )
    label_column: str = Field(default="benign_malignant", description="Metadata column holding the label.")
    class_map: dict[str, str] = Field(
        default={"benign": "benign", "malignant": "malignant"},
        description="Label value -> class folder; '*' matches any other non-empty value; unmapped rows are "
                    "left out and counted (e.g. indeterminate, unlabelled).",
    )
    exclude_label_conflicts: bool = Field(
        default=True, description="Leave out images whose sources disagree on benign vs malignant "
                                  "(merged_data/conflicts.csv); they are counted in the metadata.",
    )
    image_types: list[str] = Field(
        default=[], description="Keep only these image_type values, e.g. ['dermoscopic'] or ['TBP tile: close-up']; "
                                "empty: every type present.",
    )
    augmentations_json: str = Field(
        default="", description="Oversampling augmentations as a JSON list of {name, p, ...}; empty: the default."
    )


def split_config(config: SplitsConfig) -> SplitConfig:
    return SplitConfig(ratios=(config.train, config.validation, config.test), seed=config.seed,
                       strategy=config.strategy, cap_per_class=config.cap_per_class,
                       label_column=config.label_column, class_map=dict(config.class_map),
                       image_types=tuple(config.image_types))


@dg.asset(
    deps=[transformed_images],
    group_name=GROUP,
    code_version="1",
    kinds={"python", "jpeg"},
    description="neural_network_data/{train,validation,test}/{benign,malignant}/<isic_id>.jpg with manifest.csv "
                "and per-split imagefolder metadata.csv; no patient, lesion or duplicate spans two splits.",
    pool=WRITE_POOL,
)
def balanced_splits(context: dg.AssetExecutionContext, config: SplitsConfig,
                    isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    transformed = root / layout.TRANSFORMED
    metadata = layout.read_table(transformed / layout.METADATA_CSV)
    duplicates = layout.read_table(root / layout.MERGED / layout.DUPLICATES_CSV)
    settings = split_config(config)
    conflicted = _conflicted(metadata) if config.exclude_label_conflicts else pd.Series(False, index=metadata.index)
    if conflicted.any():
        context.log.warning(f"left out {int(conflicted.sum())} image(s) whose sources disagree on the label: "
                            f"{', '.join(metadata.loc[conflicted, 'isic_id'].head(20))}")
    # Groups come from every image, the left-out ones included: an excluded image can be the only
    # link between two others (same lesion as one, same patient as the other).
    groups = build_groups(metadata, duplicates)
    metadata = metadata.loc[~conflicted].reset_index(drop=True)
    plan = assign_splits(metadata, groups, settings)
    for warning in plan.warnings:
        context.log.warning(warning)
    spec = json.loads(config.augmentations_json) if config.augmentations_json else DEFAULT_AUGMENTATIONS
    spec_version = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]
    out_dir = root / layout.SPLITS
    report = write_splits(
        plan, metadata, transformed, out_dir,
        make_augmented_copy=lambda src, dst, seed: augment_file(src, dst, seed, spec),
        augment_version=spec_version,
    )
    context.log.info(f"splits written: {report.summary()}")
    card = write_dataset_card(plan.manifest, metadata, out_dir, {**settings.as_dict(), "seed": config.seed},
                              _source_facts(isic, metadata))
    summary = plan.summary()
    manifest_bytes = (out_dir / layout.MANIFEST_CSV).read_bytes()
    return dg.MaterializeResult(
        metadata={
            "counts": dg.MetadataValue.md(md_table(plan.counts.reset_index(names="split"))),
            "images": int(plan.counts.to_numpy().sum()),
            "dagster/row_count": len(plan.manifest),
            "groups_per_split": dg.MetadataValue.json(summary["groups_per_split"]),
            "excluded": dg.MetadataValue.json({**summary["excluded"], "label_conflict": int(conflicted.sum())}),
            "unmapped_values": dg.MetadataValue.json(summary["unmapped_values"]),
            "class_weights": dg.MetadataValue.json(summary["class_weights"]),
            "augmented_copies": dg.MetadataValue.json(summary["augmented_counts"]),
            "config": dg.MetadataValue.json(summary["config"]),
            "seed": config.seed,
            "composition": dg.MetadataValue.md(_composition_plot(plan)),
            "files": dg.MetadataValue.json(
                {k: v for k, v in report.summary().items() if k not in ("out_dir", "tables_written")}
            ),
            "path": dg.MetadataValue.path(str(out_dir)),
            "manifest": dg.MetadataValue.path(str(out_dir / layout.MANIFEST_CSV)),
            "dataset_card": dg.MetadataValue.path(str(card)),
            "licenses": dg.MetadataValue.json(_licence_counts(plan.manifest, metadata)),
        },
        data_version=dg.DataVersion(hashlib.sha256(manifest_bytes).hexdigest()[:32]),
    )


def _conflicted(metadata: pd.DataFrame) -> pd.Series:
    """Rows flagged by the merge as having conflicting benign/malignant labels across sources."""
    if "label_conflict" not in metadata.columns:
        return pd.Series(False, index=metadata.index)
    return metadata["label_conflict"].astype(str).str.lower().isin({"true", "1"})


def _source_facts(isic: IsicSettings, metadata: pd.DataFrame) -> list[dict]:
    """What the dataset card says about each source that contributed images."""
    used = {name for cell in metadata.get("sources", pd.Series(dtype=str)) for name in str(cell).split(";") if name}
    facts = []
    for source in isic.selected_sources():
        if source.name not in used:
            continue
        fact = {"name": source.name, "format": source.format, "description": source.description}
        if source.api is not None:
            fact.update(query=source.api.query, collections=list(source.api.collections), api_url=source.api.api_url)
        else:
            fact["files"] = ", ".join(spec.filename for spec in source.files.values())
        facts.append(fact)
    return facts


def _licence_counts(manifest: pd.DataFrame, metadata: pd.DataFrame) -> dict[str, int]:
    licences = metadata.set_index("isic_id")["copyright_license"] if "copyright_license" in metadata else None
    if licences is None:
        return {}
    originals = manifest.loc[~manifest["is_augmented"].astype(bool), "isic_id"] if "is_augmented" in manifest \
        else manifest["isic_id"]
    counts = licences.reindex(originals).fillna("").replace("", "unknown").value_counts()
    return {str(k): int(v) for k, v in counts.sort_index().items()}


def _composition_plot(plan: SplitPlan) -> str:
    """A small stacked-bar PNG of split x class counts, embedded as markdown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = plan.counts.reindex(list(SPLITS)).fillna(0)
    figure = Figure(figsize=(4.2, 2.4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bottom = pd.Series(0, index=counts.index, dtype=float)
    for label in counts.columns:
        bars = axes.bar(counts.index, counts[label], bottom=bottom, label=label)
        axes.bar_label(bars, labels=[str(int(v)) if v else "" for v in counts[label]], label_type="center",
                       fontsize=7)
        bottom += counts[label]
    axes.set_ylabel("images")
    axes.set_title("images per split and class", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return f"![composition](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def read_plan(out_dir: Path) -> dict:
    """The plan summary the asset wrote (config, seed, counts), for the checks."""
    path = out_dir / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; materialize balanced_splits first")
    return json.loads(path.read_text())


def read_manifest(out_dir: Path) -> pd.DataFrame:
    return layout.read_table(out_dir / layout.MANIFEST_CSV)
