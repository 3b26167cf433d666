"""transformed_images: every merged image made uniform for training (transform stage)."""


import base64
import hashlib
import io
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field

from ..core import layout
from ..core.atomic import atomic_open
from ..core.transform.image_ops import TRANSFORM_CODE_VERSION, TransformSettings
from ..core.transform.runner import TransformJob, TransformReport, transform_images
from .merge import MERGED_IMAGES, MERGED_METADATA
from .resources import WRITE_POOL, IsicSettings

GROUP = "prepare"




class TransformConfig(dg.Config):
    """How every merged image is made uniform; changing any field reprocesses every image."""

    size: int = Field(default=256, ge=16, le=4096, description="Side of the square output, in pixels.")
    mode: Literal["pad", "center_crop", "stretch"] = Field(
        default="pad", description="pad: keep aspect with black borders; center_crop; stretch."
    )
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    color_constancy: bool = Field(default=False, description="Shades of Gray colour constancy (p=6).")
    hair_removal: bool = Field(default=False, description="Black-hat + inpainting hair removal.")
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes (one image each at a time).")


@dg.asset(
    deps=[MERGED_IMAGES, MERGED_METADATA],
    group_name=GROUP,
    code_version=TRANSFORM_CODE_VERSION,
    kinds={"python", "opencv", "jpeg"},
    description="Square, resized, optionally colour-corrected JPEGs in data_transformed/images/, plus "
                "metadata.csv and normalization.json (per-channel mean/std) for training code.",
    pool=WRITE_POOL,
)
def transformed_images(context: dg.AssetExecutionContext, config: TransformConfig,
                       isic: IsicSettings) -> dg.MaterializeResult:
    root = isic.root()
    merged_dir = root / layout.MERGED
    metadata = layout.read_table(merged_dir / layout.METADATA_CSV)
    settings = TransformSettings(size=config.size, mode=config.mode, jpeg_quality=config.jpeg_quality,
                                 color_constancy=config.color_constancy, hair_removal=config.hair_removal)
    jobs = [
        TransformJob(isic_id=row.isic_id, src=merged_dir / row.image, src_sha256=row.sha256,
                     exif_orientation=int(row.exif_orientation or 1))
        for row in metadata.itertuples(index=False)
    ]
    out_dir = root / layout.TRANSFORMED
    report = transform_images(jobs, out_dir, settings, workers=config.workers, log=context.log.info,
                              compute=isic.compute_choice())
    table = _write_tables(metadata, report, settings, out_dir)
    digest = hashlib.sha256(report.fingerprint.encode())
    for isic_id in sorted(report.images):
        digest.update(f"{isic_id}:{report.images[isic_id].sha256}".encode())
    rate = report.processed / report.seconds if report.seconds and report.processed else 0.0
    return dg.MaterializeResult(
        metadata={
            "images": len(table),
            "dagster/row_count": len(table),
            "processed_this_run": report.processed,
            "skipped_unchanged": report.skipped,
            "removed": report.removed,
            "quarantined": report.quarantined,
            "worker_restarts": report.worker_restarts,
            "compute_backend": report.backend,
            "compute_workers": report.compute_workers,
            "seconds": round(report.seconds, 2),
            "images_per_second": round(rate, 1),
            "settings": dg.MetadataValue.json({**asdict(settings), "fingerprint": report.fingerprint}),
            "normalization": dg.MetadataValue.json(
                {k: report.normalization.get(k) for k in ("mean", "std", "mean_255", "std_255", "image_count")}
            ),
            "samples": dg.MetadataValue.md(_contact_sheet(out_dir, sorted(report.images)[:8])),
            "path": dg.MetadataValue.path(str(out_dir / "images")),
            "metadata_csv": dg.MetadataValue.path(str(out_dir / layout.METADATA_CSV)),
            "normalization_json": dg.MetadataValue.path(str(out_dir / layout.NORMALIZATION_JSON)),
        },
        data_version=dg.DataVersion(digest.hexdigest()[:32]),
    )


def _write_tables(metadata: pd.DataFrame, report: TransformReport, settings: TransformSettings,
                  out_dir: Path) -> pd.DataFrame:
    """metadata.csv: the merged columns of every transformed image, plus the transform and output size."""
    done = metadata[metadata["isic_id"].isin(report.images)].copy()
    done = done.rename(columns={"image": "merged_image", "width": "source_width", "height": "source_height",
                                "sha256": "source_sha256", "file_bytes": "source_file_bytes"})
    outputs = [report.images[i] for i in done["isic_id"]]
    done["image"] = [o.path for o in outputs]
    done["width"] = [o.width for o in outputs]
    done["height"] = [o.height for o in outputs]
    done["sha256"] = [o.sha256 for o in outputs]
    done["transform"] = _describe(settings)
    done["transform_fingerprint"] = report.fingerprint
    with atomic_open(out_dir / layout.METADATA_CSV, "w") as handle:
        done.to_csv(handle, index=False, lineterminator="\n")
    quarantine = pd.DataFrame([q.__dict__ for q in report.quarantine], columns=["isic_id", "src", "reason"])
    with atomic_open(out_dir / layout.QUARANTINE_CSV, "w") as handle:
        quarantine.to_csv(handle, index=False, lineterminator="\n")
    return done


def _describe(settings: TransformSettings) -> str:
    steps = [f"{settings.mode} {settings.size}x{settings.size}"]
    if settings.color_constancy:
        steps.append("shades-of-gray")
    if settings.hair_removal:
        steps.append("hair-removal")
    steps.append(f"jpeg q{settings.jpeg_quality}")
    return "; ".join(steps)


def _contact_sheet(out_dir: Path, ids: list[str], tile: int = 96) -> str:
    """A small strip of transformed images for the asset page (kept tiny: it lives in the event log)."""
    if not ids:
        return "no images"
    tiles = []
    for isic_id in ids:
        with Image.open(out_dir / "images" / f"{isic_id}.jpg") as img:
            tiles.append(np.asarray(img.convert("RGB").resize((tile, tile))))
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=80)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![samples](data:image/jpeg;base64,{encoded})\n\n{', '.join(ids)}"


