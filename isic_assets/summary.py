"""Print where each stage's outputs are and the headline counts (the end of ``make demo``).

Reads only the files the assets wrote, so it works after any way of running the graph.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .core import layout
from .core.merge.quality import class_counts


def _data_root() -> Path:
    return layout.data_root()


def _csv_rows(path: Path) -> int | None:
    return len(layout.read_table(path)) if path.is_file() else None


def summarize(root: Path) -> list[str]:
    """Human-readable lines describing the outputs under ``root``."""
    lines = [f"ISIC data root: {root}"]
    manifest = root / layout.DOWNLOADS / layout.DOWNLOAD_MANIFEST
    if manifest.is_file():
        files = json.loads(manifest.read_text())
        total = sum(f.get("size", 0) for f in files.values() if isinstance(f, dict))
        lines.append(f"  {layout.DOWNLOADS + '/':22} {len(files)} files, {total / 1e6:.1f} MB")
    metadata = root / layout.MERGED / layout.METADATA_CSV
    if metadata.is_file():
        frame = layout.read_table(metadata)
        counts = ", ".join(f"{k} {v}" for k, v in class_counts(frame).items())
        dups = _csv_rows(root / layout.MERGED / layout.DUPLICATES_CSV)
        quarantined = _csv_rows(root / layout.MERGED / layout.QUARANTINE_CSV)
        lines.append(f"  {layout.MERGED + '/':22} {len(frame)} images ({counts}); "
                     f"{dups} duplicate copies dropped, {quarantined} quarantined (see quarantine.csv)")
    transformed = root / layout.TRANSFORMED / layout.METADATA_CSV
    if transformed.is_file():
        frame = layout.read_table(transformed)
        how = frame["transform"].iloc[0] if len(frame) else ""
        lines.append(f"  {layout.TRANSFORMED + '/':22} {len(frame)} images ({how}); normalization.json")
    report = root / layout.EDA / layout.REPORT_HTML
    if report.is_file():
        figures = len(list((root / layout.EDA).glob("*.png")))
        lines.append(f"  {layout.EDA + '/':22} {figures} figures; open {report}")
    splits = root / layout.SPLITS_DIR / layout.MANIFEST_CSV
    if splits.is_file():
        frame = layout.read_table(splits)
        table = frame.groupby(["split", "label"]).size()
        labels = sorted(set(frame["label"]))
        parts = [f"{split} " + "/".join(f"{table[split].get(label, 0)} {label}" for label in labels)
                 for split in ("train", "validation", "test") if split in table.index.get_level_values(0)]
        lines.append(f"  {layout.SPLITS_DIR + '/':22} {'; '.join(parts)}; DATASET_CARD.md")
    return lines


def main() -> int:
    root = _data_root()
    if not root.is_dir():
        print(f"no outputs yet under {root}; run `make demo`", file=sys.stderr)
        return 1
    print("\n".join(summarize(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
